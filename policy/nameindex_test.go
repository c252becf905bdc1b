package policy

import (
	"encoding/json"
	"fmt"
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
// scanned in order (MatchName's own scan, for policies without an index).
func scanMatchName(p *Policy, name string, port uint16, l4 L4) Match {
	return unindexed(p).MatchName(name, port, l4)
}

// unindexed returns a copy of p and of its bases without their name
// indexes; the copies share p's entries, so a match points at the same
// entry in both.
func unindexed(p *Policy) *Policy {
	if p == nil {
		return nil
	}
	q := *p
	q.names, q.Base = nil, unindexed(p.Base)
	return &q
}

// indexAll makes the constructors (and Indexed) index every policy for
// the rest of the test.
func indexAll(tb testing.TB) {
	old := indexMin
	indexMin = 0
	tb.Cleanup(func() { indexMin = old })
}

// requireIndexed fails unless p and every base below it holds a current
// name index, so that a test comparing MatchName with the scan compares
// something.
func requireIndexed(t *testing.T, p *Policy, ctx string) {
	t.Helper()
	for q := p; q != nil; q = q.Base {
		require.True(t, q.names != nil && q.names.current(q.Allows, q.Denies), "not indexed: %s", ctx)
	}
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

// requireScanAnswers fails unless p and its bases are name-indexed and
// p.MatchName answers every probe name on every probe port exactly as
// the scan does (requireAnswersAsScan).
func requireScanAnswers(t *testing.T, p *Policy, names []string, ctx string) {
	t.Helper()
	requireIndexed(t, p, ctx)
	requireAnswersAsScan(t, p, names, ctx)
}

// requireAnswersAsScan fails unless p.MatchName answers every probe name
// on every probe port exactly as the scan does: the same decision, reason
// and the same entry and deny (by address, not only by value).
func requireAnswersAsScan(t *testing.T, p *Policy, names []string, ctx string) {
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
		hand[i] = p.Indexed()
		require.Nil(t, p.names, "Indexed changed the policy it was given")
		requireScanAnswers(t, hand[i], probeNames(p), fmt.Sprintf("hand-built %d", i))
	}
	layeredHand := (&Policy{Allows: []Allowed{{Pattern: "a.example.com"}}, Base: hand[5]}).Indexed()
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

// TestNameIndexFollowsAllows: a policy whose allows or denies are changed
// after its index was built (policies are immutable once built, but a
// copy or a careless builder may change them) answers as the scan of its
// entries now, not from the stale index: slices replaced, cut, or
// appended to in place within their capacity (the same array), denies
// included, on the policy itself and on a copy of it. A deny appended
// where the index cannot see it would otherwise let its name through.
func TestNameIndexFollowsAllows(t *testing.T) {
	indexAll(t)
	build := func() *Policy {
		allows := make([]Allowed, 0, 8) // spare capacity: an append stays in the array indexed
		allows = append(allows, Allowed{Pattern: "a.example.com"}, Allowed{Pattern: ".b.example.com"},
			Allowed{Pattern: ".bad.example.com"})
		denies := make([]Denied, 0, 8)
		denies = append(denies, Denied{Pattern: ".bad.example.com"})
		return (&Policy{Allows: allows, Denies: denies}).Indexed()
	}
	p := build()
	require.True(t, p.MatchName("x.b.example.com", 0, 0).Allowed)
	require.True(t, p.MatchName("c.example.com", 0, 0).Reason == ReasonNoRule)

	changes := []struct {
		what   string
		change func(p *Policy)
		name   string
		want   Reason
	}{
		{"deny appended in place", func(p *Policy) { p.Denies = append(p.Denies, Denied{Pattern: "x.b.example.com"}) },
			"x.b.example.com", ReasonDenyRule},
		{"allow appended in place", func(p *Policy) { p.Allows = append(p.Allows, Allowed{Pattern: ".example.com"}) },
			"c.example.com", ReasonAllowed},
		{"allows replaced", func(p *Policy) { p.Allows = []Allowed{{Pattern: "c.example.com"}} }, "c.example.com", ReasonAllowed},
		{"allows cut", func(p *Policy) { p.Allows = p.Allows[1:] }, "a.example.com", ReasonNoRule},
		{"allows cut at the end", func(p *Policy) { p.Allows = p.Allows[:1] }, "x.b.example.com", ReasonNoRule},
		{"denies replaced", func(p *Policy) { p.Denies = []Denied{{Pattern: "example.com"}} }, "a.example.com", ReasonDenyRule},
		{"denies emptied", func(p *Policy) { p.Denies = nil }, "x.bad.example.com", ReasonAllowed},
	}
	for _, tc := range changes {
		p := build()
		requireScanAnswers(t, p, probeNames(p), tc.what+", before")
		q := *p // a copy carries the index: it answers for the same entries
		requireScanAnswers(t, &q, probeNames(p), tc.what+", copy before")
		tc.change(p)
		require.Equal(t, tc.want, p.MatchName(tc.name, 0, 0).Reason, tc.what)
		requireAnswersAsScan(t, p, probeNames(p), tc.what)
		tc.change(&q)
		require.Equal(t, tc.want, q.MatchName(tc.name, 0, 0).Reason, tc.what+", copy")
		requireAnswersAsScan(t, &q, probeNames(&q), tc.what+", copy")
		requireScanAnswers(t, p.Indexed(), probeNames(p), tc.what+", indexed again")
	}
}

// TestNameIndexEqualPolicies: the index is a function of the entries, so
// policies compiled alike are equal, indexes included, and so is one
// decoded from its JSON (which carries no index) once Indexed: tests that
// compare policies whole keep comparing what they did.
func TestNameIndexEqualPolicies(t *testing.T) {
	indexAll(t)
	cfg := scaleNetwork(t)
	in := CompileInput{Network: cfg.Rules[:500], Runtime: cfg.Rules[500:600]}
	p, err := Compile(in, NewIdentityTable())
	require.NoError(t, err)
	q, err := Compile(in, NewIdentityTable())
	require.NoError(t, err)
	requireIndexed(t, p, "compiled")
	require.Equal(t, p, q)

	raw, err := json.Marshal(p)
	require.NoError(t, err)
	var d Policy
	require.NoError(t, json.Unmarshal(raw, &d))
	require.Nil(t, d.names)
	requireScanAnswers(t, d.Indexed(), probeNames(p), "decoded")
	require.Equal(t, p, d.Indexed())
	require.Same(t, p, p.Indexed())

	// An index that is not the entries' own makes two policies differ.
	r := *q
	r.names = newNameIndex(p.Allows[1:], p.Denies)
	require.NotEqual(t, p, &r)
}

// BenchmarkMatchNameScale decides, at bench/scale's 10,000 rules, the
// name of the last name allow (late) and a name no allow covers (none):
// scan is the scan of the denies and allows MatchName does without an
// index, index is MatchName now; build is the index built once per
// compiled or patched base.
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
	scan := unindexed(p)
	if m := scan.MatchName(late, 0, 0); m.Entry == nil || m.Entry.Pattern != strings.TrimPrefix(late, "x") {
		b.Fatalf("%q is not decided by the last name allow: %+v", late, m)
	}
	for _, tc := range []struct{ what, name string }{{"late", late}, {"none", "www.nowhere.invalid"}} {
		want := scan.MatchName(tc.name, 443, L4TCP)
		if got := p.MatchName(tc.name, 443, L4TCP); got != want {
			b.Fatalf("%s: index %+v, scan %+v", tc.what, got, want)
		}
		b.Run(tc.what+"/scan", func(b *testing.B) {
			for b.Loop() {
				scan.MatchName(tc.name, 443, L4TCP)
			}
		})
		b.Run(tc.what+"/index", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.MatchName(tc.name, 443, L4TCP)
			}
		})
	}
	// What Compile, CompileBase and Patch pay once per base.
	b.Run("build", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newNameIndex(p.Allows, p.Denies)
		}
	})
}

// TestNameIndexConcurrent: goroutines deciding names on shared policies
// at once, and calling Indexed on them (which must not write a shared
// policy), answer as the scan; run with -race.
func TestNameIndexConcurrent(t *testing.T) {
	indexAll(t)
	pols := make([]*Policy, 20)
	for i := range pols {
		pols[i] = &Policy{Allows: []Allowed{{Pattern: fmt.Sprintf("h%d.example.com", i)}, {Pattern: ".example.com"}}}
		if i%2 == 0 {
			pols[i] = pols[i].Indexed()
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i, p := range pols {
				if g%2 == 1 {
					p = p.Indexed()
				}
				m := p.MatchName(fmt.Sprintf("h%d.example.com", (i+g)%len(pols)), 0, 0)
				if m.Entry == nil || (g%len(pols) == 0) != (m.Entry == &p.Allows[0]) {
					t.Errorf("policy %d goroutine %d: %+v", i, g, m)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkMatchNameLayered decides names for an endpoint with label
// rules on bench/scale's network (its base indexed, its own layer of
// scalegen's labels scanned): a name of the last base allow (base), a
// label name (label) and a name no allow covers (none). Small is a policy
// of a dozen entries, below indexMin: the scan alone.
func BenchmarkMatchNameLayered(b *testing.B) {
	opts, _ := scalegen.NetworkOptions()
	cfg, err := ParseNetworkOptions(opts, "scale")
	if err != nil {
		b.Fatal(err)
	}
	label, err := ParseLabels(scalegen.Labels(1), "c1")
	if err != nil {
		b.Fatal(err)
	}
	ids := NewIdentityTable()
	base, err := CompileBase(CompileInput{Network: cfg.Rules}, ids)
	if err != nil {
		b.Fatal(err)
	}
	lay, err := Layer(base, label, 1, ids)
	if err != nil {
		b.Fatal(err)
	}
	last := ""
	for _, a := range base.Policy().Allows {
		if !a.Prefix.IsValid() {
			last = strings.TrimPrefix(a.Pattern, ".")
		}
	}
	own := strings.TrimPrefix(lay.Allows[0].Pattern, ".")
	small, err := Compile(CompileInput{Network: cfg.Rules[:12]}, NewIdentityTable())
	if err != nil {
		b.Fatal(err)
	}
	smallName := strings.TrimPrefix(small.Allows[len(small.Allows)-1].Pattern, ".")
	for _, tc := range []struct {
		what string
		p    *Policy
		name string
	}{{"base", lay, last}, {"label", lay, own}, {"none", lay, "www.nowhere.invalid"}, {"small", small, smallName}} {
		if m := tc.p.MatchName(tc.name, 443, L4TCP); tc.what != "none" && m.Entry == nil {
			b.Fatalf("%s: %q matches no entry: %+v", tc.what, tc.name, m)
		}
		b.Run(tc.what, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tc.p.MatchName(tc.name, 443, L4TCP)
			}
		})
	}
}
