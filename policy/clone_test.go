package policy

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

// fullConfig has every field of NetworkConfig and of the rules it holds
// set (requireNoZero checks it, so a field added later must be set here).
func fullConfig() NetworkConfig {
	rule := func(dst string) EgressRule {
		return EgressRule{Dst: dst, Proto: ProtoHTTPS, Port: 443, PortEnd: 444, Action: Allow,
			Paths:       []PathRule{{Path: "/v1/", Methods: []string{"GET", "POST"}, Action: Allow}, {Path: "/x", Methods: []string{"PUT"}, Action: Deny}},
			PathDefault: Deny, Inspect: true,
			Source: Provenance{Kind: SourceLabel, Key: KeyRules, Item: "item", Network: "n", Container: "c"}}
	}
	return NetworkConfig{Rules: []EgressRule{rule("a.example.com"), rule("b.example.com")},
		Settings: NetworkSettings{DNSUpstreams: []string{"192.0.2.1", "192.0.2.2"}, InspectAll: true, ICC: true}}
}

func requireNoZero(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	require.False(t, v.IsZero(), "%s is zero: set it in fullConfig", path)
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			requireNoZero(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Slice:
		for i := range v.Len() {
			requireNoZero(t, path+"[]", v.Index(i))
		}
	}
}

// mutateLeaf changes the k-th leaf (string, number, bool) reachable from v
// or, past the leaves, appends to the k-th slice; it returns how many
// leaves and slices it counted (k < 0: count only).
func mutateLeaf(v reflect.Value, k int, seen *int) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			mutateLeaf(v.Field(i), k, seen)
		}
		return
	case reflect.Slice:
		for i := range v.Len() {
			mutateLeaf(v.Index(i), k, seen)
		}
		if *seen == k {
			v.Set(reflect.Append(v, v.Index(0)))
		}
	case reflect.String:
		if *seen == k {
			v.SetString(v.String() + "!")
		}
	case reflect.Bool:
		if *seen == k {
			v.SetBool(!v.Bool())
		}
	case reflect.Uint16, reflect.Uint8, reflect.Uint32:
		if *seen == k {
			v.SetUint(v.Uint() + 1)
		}
	default:
		panic("mutateLeaf: add kind " + v.Kind().String())
	}
	*seen++
}

// TestRuleEqualFields: Equal holds for a clone and fails for a clone with
// any one field (of the config, its settings, its rules, their path rules
// and provenance) changed, or any one list grown.
func TestRuleEqualFields(t *testing.T) {
	cfg := fullConfig()
	requireNoZero(t, "NetworkConfig", reflect.ValueOf(cfg))
	require.True(t, cfg.Equal(cfg.Clone()))
	require.True(t, reflect.DeepEqual(cfg, cfg.Clone()))
	n := 0
	mutateLeaf(reflect.ValueOf(&cfg).Elem(), -1, &n)
	require.Greater(t, n, 30)
	for k := range n {
		c := cfg.Clone()
		seen := 0
		mutateLeaf(reflect.ValueOf(&c).Elem(), k, &seen)
		require.False(t, reflect.DeepEqual(cfg, c), "change %d changed nothing", k)
		require.False(t, cfg.Equal(c), "change %d: %+v", k, c)
		require.False(t, c.Equal(cfg), "change %d: %+v", k, c)
		require.True(t, cfg.Equal(fullConfig()), "change %d reached the original", k)
	}
}

// TestRuleCloneShares: a cloned rule shares no path rule or method list
// with its original.
func TestRuleCloneShares(t *testing.T) {
	cfg := fullConfig()
	c := cfg.Clone()
	c.Rules[0].Paths[0].Methods[0] = "DELETE"
	c.Rules[0].Paths[1].Path = "/y"
	c.Settings.DNSUpstreams[0] = "192.0.2.9"
	c.Rules[1].Dst = "c.example.com"
	require.True(t, cfg.Equal(fullConfig()))
	r := cfg.Rules[0].Clone()
	r.Paths[0].Methods[1] = "PATCH"
	require.True(t, cfg.Equal(fullConfig()))
	require.Nil(t, CloneRules(nil))
	require.NotNil(t, CloneRules([]EgressRule{}))
}

func TestIdentityTableClone(t *testing.T) {
	a := NewIdentityTable()
	x := a.Identity("x.example.com")
	b := a.Clone()
	require.Equal(t, a.Identity("y.example.com"), b.Identity("z.example.com"), "both allocate the next number on their own")
	_, ok := a.Lookup("z.example.com")
	require.False(t, ok)
	_, ok = b.Lookup("y.example.com")
	require.False(t, ok)
	got, _ := b.Lookup("x.example.com")
	require.Equal(t, x, got)
	require.Nil(t, (*IdentityTable)(nil).Clone())
}

// TestIdentityTableEncodingKept: the JSON form MarshalJSON keeps between
// calls is always the table's current one: after an allocation (appended
// to the kept form), after a replacement by UnmarshalJSON, in a clone
// that allocates on its own, and whatever a caller does with the bytes it
// got. The kept form is byte for byte the one a table encoding from
// scratch makes (identities in the order of their numbers).
func TestIdentityTableEncodingKept(t *testing.T) {
	marshal := func(tab *IdentityTable) string {
		raw, err := json.Marshal(tab)
		require.NoError(t, err)
		return string(raw)
	}
	// check: the same content as encoding/json's form of the table, and
	// the same bytes as a table decoded from it encodes from scratch.
	check := func(tab *IdentityTable) string {
		t.Helper()
		got := marshal(tab)
		tab.mu.Lock()
		ref, err := json.Marshal(identityJSON{Next: max(tab.next, 1), Identities: tab.ids})
		tab.mu.Unlock()
		require.NoError(t, err)
		require.JSONEq(t, string(ref), got)
		var again IdentityTable
		require.NoError(t, json.Unmarshal([]byte(got), &again))
		require.Equal(t, got, marshal(&again), "kept form = encoded from scratch")
		return got
	}
	a := NewIdentityTable()
	a.Identity("x.example.com")
	first := check(a)
	raw, err := a.MarshalJSON()
	require.NoError(t, err)
	for i := range raw {
		raw[i] = 'X' // the caller's copy, not the kept one
	}
	require.Equal(t, first, marshal(a))

	a.Identity("x.example.com") // known: no change
	require.Equal(t, first, marshal(a))
	for _, p := range []string{"y.example.com", "a.example.com", `q"<&>\.example.com`, "m.example.com"} {
		a.Identity(p) // appended: numbers grow while names do not sort
		check(a)
	}
	require.NotEqual(t, first, marshal(a))
	require.Equal(t, `{"next":6,"identities":{"x.example.com":1,"y.example.com":2,"a.example.com":3,`+
		`"q\"\u003c\u0026\u003e\\.example.com":4,"m.example.com":5}}`, marshal(a))

	b := a.Clone()
	before := marshal(a)
	b.Identity("z.example.com")
	check(b)
	require.Equal(t, before, marshal(a), "a clone's allocation leaves the original's encoding")

	require.NoError(t, json.Unmarshal([]byte(`{"next":9,"identities":{"w.example.com":8,"v.example.com":2}}`), a))
	require.Equal(t, `{"next":9,"identities":{"v.example.com":2,"w.example.com":8}}`, check(a))
	a.Identity("u.example.com")
	require.Equal(t, `{"next":10,"identities":{"v.example.com":2,"w.example.com":8,"u.example.com":9}}`, check(a))
	require.NotContains(t, marshal(a), "y.example.com")
}
