package policy_test

import (
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
// it: what a network rule change costs after the base's compile.
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
			if _, err := policy.Layer(idx, l, 1, ids); err != nil {
				b.Fatal(err)
			}
		}
	}
}
