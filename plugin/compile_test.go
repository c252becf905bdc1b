package plugin

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestCompilerRebasesLayers: a runtime rule that no endpoint's labels
// touch recompiles the network's base but carries every label layer over
// to it (policy.Layered.Rebase), each equal to the layer compiled on the
// new base; a rule under one endpoint's label wildcard compiles that
// endpoint's layer again, and only it.
func TestCompilerRebasesLayers(t *testing.T) {
	st := labelledState(t, map[string]string{"clawker.allow": "a.example.com,.example.com", "clawker.deny": "bad.example.com"}, 3,
		func(i int) map[string]string {
			return map[string]string{"clawker.allow": fmt.Sprintf("only%d.test,.team%d.test,https://.example.com:8443", i, i)}
		})
	c := NewCompiler()
	prev := st.SnapshotWith(c, 1)
	check := func(snap *policy.Snapshot, gen uint64, rebased ...uint32) {
		t.Helper()
		base := snap.Networks["n1"].Base
		idx := policy.NewBaseIndex(base)
		for i := uint32(1); i <= 3; i++ {
			pol := snap.Endpoints[i].Policy
			require.Same(t, base, pol.Base)
			want, err := policy.Layer(idx, st.Endpoints[fmt.Sprintf("c%d", i)].LabelRules, gen, st.Identities)
			require.NoError(t, err)
			require.Equal(t, want, pol, "endpoint %d", i)
			same := &prev.Endpoints[i].Policy.Allows[0] == &pol.Allows[0]
			require.Equal(t, slices.Contains(rebased, i), same, "endpoint %d carried over", i)
		}
		prev = snap
	}
	add := func(rule string) *policy.Snapshot {
		r, err := policy.ParseRuntimeRule(rule, "n1")
		require.NoError(t, err)
		st.Networks["n1"].Runtime = append(st.Networks["n1"].Runtime[:len(st.Networks["n1"].Runtime):len(st.Networks["n1"].Runtime)], r)
		return st.SnapshotWith(c, 2)
	}
	check(add("rt.other.test"), 2, 1, 2, 3)
	require.True(t, prev.Endpoints[1].Policy.MatchName("rt.other.test", 443, policy.L4TCP).Allowed)
	check(add("x.team2.test"), 2, 1, 3)
	check(add("y.example.com"), 2) // under every endpoint's label wildcard .example.com:8443
	require.True(t, prev.Endpoints[3].Policy.MatchName("y.example.com", 8443, policy.L4TCP).Allowed)
}
