package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// CompileInput is everything one endpoint's policy is compiled from.
type CompileInput struct {
	// Network holds the network's option rules (ParseNetworkOptions).
	Network []EgressRule
	// Runtime holds the rules added to the network through the admin API.
	Runtime []EgressRule
	// Label holds the container's label rules (ParseLabels).
	Label []EgressRule
	// Settings are the network-wide settings.
	Settings NetworkSettings
	// Generation is the snapshot generation being compiled.
	Generation uint64
}

// Compile builds an endpoint's effective Policy. Its steps:
//
//  1. The rules are taken in source order (network options, runtime,
//     labels), normalized again (a rule that does not validate fails the
//     compilation: fail closed) and deduplicated (Dedup: the first rule
//     keeps its provenance).
//  2. Every deny becomes a Denied entry. A deny covers its name's whole
//     subtree ("example.com" and ".example.com" both cover example.com and
//     every name below it) or its whole CIDR, on every port.
//  3. An allow whose pattern lies inside a deny's subtree or CIDR is removed
//     and listed in Overridden (with the first such deny). An allow broader
//     than a deny stays: MatchName and MatchIP check denies first.
//  4. The remaining allows are grouped by pattern. Each pattern gets its
//     identity from alloc, and its Ports are the port ranges of its own rules
//     plus those of every allow whose pattern encloses it (".example.com"
//     encloses "example.com", "api.example.com" and ".x.example.com"; a CIDR
//     encloses every narrower CIDR inside it), so that the most specific
//     match routes everything any matching rule allows. Rules lists the
//     pattern's own rules, then those of its enclosing allows, nearest
//     first.
//  5. HTTP rules are merged over the same set of rules (the pattern's own and
//     its enclosing allows' https/http rules), as a union of what each rule
//     allows minus every path the rules deny: Paths lists every deny path
//     rule first, then (only when some rule's default is deny) every allow
//     path rule, each group in rule order; PathDefault is allow when any of
//     those rules lets unmatched paths through (a rule without path rules
//     allows every path), else deny. Path rules apply to the pattern as a
//     whole, not per port. Inspect is on when any of those rules has it on
//     (a rule's path rules force it, even when the merge drops them) or any
//     path rule remains.
//  6. Allows are sorted most specific first: exact names, then wildcards by
//     descending label count, then CIDRs by descending prefix length; ties
//     are broken by pattern, so the order is deterministic.
//
// Compile allocates identities for new patterns; the caller persists alloc
// when it grew (see IdentityTable).
func Compile(in CompileInput, alloc Allocator) (*Policy, error) {
	p, _, err := compile(in, alloc)
	return p, err
}

// compile is Compile, also returning what Patch needs of a base: the
// runtime rules it kept and how many overrides its network rules made.
func compile(in CompileInput, alloc Allocator) (*Policy, *baseSource, error) {
	all, err := normalizeAll(in.Network, in.Runtime, in.Label)
	if err != nil {
		return nil, nil, err
	}
	// Deduplicated in place (see dedupInto), noting where the kept
	// network rules end.
	d := newDeduper(all[:0], len(all))
	for _, r := range all[:len(in.Network)] {
		d.add(r)
	}
	kept := len(d.out)
	for _, r := range all[len(in.Network):] {
		d.add(r)
	}
	all = d.out
	src := &baseSource{tail: slices.Clone(all[kept:])}

	p := &Policy{
		Generation: in.Generation,
		Denies:     []Denied{},
		InspectAll: in.Settings.InspectAll,
	}
	for _, r := range all {
		if r.Action == Deny {
			p.Denies = append(p.Denies, Denied{Pattern: r.Dst, Prefix: rulePrefix(r), Rule: r})
		}
	}
	denies := newDenyIndex(p.Denies)

	// Step 3: drop allows inside a deny; group the rest by pattern.
	g := newGroups(all)
	for k, r := range all {
		if r.Action != Allow {
			continue
		}
		if d, ok := denies.covering(r); ok {
			p.Overridden = append(p.Overridden, Override{Allow: r, Deny: d.Rule})
			if k < kept {
				src.overridden++
			}
			continue
		}
		g.add(k)
	}
	g.pack()

	// Steps 4-6. Every entry's Rules are its own rules, then those of its
	// enclosing allows, nearest first; they share one array (clipped, so
	// that an append copies).
	order := g.sorted()
	n := 0
	for _, i := range order {
		n += len(g.own(i))
		g.enclosing(i, func(j int) { n += len(g.own(j)) })
	}
	arena := make([]EgressRule, 0, n)
	ports := make([]PortRange, 0, n) // an entry has at most a port range per rule
	p.Allows = make([]Allowed, 0, len(order))
	for _, i := range order {
		start := len(arena)
		arena = append(arena, g.own(i)...)
		g.enclosing(i, func(j int) { arena = append(arena, g.own(j)...) })
		rules := arena[start:len(arena):len(arena)]
		pstart := len(ports)
		ports = appendPorts(ports, rules)
		a := Allowed{Pattern: g.patterns[i], Prefix: g.prefixes[i], Rules: rules, Ports: ports[pstart:len(ports):len(ports)]}
		a.Paths, a.PathDefault, a.Inspect = mergeHTTP(rules)
		a.Identity = alloc.Identity(a.Pattern)
		p.Allows = append(p.Allows, a)
	}
	p.index()
	return p, src, nil
}

// normalizeAll normalizes the rules of srcs in order (step 1 of Compile),
// keeping each rule's provenance; a rule that does not validate fails the
// whole.
func normalizeAll(srcs ...[]EgressRule) ([]EgressRule, error) {
	n := 0
	for _, src := range srcs {
		n += len(src)
	}
	all := make([]EgressRule, 0, n)
	for _, src := range srcs {
		for _, r := range src {
			n, err := Normalize(r)
			if err != nil {
				return nil, fmt.Errorf("compile rule %s %q: %w", r.Source.Key, r.Source.Item, err)
			}
			n.Source = r.Source
			all = append(all, n)
		}
	}
	return all, nil
}

// groups collects allow rules by pattern (Compile's steps 3-4), in the
// order their patterns first appear, and finds a pattern's enclosing
// patterns by lookups: a wildcard by its apex, a CIDR by its prefix.
type groups struct {
	patterns []string
	prefixes []netip.Prefix
	byDst    map[string]int
	wild     map[string]int       // wildcard ".d" by d
	cidr     map[netip.Prefix]int // CIDR by prefix (its pattern is the prefix's canonical form)
	src      []EgressRule         // the rules added are src[k] for k in added
	added    []int
	of       []int        // each added rule's group
	rules    []EgressRule // after pack: the rules, grouped
	bounds   []int        // after pack: group i's rules are rules[bounds[i]:bounds[i+1]]
}

func newGroups(src []EgressRule) *groups {
	return &groups{byDst: make(map[string]int, len(src)), wild: map[string]int{}, cidr: map[netip.Prefix]int{},
		patterns: make([]string, 0, len(src)), prefixes: make([]netip.Prefix, 0, len(src)),
		src: src, added: make([]int, 0, len(src)), of: make([]int, 0, len(src))}
}

// add adds rule src[k].
func (g *groups) add(k int) {
	r := &g.src[k]
	i, ok := g.byDst[r.Dst]
	if !ok {
		i = len(g.patterns)
		pre := rulePrefix(*r)
		g.byDst[r.Dst] = i
		g.patterns = append(g.patterns, r.Dst)
		g.prefixes = append(g.prefixes, pre)
		if pre.IsValid() {
			g.cidr[pre] = i
		} else if apex, wildcard := strings.CutPrefix(r.Dst, "."); wildcard {
			g.wild[apex] = i
		}
	}
	g.added = append(g.added, k)
	g.of = append(g.of, i)
}

// pack orders the rules by group, keeping rule order within each.
func (g *groups) pack() {
	g.bounds = make([]int, len(g.patterns)+1)
	for _, i := range g.of {
		g.bounds[i+1]++
	}
	for i := range g.patterns {
		g.bounds[i+1] += g.bounds[i]
	}
	next := slices.Clone(g.bounds[:len(g.patterns)])
	g.rules = make([]EgressRule, len(g.added))
	for n, i := range g.of {
		g.rules[next[i]] = g.src[g.added[n]]
		next[i]++
	}
	g.src, g.added, g.of = nil, nil, nil
}

// own returns group i's rules (clipped: an append copies).
func (g *groups) own(i int) []EgressRule {
	return g.rules[g.bounds[i]:g.bounds[i+1]:g.bounds[i+1]]
}

// enclosing calls f with every group whose pattern encloses group i's
// pattern, nearest first: the patterns enclosing lists, among those that
// exist.
func (g *groups) enclosing(i int, f func(int)) {
	pat, prefix := g.patterns[i], g.prefixes[i]
	if prefix.IsValid() {
		for bits := prefix.Bits() - 1; bits >= 0; bits-- {
			if j, ok := g.cidr[netip.PrefixFrom(prefix.Addr(), bits).Masked()]; ok {
				f(j)
			}
		}
		return
	}
	base, wildcard := strings.CutPrefix(pat, ".")
	if !wildcard {
		if j, ok := g.wild[base]; ok {
			f(j)
		}
	}
	for k := 0; k < len(base); k++ {
		if base[k] == '.' {
			if j, ok := g.wild[base[k+1:]]; ok {
				f(j)
			}
		}
	}
}

// sorted returns the groups most specific first (step 6 of Compile, the
// order of compareSpecificity).
func (g *groups) sorted() []int {
	// A 24-byte key (class and rank in one number: ranks are label
	// counts and prefix lengths, far below 1<<15) moves fast in the sort.
	type key struct {
		rank int32
		i    int32
		pat  string
	}
	keys := make([]key, len(g.patterns))
	for i, pat := range g.patterns {
		class, rank := patternClass(pat), 0
		switch class {
		case 1:
			rank = -strings.Count(pat, ".")
		case 2:
			pre, _ := netip.ParsePrefix(pat)
			rank = -pre.Bits()
		}
		keys[i] = key{rank: int32(class<<16 + rank + 1<<15), i: int32(i), pat: pat}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		return strings.Compare(a.pat, b.pat)
	})
	out := make([]int, len(keys))
	for i, k := range keys {
		out[i] = int(k.i)
	}
	return out
}

// denyIndex finds the first deny covering an allow (coveringDeny) by
// lookups: a name's denies by the name and each of its parent domains, a
// CIDR's among the CIDR denies only.
type denyIndex struct {
	denies []Denied
	names  map[string]int // a name deny's root (pattern without its dot) -> first such deny
	cidrs  []int
}

func newDenyIndex(denies []Denied) *denyIndex {
	x := &denyIndex{denies: denies, names: make(map[string]int, len(denies))}
	for i, d := range denies {
		if d.Prefix.IsValid() {
			x.cidrs = append(x.cidrs, i)
			continue
		}
		root := strings.TrimPrefix(d.Pattern, ".")
		if _, ok := x.names[root]; !ok {
			x.names[root] = i
		}
	}
	return x
}

// covering returns what coveringDeny(x.denies, r) returns. A name deny
// covers name n (subtree) when its root is n, or n ends in "." and the
// root: the root is n or a suffix of n after one of its dots.
func (x *denyIndex) covering(r EgressRule) (Denied, bool) {
	if ap := rulePrefix(r); ap.IsValid() {
		for _, i := range x.cidrs {
			if d := x.denies[i]; d.Prefix.Bits() <= ap.Bits() && d.Prefix.Contains(ap.Addr()) {
				return d, true
			}
		}
		return Denied{}, false
	}
	if len(x.names) == 0 {
		return Denied{}, false
	}
	name := strings.TrimPrefix(r.Dst, ".")
	first, ok := x.names[name]
	if !ok {
		first = -1
	}
	for k := 0; k < len(name); k++ {
		if name[k] != '.' {
			continue
		}
		if i, ok := x.names[name[k+1:]]; ok && (first < 0 || i < first) {
			first = i
		}
	}
	if first < 0 {
		return Denied{}, false
	}
	return x.denies[first], true
}

// rulePrefix returns the prefix of an IP/CIDR rule (invalid for names).
func rulePrefix(r EgressRule) netip.Prefix {
	// Without a "/" ParsePrefix fails (and allocates its error): every
	// normalized IP or CIDR destination has one.
	if strings.HasPrefix(r.Dst, ".") || !strings.Contains(r.Dst, "/") {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(r.Dst)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// coveringDeny returns the first deny whose subtree or CIDR holds the whole
// of allow r.
func coveringDeny(denies []Denied, r EgressRule) (Denied, bool) {
	ap := rulePrefix(r)
	for _, d := range denies {
		switch {
		case ap.IsValid() && d.Prefix.IsValid():
			if d.Prefix.Bits() <= ap.Bits() && d.Prefix.Contains(ap.Addr()) {
				return d, true
			}
		case !ap.IsValid() && !d.Prefix.IsValid():
			if subtree(d.Pattern, strings.TrimPrefix(r.Dst, ".")) {
				return d, true
			}
		}
	}
	return Denied{}, false
}

// enclosing returns every pattern that may enclose allow pattern pat,
// nearest first: for a name, the wildcards of its apex (exact names only)
// and of every parent domain (".x.example.com" is enclosed by
// ".example.com" and ".com"); for a CIDR, every shorter prefix holding it.
// An exact name encloses nothing but itself. Callers look the candidates up
// among the patterns that exist, so the cost is per label or per prefix bit,
// not per pattern.
func enclosing(pat string, prefix netip.Prefix) []string {
	var out []string
	if prefix.IsValid() {
		for bits := prefix.Bits() - 1; bits >= 0; bits-- {
			out = append(out, netip.PrefixFrom(prefix.Addr(), bits).Masked().String())
		}
		return out
	}
	base, wildcard := strings.CutPrefix(pat, ".")
	if !wildcard {
		out = append(out, "."+base)
	}
	for i := 0; i < len(base); i++ {
		if base[i] == '.' {
			out = append(out, base[i:])
		}
	}
	return out
}

// patternClass orders the kinds of patterns: exact names, wildcards, CIDRs.
func patternClass(p string) int {
	switch {
	case strings.HasPrefix(p, "."):
		return 1
	case strings.Contains(p, "/"):
		return 2
	}
	return 0
}

// compareSpecificity sorts patterns most specific first (step 6 of Compile).
func compareSpecificity(a, b string) int {
	ca, cb := patternClass(a), patternClass(b)
	if ca != cb {
		return cmp.Compare(ca, cb)
	}
	switch ca {
	case 1:
		if c := cmp.Compare(strings.Count(b, "."), strings.Count(a, ".")); c != 0 {
			return c
		}
	case 2:
		pa, _ := netip.ParsePrefix(a)
		pb, _ := netip.ParsePrefix(b)
		if c := cmp.Compare(pb.Bits(), pa.Bits()); c != 0 {
			return c
		}
	}
	return strings.Compare(a, b)
}

var protoRank = map[Proto]int{ProtoHTTPS: 0, ProtoHTTP: 1, ProtoSSH: 2, ProtoTCP: 3, ProtoUDP: 4}

// mergePorts collects the distinct port ranges of rules, sorted by port, then
// protocol.
func mergePorts(rules []EgressRule) []PortRange { return appendPorts(nil, rules) }

// appendPorts appends to dst what mergePorts returns for rules.
func appendPorts(dst []PortRange, rules []EgressRule) []PortRange {
	start := len(dst)
	for _, r := range rules {
		pr := PortRange{Proto: r.Proto, Lo: r.Port, Hi: max(r.PortEnd, r.Port)}
		if !slices.Contains(dst[start:], pr) {
			dst = append(dst, pr)
		}
	}
	slices.SortFunc(dst[start:], func(a, b PortRange) int {
		return cmp.Or(cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi), cmp.Compare(protoRank[a.Proto], protoRank[b.Proto]))
	})
	return dst
}

// mergeHTTP merges the HTTP rules of rules (step 5 of Compile). It returns
// no paths and an empty default when every path is allowed.
func mergeHTTP(rules []EgressRule) (paths []PathRule, def Action, inspect bool) {
	var denies, allows []PathRule
	web, defAllow := false, false
	for _, r := range rules {
		if !isWeb(r.Proto) {
			continue
		}
		web = true
		inspect = inspect || r.Inspect
		if len(r.Paths) == 0 || r.PathDefault == Allow {
			defAllow = true
		}
		for _, pr := range r.Paths {
			if pr.Action == Deny {
				denies = appendPath(denies, pr)
			} else {
				allows = appendPath(allows, pr)
			}
		}
	}
	if !web {
		return nil, "", inspect
	}
	paths = denies
	def = Allow
	if !defAllow {
		// Allow path rules matter only in front of a deny default.
		paths = append(paths, allows...)
		def = Deny
	}
	if len(paths) == 0 {
		return nil, "", inspect
	}
	return paths, def, true
}

func appendPath(list []PathRule, pr PathRule) []PathRule {
	for _, x := range list {
		if x.Path == pr.Path && x.Action == pr.Action && slices.Equal(x.Methods, pr.Methods) {
			return list
		}
	}
	return append(list, pr)
}
