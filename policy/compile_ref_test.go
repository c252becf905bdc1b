package policy

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
)

// referenceCompile is Compile as it was before its indexes (denies found
// by a scan, rules grouped in a map of slices, enclosing patterns listed
// as strings, a comparison sort): the plain reading of Compile's steps
// that the indexed one must equal exactly.
func referenceCompile(in CompileInput, alloc Allocator) (*Policy, error) {
	all, err := normalizeAll(in.Network, in.Runtime, in.Label)
	if err != nil {
		return nil, err
	}
	all = referenceDedup(all)
	p := &Policy{Generation: in.Generation, Allows: []Allowed{}, Denies: []Denied{}, InspectAll: in.Settings.InspectAll}
	for _, r := range all {
		if r.Action == Deny {
			p.Denies = append(p.Denies, Denied{Pattern: r.Dst, Prefix: rulePrefix(r), Rule: r})
		}
	}
	var patterns []string
	own := make(map[string][]EgressRule)
	for _, r := range all {
		if r.Action != Allow {
			continue
		}
		if d, ok := coveringDeny(p.Denies, r); ok {
			p.Overridden = append(p.Overridden, Override{Allow: r, Deny: d.Rule})
			continue
		}
		if _, ok := own[r.Dst]; !ok {
			patterns = append(patterns, r.Dst)
		}
		own[r.Dst] = append(own[r.Dst], r)
	}
	slices.SortFunc(patterns, compareSpecificity)
	for _, pat := range patterns {
		pre := rulePrefix(own[pat][0])
		a := Allowed{Pattern: pat, Prefix: pre}
		rules := slices.Clone(own[pat])
		for _, outer := range enclosing(pat, pre) {
			rules = append(rules, own[outer]...)
		}
		a.Rules = rules
		a.Ports = mergePorts(rules)
		a.Paths, a.PathDefault, a.Inspect = mergeHTTP(rules)
		a.Identity = alloc.Identity(pat)
		p.Allows = append(p.Allows, a)
	}
	// Indexed as Compile indexes what it builds: the index is a function
	// of the entries, so equal entries make equal policies.
	return p.Indexed(), nil
}

func referenceDedup(rules []EgressRule) []EgressRule {
	var out []EgressRule
	for _, r := range rules {
		if !slices.ContainsFunc(out, func(x EgressRule) bool { return x.Key() == r.Key() && sameBody(x, r) }) {
			out = append(out, r)
		}
	}
	return out
}

// compilePool adds to layerPool destinations that the indexes must tell
// apart: denies and allows at every depth, IPv6, prefixes of every length.
var compilePool = append(slices.Clone(layerPool), ".a.example.com", "c.b.a.example.com", ".b.a.example.com",
	"example.org", ".org", "10.1.2.128/25", "10.0.0.0/7", "0.0.0.0/0", "2001:db8::/32", "2001:db8::1",
	"tcp://c.b.a.example.com:9000", "http://.a.example.com:8080")

// TestCompileEqualsReference: over random rule sets (and bench/scale's
// 10,000 rules), Compile returns exactly what referenceCompile does:
// every entry, deny and override, in the same order, with the same
// identities allocated in the same order.
func TestCompileEqualsReference(t *testing.T) {
	for seed := range uint64(600) {
		rng := rand.New(rand.NewPCG(seed, 11))
		opts := map[string]string{"clawker.allow": pick(rng, compilePool, 14), "clawker.deny": pick(rng, compilePool, 4)}
		if rng.IntN(2) == 0 {
			opts["clawker.rules"] = "[" + pick(rng, layerPaths, 3) + "]"
		}
		dropEmpty(opts)
		cfg, err := ParseNetworkOptions(opts, "net")
		if err != nil {
			continue
		}
		labels := map[string]string{"clawker.allow": pick(rng, compilePool, 4), "clawker.deny": pick(rng, compilePool, 2)}
		dropEmpty(labels)
		label, err := ParseLabels(labels, "ctr")
		if err != nil {
			continue
		}
		in := CompileInput{Network: cfg.Rules[:len(cfg.Rules)/2], Runtime: cfg.Rules[len(cfg.Rules)/2:], Label: label, Generation: seed}
		want, err := referenceCompile(in, NewIdentityTable())
		require.NoError(t, err)
		got, err := Compile(in, NewIdentityTable())
		require.NoError(t, err)
		require.Equal(t, want, got, "seed %d\n%v", seed, opts)
	}
	cfg := scaleNetwork(t)
	label, err := ParseLabels(scalegen.Labels(1), "c1")
	require.NoError(t, err)
	in := CompileInput{Network: cfg.Rules, Label: label}
	want, err := referenceCompile(in, NewIdentityTable())
	require.NoError(t, err)
	got, err := Compile(in, NewIdentityTable())
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// TestDenyIndexEqualsScan: the deny index finds the deny the scan
// (coveringDeny) finds, for every pair of destinations of the pool.
func TestDenyIndexEqualsScan(t *testing.T) {
	var rules []EgressRule
	for _, s := range append(slices.Clone(compilePool), ".", "com", ".b.example.com", "10.1.2.3/32") {
		r, err := ParseCompact(s, Deny)
		if err != nil {
			continue
		}
		rules = append(rules, r)
	}
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 3))
		var denies []Denied
		for range rng.IntN(6) {
			r := rules[rng.IntN(len(rules))]
			denies = append(denies, Denied{Pattern: r.Dst, Prefix: rulePrefix(r), Rule: r})
		}
		x := newDenyIndex(denies)
		for _, r := range rules {
			want, wok := coveringDeny(denies, r)
			got, gok := x.covering(r)
			require.Equal(t, wok, gok, "seed %d %s", seed, r.Dst)
			require.Equal(t, want, got, "seed %d %s", seed, r.Dst)
		}
	}
}
