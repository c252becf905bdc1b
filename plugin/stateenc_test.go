package plugin

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// requireEncodes checks that e encodes st as json.Marshal does (the same
// JSON value) and that loadState's decode reads it back to st.
func requireEncodes(t *testing.T, e *StateEncoder, st *State, step string) {
	t.Helper()
	got, err := e.Encode(st)
	require.NoError(t, err, step)
	want, err := json.Marshal(st)
	require.NoError(t, err, step)
	var g, w any
	require.NoError(t, json.Unmarshal(got, &g), step)
	require.NoError(t, json.Unmarshal(want, &w), step)
	require.Equal(t, w, g, step)
	back := NewState()
	require.NoError(t, json.Unmarshal(got, back), step)
	again, err := json.Marshal(back)
	require.NoError(t, err, step)
	require.Equal(t, string(want), string(again), step)
}

// TestStateEncoderMatchesMarshal: the encoder's state.json is the state's
// JSON through every kind of change, and a network's configuration is
// encoded again exactly when it changed, in place included.
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

	st = st.clone()
	st.Networks["n0"].Runtime = append(st.Networks["n0"].Runtime, fullRule(9))
	st.Endpoints["e0"].LabelRules = nil
	st.Generation++
	step("runtime rules and labels changed", 0)

	st = st.clone()
	st.Networks["n0"].Config.Rules[1].Dst = "changed.example.com"
	step("a network rule changed", 1)

	// In place, no clone: n0's configuration as this very state holds it
	// was encoded just now.
	st.Networks["n0"].Config.Rules[0].Paths[0].Methods[0] = "DELETE"
	step("a method changed in place", 1)
	st.Networks["n0"].Config.Rules[0].Source.Item = "other"
	step("a provenance changed in place", 1)
	st.Networks["n1"].Config.Settings.ICC = false
	step("a setting changed in place", 1)
	st.Networks["n1"].Config.Rules = []policy.EgressRule{}
	step("no rules (empty)", 1)
	st.Networks["n1"].Config.Rules = nil
	step("no rules (nil)", 1)
	st.Networks["n1"].Options = nil
	step("no options", 0)

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
	requireEncodes(t, e, &State{}, "zero state")
}
