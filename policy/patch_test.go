package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
)

// scaleNetwork parses bench/scale's network of 10,000 rules.
func scaleNetwork(t *testing.T) NetworkConfig {
	t.Helper()
	opts, _ := scalegen.NetworkOptions()
	cfg, err := ParseNetworkOptions(opts, "scale")
	require.NoError(t, err)
	return cfg
}

// requireSameBase fails unless got is want to the last field: the policy,
// and every part of the index that lookups read (not its serial and
// memo, which only name it).
func requireSameBase(t *testing.T, want, got *BaseIndex, msg string) {
	t.Helper()
	require.Equal(t, want.pol, got.pol, msg)
	require.Equal(t, want.byPattern, got.byPattern, msg)
	require.Equal(t, want.extra, got.extra, msg)
	require.Equal(t, want.denies, got.denies, msg)
	require.Equal(t, want.under, got.under, msg)
	require.Equal(t, want.cidrs, got.cidrs, msg)
	require.Equal(t, want.src, got.src, msg)
	if len(got.pol.Allows)+len(got.pol.Denies) >= indexMin {
		requireIndexed(t, got.pol, msg)
	}
}

// runtimeChange returns rules changed by one random step of an operator:
// 1-2 runtime rules added (any pool item, a path rule, a deny, a repeat of
// a network rule or an invalid rule), one removed, or two swapped.
func runtimeChange(rng *rand.Rand, rules, network []EgressRule) []EgressRule {
	out := slices.Clone(rules)
	switch n := rng.IntN(10); {
	case n < 3 && len(out) > 0:
		i := rng.IntN(len(out))
		return slices.Delete(out, i, i+1)
	case n == 3 && len(out) > 1:
		i, j := rng.IntN(len(out)), rng.IntN(len(out))
		out[i], out[j] = out[j], out[i]
		return out
	case n == 4 && len(network) > 0:
		r := network[rng.IntN(len(network))]
		if rng.IntN(2) == 0 {
			r.Source = Provenance{Kind: SourceRuntime, Key: "runtime", Item: r.Dst, Network: "net"}
		}
		return append(out, r)
	case n == 5 && rng.IntN(4) == 0:
		return append(out, EgressRule{Dst: "bad..name", Action: Allow, Source: Provenance{Kind: SourceRuntime}})
	}
	return append(out, randomRuntime(rng)...)
}

// TestPatchEqualsCompile: over random network rules and random sequences
// of runtime rule changes (added, removed, reordered, repeating network
// rules, denies, path rules, tcp/udp/ssh, CIDRs, invalid ones), a base
// that Patch derives from the previous one is exactly the base
// CompileBase compiles from scratch (policy, index, identities allocated
// in the same order, even from an identity table that lost them); where
// Patch refuses (a deny changed, an invalid rule), the caller compiles as
// the plugin does. Both must happen often. Every base is name-indexed
// (requireSameBase compares the indexes too) and every 8th patched base
// answers as the scan.
func TestPatchEqualsCompile(t *testing.T) {
	indexAll(t)
	patched, refused := 0, 0
	for seed := range uint64(400) {
		rng := rand.New(rand.NewPCG(seed, 13))
		opts := map[string]string{"clawker.allow": pick(rng, compilePool, 14), "clawker.deny": pick(rng, compilePool, 3)}
		if rng.IntN(2) == 0 {
			opts["clawker.rules"] = "[" + pick(rng, layerPaths, 3) + "]"
		}
		if rng.IntN(4) == 0 {
			opts[KeyTLSInspect] = "all"
		}
		dropEmpty(opts)
		cfg, err := ParseNetworkOptions(opts, "net")
		if err != nil {
			continue
		}
		in := CompileInput{Network: cfg.Rules, Runtime: randomRuntime(rng), Settings: cfg.Settings, Generation: 1}
		// The same allocations go to both tables, so they stay equal.
		idsFull, idsPatch := NewIdentityTable(), NewIdentityTable()
		cur, err := CompileBase(in, idsPatch)
		require.NoError(t, err)
		_, err = CompileBase(in, idsFull)
		require.NoError(t, err)
		history := fmt.Sprintf("seed %d\noptions %v\nruntime %v", seed, opts, in.Runtime)
		for step := range 12 {
			in.Runtime = runtimeChange(rng, in.Runtime, cfg.Rules)
			in.Generation++
			if rng.IntN(8) == 0 {
				// A commit whose write failed: its identities are lost.
				idsFull, idsPatch = NewIdentityTable(), NewIdentityTable()
			}
			history += fmt.Sprintf("\nstep %d: runtime %v", step, in.Runtime)
			want, werr := CompileBase(in, idsFull)
			got, ok := cur.Patch(in.Runtime, in.Generation, idsPatch)
			if !ok {
				refused++
				if cur, err = CompileBase(in, idsPatch); err != nil {
					require.Error(t, werr, history)
					cur, err = CompileBase(CompileInput{Network: cfg.Rules, Settings: cfg.Settings}, idsPatch)
					require.NoError(t, err)
					_, err = CompileBase(CompileInput{Network: cfg.Rules, Settings: cfg.Settings}, idsFull)
					require.NoError(t, err)
					in.Runtime = nil
				}
			} else {
				patched++
				require.NoError(t, werr, history)
				requireSameBase(t, want, got, history)
				if patched%8 == 0 { // its index equals the compiled one's; a sample answers as the scan
					requireScanAnswers(t, got.pol, probeNames(got.pol), history)
				}
				cur = got
			}
			a, err := idsFull.MarshalJSON()
			require.NoError(t, err)
			b, err := idsPatch.MarshalJSON()
			require.NoError(t, err)
			require.Equal(t, string(a), string(b), "identities allocated in the same order\n%s", history)
		}
	}
	t.Logf("patched %d, refused %d", patched, refused)
	require.Greater(t, patched, 2500, "too few patches")
	require.Greater(t, refused, 300, "too few refusals")
}

// TestPatchScale: on bench/scale's network of 10,000 rules, runtime rules
// added and removed one by one (a name, a name under a network wildcard,
// a wildcard enclosing hundreds of names, a CIDR around network CIDRs,
// tcp and path rules, a repeat of a network rule, a rule a network deny
// covers) are patched into exactly the compiled base; a runtime deny is
// not.
func TestPatchScale(t *testing.T) {
	cfg := scaleNetwork(t)
	idsFull, idsPatch := NewIdentityTable(), NewIdentityTable()
	in := CompileInput{Network: cfg.Rules, Settings: cfg.Settings, Generation: 1}
	cur, err := CompileBase(in, idsPatch)
	require.NoError(t, err)
	_, err = CompileBase(in, idsFull)
	require.NoError(t, err)
	add := []string{"rt.example.net", "x.z7.example.io", ".svc3.example.com", "100.64.0.0/16", "tcp://rt.example.net:7000",
		`{"dst":".z9.example.io","paths":[{"path":"/x/","action":"deny"}],"path_default":"allow"}`,
		scalegen.TLSName(5), "bad3.z3.example.io", ".example.com"}
	var rules []EgressRule
	step := func(msg string) {
		in.Runtime, in.Generation = rules, in.Generation+1
		got, ok := cur.Patch(rules, in.Generation, idsPatch)
		require.True(t, ok, msg)
		want, err := CompileBase(in, idsFull)
		require.NoError(t, err)
		requireSameBase(t, want, got, msg)
		cur = got
	}
	for _, item := range add {
		r, err := ParseRuntimeRule(item, "scale")
		require.NoError(t, err)
		rules = append(rules, r)
		step("add " + item)
	}
	for len(rules) > 0 {
		msg := "remove " + FormatRule(rules[0])
		rules = rules[1:]
		step(msg)
	}
	d, err := ParseRuntimeRule("rt.example.net", "scale")
	require.NoError(t, err)
	d.Action = Deny
	_, ok := cur.Patch([]EgressRule{d}, in.Generation+1, idsPatch)
	require.False(t, ok, "a runtime deny is compiled")
}
