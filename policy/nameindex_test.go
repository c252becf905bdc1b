package policy

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
)

// scanMatchName is MatchName as it was before the name index, the
// reference the index must answer as: every layer's denies and allows
// scanned in order (MatchName's own scan, for policies below indexMin).
// Tests in this package do not run in parallel.
func scanMatchName(p *Policy, name string, port uint16, l4 L4) Match {
	old := indexMin
	indexMin = math.MaxInt
	defer func() { indexMin = old }()
	return p.MatchName(name, port, l4)
}

// indexAll makes MatchName index every policy for the rest of the test.
func indexAll(tb testing.TB) {
	old := indexMin
	indexMin = 0
	tb.Cleanup(func() { indexMin = old })
}

// oddNames are names no rule parser lets through as patterns but that
// queries and hand-built policies may carry.
var oddNames = []string{"", ".", "..", "...", "a..b", ".a", "a.", ".a.", "com", ".com", "example..com", "EXAMPLE.COM.",
	"x.example.com..", "a.example.com.a.example.com"}

// probeNames returns the names worth asking p: every pattern of every
// layer, its apex, names below it, near misses that share its suffix
// without a dot boundary, its upper case with a trailing dot, and the odd
// names.
func probeNames(p *Policy) []string {
	names := append([]string{}, oddNames...)
	for q := p; q != nil; q = q.Base {
		for _, a := range q.Allows {
			names = append(names, patternProbes(a.Pattern)...)
		}
		for _, d := range q.Denies {
			names = append(names, patternProbes(d.Pattern)...)
		}
	}
	return names
}

func patternProbes(pat string) []string {
	apex := strings.TrimPrefix(pat, ".")
	out := []string{pat, apex, "." + apex, "x." + apex, "y.x." + apex, "x" + apex, "x-" + apex, apex + ".", apex + ".x",
		strings.ToUpper("z." + apex + "."), apex + "..", "." + apex + "."}
	if len(apex) > 1 {
		out = append(out, apex[1:], apex[:len(apex)-1])
	}
	if i := strings.IndexByte(apex, '.'); i >= 0 {
		out = append(out, apex[i+1:], apex[i:], "q"+apex[i:])
	}
	return out
}

var probePorts = []struct {
	port uint16
	l4   L4
}{{0, L4TCP}, {443, L4TCP}, {80, L4TCP}, {22, L4TCP}, {5432, L4TCP}, {7001, L4TCP}, {8443, L4TCP}, {53, L4UDP}}

// requireScanAnswers fails unless p.MatchName answers every probe name on
// every probe port exactly as the scan does: the same decision, reason and
// the same entry and deny (by address, not only by value).
func requireScanAnswers(t *testing.T, p *Policy, names []string, ctx string) {
	t.Helper()
	for _, name := range names {
		for _, pp := range probePorts {
			want, got := scanMatchName(p, name, pp.port, pp.l4), p.MatchName(name, pp.port, pp.l4)
			require.Equal(t, want, got, "name %q port %d\n%s", name, pp.port, ctx)
			require.True(t, want.Entry == got.Entry && want.Deny == got.Deny, "name %q port %d: other entry\n%s", name, pp.port, ctx)
		}
	}
}

// TestNameIndexAnswersAsScan: MatchName with the name index answers as
// the scan of the allows for random compiled and layered policies, hand
// built ones with patterns no parser emits (".", "", duplicates, CIDR
// entries among names, unsorted), and bench/scale's 10,000 rules, over
// every pattern, its apex, names below it, near misses and odd names.
func TestNameIndexAnswersAsScan(t *testing.T) {
	indexAll(t)
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 13))
		opts := map[string]string{"clawker.allow": pick(rng, compilePool, 14), "clawker.deny": pick(rng, compilePool, 3)}
		dropEmpty(opts)
		cfg, err := ParseNetworkOptions(opts, "net")
		if err != nil {
			continue
		}
		p, err := Compile(CompileInput{Network: cfg.Rules, Runtime: randomRuntime(rng)}, NewIdentityTable())
		require.NoError(t, err)
		requireScanAnswers(t, p, probeNames(p), fmt.Sprintf("compiled, seed %d %v", seed, opts))

		network, label, err := randomLayers(rng)
		if err != nil {
			continue
		}
		ids := NewIdentityTable()
		base, err := Compile(CompileInput{Network: network}, ids)
		require.NoError(t, err)
		lay, err := Layer(NewBaseIndex(base), label, 0, ids)
		require.NoError(t, err)
		requireScanAnswers(t, lay, probeNames(lay), fmt.Sprintf("layered, seed %d\n%v\n%v", seed, network, label))
	}

	cidr := netip.MustParsePrefix("10.0.0.0/8")
	hand := []*Policy{
		{Allows: []Allowed{{Pattern: "."}, {Pattern: "example.com"}}},
		{Allows: []Allowed{{Pattern: "example.com"}, {Pattern: "."}, {Pattern: ""}}},
		{Allows: []Allowed{{Pattern: ""}, {Pattern: ".com"}}},
		{Allows: []Allowed{{Pattern: ".example.com", Identity: 1}, {Pattern: ".example.com", Identity: 2},
			{Pattern: "a.example.com", Identity: 3}, {Pattern: "a.example.com", Identity: 4}}},
		{Allows: []Allowed{{Pattern: "a.example.com", Prefix: cidr}, {Pattern: ".example.com", Prefix: cidr},
			{Pattern: "10.0.0.0/8", Prefix: cidr}, {Pattern: ".example.com"}}},
		{Allows: []Allowed{{Pattern: ".com"}, {Pattern: ".a.example.com"}, {Pattern: "a.example.com"}, {Pattern: ".."}, {Pattern: "a..b"}}},
		{Allows: []Allowed{{Pattern: ".example.com"}}, Denies: []Denied{{Pattern: "b.example.com"}, {Pattern: "."}}},
		{Allows: []Allowed{{Pattern: ".com"}}, Denies: []Denied{{Pattern: "a.example.com", Prefix: cidr}, {Pattern: ".b.example.com"},
			{Pattern: "b.example.com"}, {Pattern: ""}, {Pattern: "example.com"}, {Pattern: ".."}}},
		{Allows: []Allowed{}},
	}
	for i, p := range hand {
		requireScanAnswers(t, p, probeNames(p), fmt.Sprintf("hand-built %d", i))
	}
	layeredHand := &Policy{Allows: []Allowed{{Pattern: "a.example.com"}}, Base: hand[5]}
	requireScanAnswers(t, layeredHand, probeNames(layeredHand), "hand-built layered")

	cfg := scaleNetwork(t)
	label, err := ParseLabels(scalegen.Labels(1), "c1")
	require.NoError(t, err)
	ids := NewIdentityTable()
	base, err := Compile(CompileInput{Network: cfg.Rules}, ids)
	require.NoError(t, err)
	lay, err := Layer(NewBaseIndex(base), label, 0, ids)
	require.NoError(t, err)
	// Every 40th pattern's probes: the scan of 10,000 allows is the slow part.
	sample := func(p *Policy) []string {
		var names []string
		for i, n := range probeNames(p) {
			if i%40 == 0 || i < len(oddNames) {
				names = append(names, n)
			}
		}
		return names
	}
	requireScanAnswers(t, base, sample(base), "scale base")
	requireScanAnswers(t, lay, sample(lay), "scale layered")
}

// TestNameIndexFollowsAllows: a policy whose allows were replaced after
// its first lookup (policies are immutable once shared, but a builder may
// look up early) is answered from its new allows, not a stale index; two
// equal policies stay equal when only one of them was indexed.
func TestNameIndexFollowsAllows(t *testing.T) {
	indexAll(t)
	p := &Policy{Allows: []Allowed{{Pattern: "a.example.com"}}}
	require.True(t, p.MatchName("a.example.com", 0, 0).Allowed)
	p.Allows = []Allowed{{Pattern: "b.example.com"}}
	require.False(t, p.MatchName("a.example.com", 0, 0).Allowed)
	require.True(t, p.MatchName("b.example.com", 0, 0).Allowed)
	p.Allows = append(p.Allows, Allowed{Pattern: ".c.example.com"})
	require.True(t, p.MatchName("x.c.example.com", 0, 0).Allowed)

	q := &Policy{Allows: []Allowed{{Pattern: "b.example.com"}, {Pattern: ".c.example.com"}}}
	require.Equal(t, q, p)
	require.NotNil(t, p.names())
}

// BenchmarkMatchNameScale decides, at bench/scale's 10,000 rules, the
// name of the last name allow (late) and a name no allow covers (none):
// scan is the scan of the denies and allows MatchName did before its
// index, index is MatchName now; build is the index built once.
func BenchmarkMatchNameScale(b *testing.B) {
	opts, _ := scalegen.NetworkOptions()
	cfg, err := ParseNetworkOptions(opts, "scale")
	if err != nil {
		b.Fatal(err)
	}
	p, err := Compile(CompileInput{Network: cfg.Rules}, NewIdentityTable())
	if err != nil {
		b.Fatal(err)
	}
	late := ""
	for _, a := range p.Allows {
		if !a.Prefix.IsValid() {
			late = a.Pattern
			if strings.HasPrefix(late, ".") {
				late = "x" + late
			}
		}
	}
	if m := scanMatchName(p, late, 0, 0); m.Entry == nil || m.Entry.Pattern != strings.TrimPrefix(late, "x") {
		b.Fatalf("%q is not decided by the last name allow: %+v", late, m)
	}
	for _, tc := range []struct{ what, name string }{{"late", late}, {"none", "www.nowhere.invalid"}} {
		want := scanMatchName(p, tc.name, 443, L4TCP)
		if got := p.MatchName(tc.name, 443, L4TCP); got != want {
			b.Fatalf("%s: index %+v, scan %+v", tc.what, got, want)
		}
		b.Run(tc.what+"/scan", func(b *testing.B) {
			for b.Loop() {
				scanMatchName(p, tc.name, 443, L4TCP)
			}
		})
		b.Run(tc.what+"/index", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.MatchName(tc.name, 443, L4TCP)
			}
		})
	}
	// What the first lookup after a rule change pays once.
	b.Run("build", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newNameIndex(p.Allows, p.Denies)
		}
	})
}

// TestNameIndexConcurrent: goroutines deciding names on fresh policies at
// once (the first lookups build the index together) answer as the scan;
// run with -race.
func TestNameIndexConcurrent(t *testing.T) {
	indexAll(t)
	pols := make([]*Policy, 20)
	for i := range pols {
		pols[i] = &Policy{Allows: []Allowed{{Pattern: fmt.Sprintf("h%d.example.com", i)}, {Pattern: ".example.com"}}}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i, p := range pols {
				m := p.MatchName(fmt.Sprintf("h%d.example.com", (i+g)%len(pols)), 0, 0)
				if m.Entry == nil || (g%len(pols) == 0) != (m.Entry == &p.Allows[0]) {
					t.Errorf("policy %d goroutine %d: %+v", i, g, m)
				}
			}
		})
	}
	wg.Wait()
}
