package policy_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	"github.com/clawker-fw/clawker-fw/policy"
)

// scaleRules parses bench/scale's network of 10,000 rules and n endpoints'
// label rules.
func scaleRules(b *testing.B, n int) (policy.NetworkConfig, [][]policy.EgressRule) {
	b.Helper()
	opts, _ := scalegen.NetworkOptions()
	cfg, err := policy.ParseNetworkOptions(opts, "scalenet")
	if err != nil {
		b.Fatal(err)
	}
	labels := make([][]policy.EgressRule, n)
	for i := range labels {
		if labels[i], err = policy.ParseLabels(scalegen.Labels(i+1), fmt.Sprintf("c%d", i+1)); err != nil {
			b.Fatal(err)
		}
	}
	return cfg, labels
}

// BenchmarkCompileScale compiles bench/scale's network base (its identities
// already allocated, as in the plugin after the first commit).
func BenchmarkCompileScale(b *testing.B) {
	cfg, _ := scaleRules(b, 0)
	ids := policy.NewIdentityTable()
	in := policy.CompileInput{Network: cfg.Rules, Settings: cfg.Settings}
	if _, err := policy.Compile(in, ids); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := policy.Compile(in, ids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLayerScale indexes the base and layers 500 endpoints' labels on
// it (LayerTracked, as the plugin's Compiler does): what a cold commit
// costs after the base's compile.
func BenchmarkLayerScale(b *testing.B) {
	cfg, labels := scaleRules(b, 500)
	ids := policy.NewIdentityTable()
	base, err := policy.Compile(policy.CompileInput{Network: cfg.Rules, Settings: cfg.Settings}, ids)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		idx := policy.NewBaseIndex(base)
		for _, l := range labels {
			if _, err := policy.LayerTracked(idx, l, 1, ids); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkRuleAddedScale is what a runtime rule added to bench/scale's
// network costs the policy package with 500 labelled endpoints: the base
// compiled again and indexed, then every endpoint's layer, carried over
// (rebase) or compiled again (layer) as before Rebase existed; or the base
// patched (patch: BaseIndex.Patch, what the plugin does now) and every
// layer carried over.
func BenchmarkRuleAddedScale(b *testing.B) {
	cfg, labels := scaleRules(b, 500)
	ids := policy.NewIdentityTable()
	idx, err := policy.CompileBase(policy.CompileInput{Network: cfg.Rules, Settings: cfg.Settings}, ids)
	if err != nil {
		b.Fatal(err)
	}
	layers := make([]*policy.Layered, len(labels))
	for i, l := range labels {
		if layers[i], err = policy.LayerTracked(idx, l, 1, ids); err != nil {
			b.Fatal(err)
		}
	}
	rule, err := policy.ParseRuntimeRule("rt.example.net", "scalenet")
	if err != nil {
		b.Fatal(err)
	}
	in := policy.CompileInput{Network: cfg.Rules, Runtime: []policy.EgressRule{rule}, Settings: cfg.Settings, Generation: 2}
	for _, mode := range []string{"rebase", "layer", "patch"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				nidx, err := newBase(mode, idx, in, ids)
				if err != nil {
					b.Fatal(err)
				}
				for i, l := range layers {
					if mode != "layer" {
						if _, ok := l.Rebase(nidx, 2); ok {
							continue
						}
					}
					if _, err := policy.Layer(nidx, labels[i], 2, ids); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkBaseChangeScale is the base part alone of a runtime rule added
// to bench/scale's network: compiled and indexed again (compile), or
// patched (patch).
func BenchmarkBaseChangeScale(b *testing.B) {
	cfg, _ := scaleRules(b, 0)
	ids := policy.NewIdentityTable()
	idx, err := policy.CompileBase(policy.CompileInput{Network: cfg.Rules, Settings: cfg.Settings}, ids)
	if err != nil {
		b.Fatal(err)
	}
	rule, err := policy.ParseRuntimeRule("rt.example.net", "scalenet")
	if err != nil {
		b.Fatal(err)
	}
	in := policy.CompileInput{Network: cfg.Rules, Runtime: []policy.EgressRule{rule}, Settings: cfg.Settings, Generation: 2}
	for _, mode := range []string{"compile", "patch"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := newBase(mode, idx, in, ids); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// newBase returns the base of in: idx patched in mode patch, else
// compiled and indexed.
func newBase(mode string, idx *policy.BaseIndex, in policy.CompileInput, ids *policy.IdentityTable) (*policy.BaseIndex, error) {
	if mode == "patch" {
		if nidx, ok := idx.Patch(in.Runtime, in.Generation, ids); ok {
			return nidx, nil
		}
		return nil, errors.New("patch refused")
	}
	return policy.CompileBase(in, ids)
}
