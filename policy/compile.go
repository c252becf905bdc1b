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
	var all []EgressRule
	for _, src := range [][]EgressRule{in.Network, in.Runtime, in.Label} {
		for _, r := range src {
			n, err := Normalize(r)
			if err != nil {
				return nil, fmt.Errorf("compile rule %s %q: %w", r.Source.Key, r.Source.Item, err)
			}
			n.Source = r.Source
			all = append(all, n)
		}
	}
	all = Dedup(all)

	p := &Policy{
		Generation: in.Generation,
		Allows:     []Allowed{},
		Denies:     []Denied{},
		InspectAll: in.Settings.InspectAll,
	}
	for _, r := range all {
		if r.Action == Deny {
			p.Denies = append(p.Denies, Denied{Pattern: r.Dst, Prefix: rulePrefix(r), Rule: r})
		}
	}

	// Step 3: drop allows inside a deny; group the rest by pattern.
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
	prefixes := make(map[string]netip.Prefix, len(patterns))
	for _, pat := range patterns {
		prefixes[pat] = rulePrefix(own[pat][0])
	}
	for _, pat := range patterns {
		a := Allowed{Pattern: pat, Prefix: prefixes[pat]}
		rules := slices.Clone(own[pat])
		for _, outer := range enclosing(pat, prefixes[pat]) {
			rules = append(rules, own[outer]...)
		}
		a.Rules = rules
		a.Ports = mergePorts(rules)
		a.Paths, a.PathDefault, a.Inspect = mergeHTTP(rules)
		a.Identity = alloc.Identity(pat)
		p.Allows = append(p.Allows, a)
	}
	return p, nil
}

// rulePrefix returns the prefix of an IP/CIDR rule (invalid for names).
func rulePrefix(r EgressRule) netip.Prefix {
	if strings.HasPrefix(r.Dst, ".") {
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
func mergePorts(rules []EgressRule) []PortRange {
	var out []PortRange
	for _, r := range rules {
		pr := PortRange{Proto: r.Proto, Lo: r.Port, Hi: max(r.PortEnd, r.Port)}
		if !slices.Contains(out, pr) {
			out = append(out, pr)
		}
	}
	slices.SortFunc(out, func(a, b PortRange) int {
		return cmp.Or(cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi), cmp.Compare(protoRank[a.Proto], protoRank[b.Proto]))
	})
	return out
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
