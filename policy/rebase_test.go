package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
)

// randomRuntime returns 0-4 runtime rules drawn from the pool (some
// denies, some path rules).
func randomRuntime(rng *rand.Rand) []EgressRule {
	var out []EgressRule
	for range rng.IntN(5) {
		var r EgressRule
		var err error
		switch rng.IntN(6) {
		case 0:
			r, err = ParseRuntimeRule(compilePool[rng.IntN(len(compilePool))], "net")
			r.Action = Deny
			r.Paths, r.PathDefault, r.Inspect = nil, "", false
		case 1:
			r, err = ParseRuntimeRule(layerPaths[rng.IntN(len(layerPaths))], "net")
		default:
			r, err = ParseRuntimeRule(compilePool[rng.IntN(len(compilePool))], "net")
		}
		if err == nil {
			out = append(out, r)
		}
	}
	return out
}

// TestRebaseEqualsLayer: over random network rules, labels and runtime
// rule changes (rules added, removed, denies among them), a label layer
// that Rebase carries over to the network's new base is exactly the layer
// Layer compiles on that base (every field: entries, denies, overrides,
// base, generation), and its entries are those of Compile of all the
// rules. Rebase must also refuse often enough for the cases to matter.
func TestRebaseEqualsLayer(t *testing.T) {
	reused, refused := 0, 0
	for seed := range uint64(1500) {
		rng := rand.New(rand.NewPCG(seed, 5))
		network, label, err := randomLayers(rng)
		if err != nil {
			continue
		}
		before := randomRuntime(rng)
		after := slices.Clone(before)
		switch {
		case len(after) > 0 && rng.IntN(3) == 0:
			i := rng.IntN(len(after))
			after = slices.Delete(after, i, i+1)
		default:
			after = append(after, randomRuntime(rng)...)
		}
		ids := NewIdentityTable()
		oldBase, err := Compile(CompileInput{Network: network, Runtime: before}, ids)
		require.NoError(t, err)
		newBase, err := Compile(CompileInput{Network: network, Runtime: after, Generation: 2}, ids)
		require.NoError(t, err)
		oldIdx, newIdx := NewBaseIndex(oldBase), NewBaseIndex(newBase)
		tracked, err := LayerTracked(oldIdx, label, 1, ids)
		require.NoError(t, err)
		plain, err := Layer(oldIdx, label, 1, ids)
		require.NoError(t, err)
		require.Equal(t, plain, tracked.Policy, "LayerTracked is Layer")

		got, ok := tracked.Rebase(newIdx, 2)
		if !ok {
			refused++
			continue
		}
		reused++
		ctx := fmt.Sprintf("seed %d\nnetwork %v\nbefore %v\nafter %v\nlabel %v", seed, network, before, after, label)
		want, err := Layer(newIdx, label, 2, ids)
		require.NoError(t, err)
		require.Equal(t, want, got.Policy, ctx)
		require.Same(t, newBase, got.Policy.Base, ctx)
		merged, err := Compile(CompileInput{Network: network, Runtime: after, Label: label}, ids)
		require.NoError(t, err)
		var entries []Allowed
		for a := range got.Policy.Entries() {
			entries = append(entries, *a)
		}
		require.Equal(t, merged.Allows, slices.Clip(append([]Allowed{}, entries...)), ctx)

		// Carried over again, to a third base, it still equals Layer.
		third, err := Compile(CompileInput{Network: network, Runtime: before, Generation: 3}, ids)
		require.NoError(t, err)
		thirdIdx := NewBaseIndex(third)
		if again, ok := got.Rebase(thirdIdx, 3); ok {
			want, err := Layer(thirdIdx, label, 3, ids)
			require.NoError(t, err)
			require.Equal(t, want, again.Policy, ctx)
		}
	}
	t.Logf("rebased %d, refused %d", reused, refused)
	require.Greater(t, reused, 200, "too few layers carried over")
	require.Greater(t, refused, 200, "too few layers refused")
}

// TestRebaseScale: on bench/scale's network, a runtime rule that no label
// touches carries every endpoint's layer over; one under an endpoint's
// label wildcard makes that endpoint's layer compile again, and a new
// deny every layer.
func TestRebaseScale(t *testing.T) {
	cfg := scaleNetwork(t)
	ids := NewIdentityTable()
	base, err := Compile(CompileInput{Network: cfg.Rules}, ids)
	require.NoError(t, err)
	idx := NewBaseIndex(base)
	var layers []*Layered
	var labels [][]EgressRule
	for i := 1; i <= 20; i++ {
		l, err := ParseLabels(scalegen.Labels(i), fmt.Sprintf("c%d", i))
		require.NoError(t, err)
		lay, err := LayerTracked(idx, l, 1, ids)
		require.NoError(t, err)
		layers, labels = append(layers, lay), append(labels, l)
	}
	rebase := func(rule string, action Action) int {
		r, err := ParseCompact(rule, action)
		require.NoError(t, err)
		r.Source = Provenance{Kind: SourceRuntime, Key: "runtime", Item: rule, Network: "scale"}
		nb, err := Compile(CompileInput{Network: cfg.Rules, Runtime: []EgressRule{r}, Generation: 2}, ids)
		require.NoError(t, err)
		nidx := NewBaseIndex(nb)
		n := 0
		for i, l := range layers {
			got, ok := l.Rebase(nidx, 2)
			if !ok {
				continue
			}
			n++
			want, err := Layer(nidx, labels[i], 2, ids)
			require.NoError(t, err)
			require.Equal(t, want, got.Policy, "%s: endpoint %d", rule, i+1)
		}
		return n
	}
	require.Equal(t, 20, rebase("rt.example.net", Allow))
	require.Equal(t, 19, rebase("x.team3.example.org", Allow), "a name under endpoint 3's label wildcard")
	require.Equal(t, 19, rebase("e5.agent.test", Allow), "endpoint 5's label name")
	require.Equal(t, 0, rebase("bad.example.net", Deny), "a new deny")
}
