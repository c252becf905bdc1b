package plugin

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// fullRule is a rule with every field set.
func fullRule(i int) policy.EgressRule {
	return policy.EgressRule{
		Dst: fmt.Sprintf("r%d.example.com", i), Proto: policy.ProtoHTTPS, Port: 443, PortEnd: 444, Action: policy.Allow,
		Paths:       []policy.PathRule{{Path: "/v1/", Methods: []string{"GET", "POST"}, Action: policy.Allow}, {Path: "~^/x", Methods: []string{"PUT"}, Action: policy.Deny}},
		PathDefault: policy.Deny, Inspect: true,
		Source: policy.Provenance{Kind: policy.SourceRuntime, Key: "runtime", Item: "item", Network: "n1", Container: "c1"},
	}
}

// fullState is a state with every field of every type it holds set (checked
// by requireFilled, so a field added later must be filled here, and then
// TestStateCloneShares checks that clone copies it).
func fullState(t *testing.T) *State {
	st := NewState()
	st.Generation, st.NextIndex = 7, 9
	for i := range 2 {
		id := fmt.Sprintf("n%d", i)
		st.Networks[id] = &Network{
			ID: id, Options: map[string]string{"clawker.allow": "a.example.com"},
			Config: policy.NetworkConfig{Rules: []policy.EgressRule{fullRule(1), fullRule(2)},
				Settings: policy.NetworkSettings{DNSUpstreams: []string{"192.0.2.53"}, InspectAll: true, ICC: true}},
			Bridge: "cfw-" + id, Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1"),
			Runtime: []policy.EgressRule{fullRule(3)}, Created: time.Now(), Scope: ScopeGlobal,
		}
		epID := fmt.Sprintf("e%d", i)
		st.Endpoints[epID] = &Endpoint{
			ID: epID, NetworkID: id, Index: uint32(i + 1), IP: netip.MustParseAddr("10.9.0.2"), MAC: "02:42:0a:09:00:02",
			HostVeth: "cfwh" + epID, PeerVeth: "cfwc" + epID, Joined: true, SandboxKey: "/var/run/docker/netns/abc",
			NetnsCookie: 42, ContainerID: "c" + epID, ContainerName: "name" + epID, Aliases: []string{"alias"},
			Labels: map[string]string{"clawker.allow": "b.example.com"}, LabelRules: []policy.EgressRule{fullRule(4)},
			LabelError: "bad label", BypassUntil: time.Now().Add(time.Hour), Learn: true,
			IgnoredLabels: []IgnoredLabel{{Key: "clawker.allow", Value: "c.example.com", Why: "image"}},
		}
	}
	st.Identities.Identity("a.example.com")
	_, err := st.Identities.MarshalJSON() // the table keeps its encoding
	require.NoError(t, err)
	_, err = st.Ports.Port("tcp/5432")
	require.NoError(t, err)
	st.Extra = map[string]json.RawMessage{"given": json.RawMessage(`{"x":1}`)}
	return st
}

var (
	// sharedFields are the fields clones share, by the type holding them:
	// immutable (see Network), replaced whole, never written in place.
	sharedFields = map[reflect.Type]map[string]bool{reflect.TypeFor[Network](): {"Options": true, "Config": true}}
	mutexType    = reflect.TypeFor[sync.Mutex]()
	// valueTypes hold pointers to memory that is never written (a time's
	// location, an address's zone): copies may share it.
	valueTypes = map[reflect.Type]bool{
		reflect.TypeFor[time.Time](): true, reflect.TypeFor[netip.Addr](): true, reflect.TypeFor[netip.Prefix](): true,
	}
)

// requireFilled fails when any field reachable from v is zero, any map or
// slice empty, any pointer nil.
func requireFilled(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	if v.Type() == mutexType {
		return
	}
	require.False(t, v.IsZero(), "%s is zero: fill it in fullState", path)
	if valueTypes[v.Type()] {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		requireFilled(t, path, v.Elem())
	case reflect.Struct:
		for i := range v.NumField() {
			requireFilled(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Slice:
		require.NotZero(t, v.Len(), "%s is empty", path)
		for i := range v.Len() {
			requireFilled(t, fmt.Sprintf("%s[%d]", path, i), v.Index(i))
		}
	case reflect.Map:
		require.NotZero(t, v.Len(), "%s is empty", path)
		for it := v.MapRange(); it.Next(); {
			requireFilled(t, fmt.Sprintf("%s[%v]", path, it.Key()), it.Value())
		}
	}
}

// region is a piece of mutable memory: [lo, hi). shared: it is in one of
// the sharedFields.
type region struct {
	lo, hi uintptr
	path   string
	shared bool
}

// mutable lists the mutable memory reachable from v (slice arrays, maps,
// pointees), unexported fields included; shared marks v as in one of the
// sharedFields.
func mutable(path string, v reflect.Value, shared bool, out *[]region) {
	if v.Type() == mutexType || valueTypes[v.Type()] {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return
		}
		p := uintptr(v.UnsafePointer())
		*out = append(*out, region{p, p + max(v.Type().Elem().Size(), 1), path, shared})
		mutable(path+"*", v.Elem(), shared, out)
	case reflect.Struct:
		for i := range v.NumField() {
			name := v.Type().Field(i).Name
			mutable(path+"."+name, v.Field(i), shared || sharedFields[v.Type()][name], out)
		}
	case reflect.Slice:
		if v.Cap() > 0 {
			p := uintptr(v.UnsafePointer())
			*out = append(*out, region{p, p + uintptr(v.Cap())*max(v.Type().Elem().Size(), 1), path, shared})
		}
		for i := range v.Len() {
			mutable(fmt.Sprintf("%s[%d]", path, i), v.Index(i), shared, out)
		}
	case reflect.Map:
		if v.IsNil() {
			return
		}
		p := uintptr(v.UnsafePointer())
		*out = append(*out, region{p, p + 1, path, shared})
		for it := v.MapRange(); it.Next(); {
			mutable(fmt.Sprintf("%s[%v]", path, it.Key()), it.Value(), shared, out)
		}
	case reflect.Interface:
		if !v.IsNil() {
			mutable(path, v.Elem(), shared, out)
		}
	}
}

// replaceWhole sets f, one of the sharedFields, to a changed copy of its
// value that shares nothing with it (a JSON round trip), as a change of
// such a field must be made: the old value is never written.
func replaceWhole(f reflect.Value) {
	raw, err := json.Marshal(f.Interface())
	if err != nil {
		panic(fmt.Sprintf("replace %s: %v", f.Type(), err))
	}
	c := reflect.New(f.Type())
	if err := json.Unmarshal(raw, c.Interface()); err != nil {
		panic(fmt.Sprintf("replace %s: %v", f.Type(), err))
	}
	mutateAll(c.Elem())
	f.Set(c.Elem())
}

// mutateAll changes every exported leaf reachable from v in place (map
// entries replaced, one entry added to each map), except in the
// sharedFields, which it replaces whole with changed copies.
func mutateAll(v reflect.Value) {
	if v.Type() == mutexType {
		return
	}
	if valueTypes[v.Type()] {
		if v.CanSet() {
			switch x := v.Interface().(type) {
			case time.Time:
				v.Set(reflect.ValueOf(x.Add(time.Minute)))
			case netip.Addr:
				v.Set(reflect.ValueOf(x.Next()))
			case netip.Prefix:
				v.Set(reflect.ValueOf(netip.PrefixFrom(x.Addr().Next(), x.Bits())))
			}
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			mutateAll(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			switch f := v.Type().Field(i); {
			case sharedFields[v.Type()][f.Name]:
				replaceWhole(v.Field(i))
			case f.IsExported():
				mutateAll(v.Field(i))
			}
		}
	case reflect.Slice:
		if raw, ok := v.Interface().(json.RawMessage); ok && len(raw) >= 2 {
			// In place, still valid JSON: a string as long as it was.
			raw[0], raw[len(raw)-1] = '"', '"'
			for i := 1; i < len(raw)-1; i++ {
				raw[i] = 'm'
			}
			return
		}
		for i := range v.Len() {
			mutateAll(v.Index(i))
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := v.MapIndex(k)
			switch e.Kind() {
			case reflect.Pointer, reflect.Slice:
				mutateAll(e) // the entry's pointee or array, in place
			default:
				c := reflect.New(e.Type()).Elem()
				c.Set(e)
				mutateAll(c)
				v.SetMapIndex(k, c)
			}
		}
		if v.Type().Key().Kind() == reflect.String {
			v.SetMapIndex(reflect.ValueOf("added").Convert(v.Type().Key()), reflect.New(v.Type().Elem()).Elem())
		}
	case reflect.String:
		if v.CanSet() {
			v.SetString(v.String() + "!")
		}
	case reflect.Bool:
		if v.CanSet() {
			v.SetBool(!v.Bool())
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if v.CanSet() {
			v.SetInt(v.Int() + 1)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if v.CanSet() {
			v.SetUint(v.Uint() + 1)
		}
	}
}

// mutateState changes everything in st: every exported field, and the
// identity table and port allocator through their methods.
func mutateState(t *testing.T, st *State) {
	mutateAll(reflect.ValueOf(st))
	st.Identities.Identity("mutated.example.com")
	_, err := st.Ports.Port("tcp/9999")
	require.NoError(t, err)
	st.Ports.Release("tcp/5432")
}

func encodeJSON(t *testing.T, st *State) string {
	raw, err := json.Marshal(st)
	require.NoError(t, err)
	return string(raw)
}

// TestStateCloneShares: a state with every field set is cloned; the copy
// equals the original (Go values and JSON), shares no mutable memory with
// it but each network's Options and Config (immutable, see Network), which
// it does share, and changing everything in one (those two replaced whole)
// leaves the other as it was.
func TestStateCloneShares(t *testing.T) {
	st := fullState(t)
	requireFilled(t, "State", reflect.ValueOf(st))
	c := st.clone()
	require.Equal(t, encodeJSON(t, st), encodeJSON(t, c))
	require.True(t, reflect.DeepEqual(st, c), "the clone differs from the original")

	var a, b []region
	mutable("State", reflect.ValueOf(st), false, &a)
	mutable("State", reflect.ValueOf(c), false, &b)
	require.Greater(t, len(a), 30)
	sharedA, sharedB := map[string]region{}, map[string]region{}
	for _, x := range a {
		if x.shared {
			sharedA[x.path] = x
		}
		for _, y := range b {
			if x.shared && y.shared {
				continue // compared below
			}
			require.False(t, x.lo < y.hi && y.lo < x.hi, "%s of the original and %s of the clone share memory", x.path, y.path)
		}
	}
	for _, y := range b {
		if y.shared {
			sharedB[y.path] = y
		}
	}
	// Shared, all of it: each network's options map, its rules' arrays
	// (their path rules, methods) and its resolvers.
	require.Equal(t, sharedA, sharedB, "the clone does not share the networks' Options and Config")
	for _, p := range []string{"State*.Networks[n0]*.Options", "State*.Networks[n1]*.Config.Rules", "State*.Networks[n0]*.Config.Rules[1].Paths[0].Methods",
		"State*.Networks[n1]*.Config.Settings.DNSUpstreams"} {
		require.Contains(t, sharedA, p)
	}

	before := encodeJSON(t, st)
	mutateState(t, c)
	require.NotEqual(t, before, encodeJSON(t, c), "the mutation changed nothing")
	require.Equal(t, before, encodeJSON(t, st), "mutating the clone changed the original")

	c = st.clone()
	kept := encodeJSON(t, c)
	mutateState(t, st)
	require.Equal(t, kept, encodeJSON(t, c), "mutating the original changed the clone")
}

// TestStateCloneEmpty: nil and empty collections clone to what encodes the
// same.
func TestStateCloneEmpty(t *testing.T) {
	st := NewState()
	st.Networks["n"] = &Network{ID: "n", Runtime: []policy.EgressRule{}}
	st.Endpoints["e"] = &Endpoint{ID: "e", Labels: map[string]string{}}
	require.Equal(t, encodeJSON(t, st), encodeJSON(t, st.clone()))
	require.True(t, reflect.DeepEqual(st, st.clone()))
	require.Equal(t, encodeJSON(t, &State{}), encodeJSON(t, (&State{}).clone()))
}
