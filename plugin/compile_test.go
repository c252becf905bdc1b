package plugin

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
)

// TestCompilerRebasesLayers: a runtime rule that no endpoint's labels
// touch patches the network's base and carries every label layer over
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

// TestRuntimeRuleChangePatchesBase: runtime rules added and removed
// through the plugin (names, a name under a network wildcard, a wildcard
// over network names and labels, a CIDR, tcp and path rules, a repeat of
// a network rule) patch the network's base instead of compiling it, and
// what the plugin then publishes is exactly what a fresh plugin restored
// from the state on disk compiles (every network base and endpoint
// policy, identities included). A runtime deny compiles the base.
func TestRuntimeRuleChangePatchesBase(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test,.svc.example.test,a.svc.example.test,10.1.0.0/16,tcp://db.example.test:5432",
		"clawker.deny": "bad.svc.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.endpoint(t, "ep2", "10.230.0.3")
	r.container(t, "ep1", 401, Container{ID: cid(41), Name: "a", Labels: map[string]string{"clawker.allow": "only-a.test,.team.example.test"}})
	r.container(t, "ep2", 402, Container{ID: cid(42), Name: "b"})
	require.Eventually(t, func() bool {
		return !r.policyOf(t, "10.230.0.2").Pending && !r.policyOf(t, "10.230.0.3").Pending
	}, 5*time.Second, 10*time.Millisecond)

	fresh := func(step string) {
		t.Helper()
		st, err := loadState(r.p.statePath())
		require.NoError(t, err)
		got := r.p.Snapshot()
		want := st.SnapshotWith(NewCompiler(), got.Generation)
		require.Equal(t, want.Networks[netA].Base, got.Networks[netA].Base, step)
		for i, ep := range want.Endpoints {
			require.Equal(t, ep.Policy, got.Endpoints[i].Policy, "%s: endpoint %d", step, i)
			require.Equal(t, ep.Labels, got.Endpoints[i].Labels, "%s: endpoint %d", step, i)
		}
	}
	for _, step := range []struct {
		add    bool
		rule   string
		allows string // a name endpoint b may reach after the step
	}{
		{true, "rt.example.test", "rt.example.test"},
		{true, "x.svc.example.test", "x.svc.example.test"},
		{true, "https://.example.test:8443", ""},
		{true, "10.1.2.0/24", ""},
		{true, "tcp://rt.example.test:7000", ""},
		{true, `{"dst":"a.svc.example.test","paths":[{"path":"/v1/"}]}`, "a.svc.example.test"},
		{true, "net.example.test", "net.example.test"},
		{false, "https://.example.test:8443", ""},
		{false, "rt.example.test", ""},
		{true, "bad.example.test", ""},
	} {
		name := "remove " + step.rule
		if step.add {
			name = "add " + step.rule
		}
		compiles, patches := r.p.compiler.baseCompiles.Load(), r.p.compiler.basePatches.Load()
		var err error
		if step.add {
			_, err = r.p.AddRules(netA, []string{step.rule})
		} else {
			err = r.p.RemoveRules(netA, []string{step.rule})
		}
		require.NoError(t, err, name)
		require.Equal(t, int64(0), r.p.compiler.baseCompiles.Load()-compiles, "%s: not compiled", name)
		require.Equal(t, int64(1), r.p.compiler.basePatches.Load()-patches, "%s: patched once", name)
		if step.allows != "" {
			require.True(t, r.policyOf(t, "10.230.0.3").Policy.MatchName(step.allows, 443, policy.L4TCP).Allowed, name)
		}
		fresh(name)
	}

	compiles := r.p.compiler.baseCompiles.Load()
	d, err := policy.ParseRuntimeRule("x.svc.example.test", netA)
	require.NoError(t, err)
	d.Action = policy.Deny
	require.NoError(t, r.p.q.Do(r.p.ctx, queue.KindMutate, func() error {
		next := r.p.st.clone()
		next.Networks[netA].Runtime = append(slices.Clone(next.Networks[netA].Runtime), d)
		if err := r.p.commit(next); err != nil {
			return err
		}
		return r.p.publish()
	}))
	require.Equal(t, int64(1), r.p.compiler.baseCompiles.Load()-compiles, "a runtime deny compiles the base")
	require.False(t, r.policyOf(t, "10.230.0.3").Policy.MatchName("x.svc.example.test", 443, policy.L4TCP).Allowed)
	fresh("a runtime deny")

	// A real restart publishes the same policies.
	before := r.p.Snapshot()
	r.p.Close()
	r.start(t)
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	after := r.p.Snapshot()
	for i, ep := range before.Endpoints {
		a, b := *ep.Policy, *after.Endpoints[i].Policy
		a.Generation, b.Generation = 0, 0
		if a.Base != nil {
			ab, bb := *a.Base, *b.Base
			ab.Generation, bb.Generation = 0, 0
			a.Base, b.Base = &ab, &bb
		}
		require.Equal(t, a, b, "endpoint %d after a restart", i)
	}
}
