package plugin

import (
	"encoding/json"
	"maps"
	"reflect"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// requireEncodes checks that e encodes st as json.Marshal does (the same
// JSON value) once each network's "config_file" is replaced by the content
// of the configuration file it names, that ConfigFiles holds exactly the
// files named, and that decodeState reads it back to st.
func requireEncodes(t *testing.T, e *StateEncoder, st *State, step string) {
	t.Helper()
	got, err := e.Encode(st)
	require.NoError(t, err, step)
	files := e.ConfigFiles()
	want, err := json.Marshal(st)
	require.NoError(t, err, step)
	var g, w map[string]any
	require.NoError(t, json.Unmarshal(got, &g), step)
	require.NoError(t, json.Unmarshal(want, &w), step)
	named := map[string]bool{}
	if nets, ok := g["networks"].(map[string]any); ok {
		for id, n := range nets {
			if n == nil {
				continue
			}
			net := n.(map[string]any)
			require.NotContains(t, net, "config", "%s: network %s carries its configuration inline", step, id)
			require.NotContains(t, net, "options", "%s: network %s carries its options inline", step, id)
			name, _ := net["config_file"].(string)
			raw, ok := files[name]
			require.True(t, ok, "%s: network %s names %q, not among the configuration files", step, id, name)
			require.Equal(t, configFileName(raw), name, step)
			named[name] = true
			var file map[string]any
			require.NoError(t, json.Unmarshal(raw, &file), step)
			require.Len(t, file, 2, step)
			delete(net, "config_file")
			net["options"], net["config"] = file["options"], file["config"]
		}
	}
	require.Len(t, files, len(named), "%s: configuration files no network names", step)
	g["version"], w["version"] = nil, nil // decodeState brings a state to the current layout
	require.Equal(t, w, g, step)
	back, err := decodeState(got, func(name string) ([]byte, error) { return files[name], nil })
	require.NoError(t, err, step)
	back.Version = st.Version
	if st.Networks == nil { // decodeState makes empty maps of missing ones
		back.Networks = nil
	}
	if st.Endpoints == nil {
		back.Endpoints = nil
	}
	again, err := json.Marshal(back)
	require.NoError(t, err, step)
	require.Equal(t, string(want), string(again), step)
}

// TestStateEncoderMatchesMarshal: the encoder's state.json is the state's
// JSON through every kind of change, and a network's configuration is
// encoded again exactly when it was replaced (a network's Options and
// Config are immutable: replaced whole, never written in place), even by
// an equal one or by one sharing all but one field with it.
func TestStateEncoderMatchesMarshal(t *testing.T) {
	e := NewStateEncoder()
	st := fullState(t)
	step := func(name string, configs int) {
		t.Helper()
		before := e.encodes
		requireEncodes(t, e, st, name)
		require.Equal(t, configs, e.encodes-before, "%s: configurations encoded", name)
	}
	step("first", 2)
	step("unchanged", 0)
	// The encoder keeps the network's own configuration, not a copy.
	n0 := st.Networks["n0"]
	require.Equal(t, unsafe.SliceData(n0.Config.Rules), unsafe.SliceData(e.configs["n0"].config.Rules))
	require.Equal(t, reflect.ValueOf(n0.Options).UnsafePointer(), reflect.ValueOf(e.configs["n0"].options).UnsafePointer())

	st = st.clone()
	st.Networks["n0"].Runtime = append(st.Networks["n0"].Runtime, fullRule(9))
	st.Endpoints["e0"].LabelRules = nil
	st.Generation++
	step("runtime rules and labels changed, the configurations shared", 0)

	// Each configuration below is a new one: a copy changed, then stored
	// (what a change of a stored configuration must be).
	replace := func(id string, change func(c *policy.NetworkConfig)) {
		c := st.Networks[id].Config.Clone()
		change(&c)
		st.Networks[id].Config = c
	}
	st = st.clone()
	replace("n0", func(c *policy.NetworkConfig) { c.Rules[1].Dst = "changed.example.com" })
	step("a network rule changed", 1)
	replace("n0", func(c *policy.NetworkConfig) { c.Rules[0].Paths[0].Methods[0] = "DELETE" })
	step("a method changed", 1)
	replace("n0", func(c *policy.NetworkConfig) { c.Rules[0].Source.Item = "other" })
	step("a provenance changed", 1)
	replace("n0", func(*policy.NetworkConfig) {})
	step("an equal copy", 1)
	// Replacements that keep some of the old configuration's slices.
	c := st.Networks["n1"].Config
	c.Settings.ICC = false
	st.Networks["n1"].Config = c
	step("a setting changed, the rules shared", 1)
	c.Rules = c.Rules[:1]
	st.Networks["n1"].Config = c
	step("the rules cut, their array shared", 1)
	c.Settings.DNSUpstreams = []string{"192.0.2.54"}
	st.Networks["n1"].Config = c
	step("the resolvers replaced, the rest shared", 1)
	st.Networks["n1"].Config = policy.NetworkConfig{Rules: []policy.EgressRule{}, Settings: c.Settings}
	step("no rules (empty)", 1)
	st.Networks["n1"].Config = policy.NetworkConfig{Settings: c.Settings}
	step("no rules (nil)", 1)
	st.Networks["n1"].Options = maps.Clone(st.Networks["n1"].Options)
	step("equal options, a new map", 1)
	st.Networks["n1"].Options = nil
	step("no options", 1) // the options are in the configuration file too
	st.Networks["n1"].Options = map[string]string{}
	step("no options (empty)", 1)

	st = st.clone()
	delete(st.Networks, "n0")
	step("a network deleted", 0)
	require.Len(t, e.configs, 1)
	st.Networks["n<&>\"é"] = &Network{ID: "n<&>\"é", Config: fullState(t).Networks["n0"].Config}
	step("a network added, its id escaped", 1)
	st.Networks["nil"] = nil
	step("a nil network", 0)
	st.Networks = nil
	step("no networks (nil)", 0)
	st.Networks = map[string]*Network{}
	step("no networks (empty)", 0)
	require.Empty(t, e.configs)
	requireEncodes(t, e, &State{Version: stateVersion}, "zero state") // no maps; a version, as every state has
}
