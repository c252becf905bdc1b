package plugin

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestSnapshotLayersLabelledEndpoints: every endpoint of a network shares
// its base; one with label rules gets a layered policy on that base (its
// labels compiled alone over it) that decides as its merged compile does,
// and another endpoint's labels never reach it.
func TestSnapshotLayersLabelledEndpoints(t *testing.T) {
	opts := map[string]string{"clawker.allow": "a.example.com,.example.com,tcp://db.example.com:5432", "clawker.deny": "bad.example.com"}
	cfg, err := policy.ParseNetworkOptions(opts, "n1")
	require.NoError(t, err)
	st := NewState()
	st.Networks["n1"] = &Network{ID: "n1", Options: opts, Config: cfg, Bridge: "clawker-t",
		Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1")}
	labels := []map[string]string{
		nil,
		{"clawker.allow": "https://.example.com:8443,only1.test", "clawker.deny": "a.example.com"},
		{"clawker.allow": "only2.test"},
	}
	for i, l := range labels {
		cid := fmt.Sprintf("c%d", i)
		rules, err := policy.ParseLabels(l, cid)
		require.NoError(t, err)
		st.Endpoints[cid] = &Endpoint{ID: cid, NetworkID: "n1", Index: uint32(i + 1), IP: netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 2)}),
			Joined: true, ContainerID: cid, LabelRules: rules}
	}
	snap := st.Snapshot(1)
	base := snap.Networks["n1"].Base
	require.NotNil(t, base)
	require.Same(t, base, snap.Endpoints[1].Policy)
	for i := 2; i <= 3; i++ {
		ep := snap.Endpoints[uint32(i)]
		require.Same(t, base, ep.Policy.Base)
		require.NotNil(t, ep.Labels)
		merged, err := policy.Compile(policy.CompileInput{Network: cfg.Rules, Label: st.Endpoints[ep.ID].LabelRules}, st.Identities)
		require.NoError(t, err)
		for _, name := range []string{"a.example.com", "x.example.com", "db.example.com", "bad.example.com", "only1.test", "only2.test"} {
			for _, port := range []uint16{0, 443, 5432, 8443} {
				want, got := merged.MatchName(name, port, policy.L4TCP), ep.Policy.MatchName(name, port, policy.L4TCP)
				require.Equal(t, want.Allowed, got.Allowed, "endpoint %d %s:%d", i, name, port)
				require.Equal(t, want.Entry, got.Entry, "endpoint %d %s:%d", i, name, port)
			}
		}
	}
	require.True(t, snap.Endpoints[2].Policy.MatchName("only1.test", 443, policy.L4TCP).Allowed)
	require.False(t, snap.Endpoints[3].Policy.MatchName("only1.test", 443, policy.L4TCP).Allowed)
	require.False(t, snap.Endpoints[2].Policy.MatchName("a.example.com", 443, policy.L4TCP).Allowed, "a label deny cancels a network allow")
	require.True(t, snap.Endpoints[3].Policy.MatchName("a.example.com", 443, policy.L4TCP).Allowed)
	require.True(t, snap.Endpoints[2].Policy.MatchName("x.example.com", 8443, policy.L4TCP).Allowed, "a label wildcard's port reaches the network's names under it")
	require.False(t, snap.Endpoints[3].Policy.MatchName("x.example.com", 8443, policy.L4TCP).Allowed)
}

// TestCompilerCompilesWhatChanged: with a Compiler, a commit reuses the
// network base and every label layer whose inputs did not change; an
// endpoint's new labels recompile its layer alone, new network rules the
// base (and so every layer on it), and a cached policy whose identities
// the state does not hold is compiled again.
func TestCompilerCompilesWhatChanged(t *testing.T) {
	st := labelledState(t, map[string]string{"clawker.allow": "a.example.com,.example.com"}, 3, func(i int) map[string]string {
		return map[string]string{"clawker.allow": fmt.Sprintf("only%d.test", i)}
	})
	c := NewCompiler()
	s1 := st.SnapshotWith(c, 1)
	next := st.clone()
	s2 := next.SnapshotWith(c, 2)
	require.Same(t, s1.Networks["n1"].Base, s2.Networks["n1"].Base, "unchanged rules: the base is reused")
	for i := uint32(1); i <= 3; i++ {
		require.Same(t, s1.Endpoints[i].Policy, s2.Endpoints[i].Policy, "unchanged labels: the layer is reused")
	}

	rules, err := policy.ParseLabels(map[string]string{"clawker.allow": "other.test"}, "c2")
	require.NoError(t, err)
	next = next.clone()
	next.Endpoints["c2"].LabelRules = rules
	s3 := next.SnapshotWith(c, 3)
	require.Same(t, s2.Networks["n1"].Base, s3.Networks["n1"].Base)
	require.Same(t, s2.Endpoints[1].Policy, s3.Endpoints[1].Policy)
	require.NotSame(t, s2.Endpoints[2].Policy, s3.Endpoints[2].Policy, "changed labels are compiled again")
	require.True(t, s3.Endpoints[2].Policy.MatchName("other.test", 443, policy.L4TCP).Allowed)
	require.False(t, s3.Endpoints[2].Policy.MatchName("only2.test", 443, policy.L4TCP).Allowed)

	next = next.clone()
	more, err := policy.ParseNetworkOptions(map[string]string{"clawker.allow": "a.example.com,.example.com,new.test"}, "n1")
	require.NoError(t, err)
	next.Networks["n1"].Config = more
	s4 := next.SnapshotWith(c, 4)
	require.NotSame(t, s3.Networks["n1"].Base, s4.Networks["n1"].Base, "changed network rules: the base is compiled again")
	require.Same(t, s4.Networks["n1"].Base, s4.Endpoints[1].Policy.Base, "and every layer on it")
	require.True(t, s4.Endpoints[1].Policy.MatchName("new.test", 443, policy.L4TCP).Allowed)

	// A state whose identity table lacks the cached identities (a commit
	// whose write failed allocated them) compiles again.
	lost := next.clone()
	lost.Identities = policy.NewIdentityTable()
	s5 := lost.SnapshotWith(c, 5)
	require.NotSame(t, s4.Networks["n1"].Base, s5.Networks["n1"].Base)
	id, ok := lost.Identities.Lookup("new.test")
	require.True(t, ok)
	require.Equal(t, id, s5.Networks["n1"].Base.MatchName("new.test", 0, policy.L4TCP).Entry.Identity)
}

// labelledState is a state with network n1 of options opts and n
// identified endpoints c1...cn (index i) on it, endpoint i with labels(i).
func labelledState(t *testing.T, opts map[string]string, n int, labels func(i int) map[string]string) *State {
	t.Helper()
	cfg, err := policy.ParseNetworkOptions(opts, "n1")
	require.NoError(t, err)
	st := NewState()
	st.Networks["n1"] = &Network{ID: "n1", Options: opts, Config: cfg, Bridge: "clawker-t",
		Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1")}
	for i := 1; i <= n; i++ {
		cid := fmt.Sprintf("c%d", i)
		rules, err := policy.ParseLabels(labels(i), cid)
		require.NoError(t, err)
		st.Endpoints[cid] = &Endpoint{ID: cid, NetworkID: "n1", Index: uint32(i), IP: netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)}),
			Joined: true, ContainerID: cid, LabelRules: rules}
	}
	return st
}
