package policy

import (
	"iter"
	"net/netip"
	"slices"
	"strings"
)

// BaseIndex is a network's compiled base policy (Compile of its option and
// runtime rules) indexed for Layer: built once per base, shared by every
// endpoint layered on it.
type BaseIndex struct {
	pol *Policy
	// byPattern maps an allow pattern to its entry in pol.Allows.
	byPattern map[string]int
	// extra holds the base's rules that no entry lists as its own (denies,
	// then overridden allows) by destination: with the entries' own rules,
	// every rule of the base, so a label rule that repeats one is dropped
	// as Compile's Dedup drops it (repeats).
	extra map[string][]*EgressRule
	// denies finds the base's first deny covering a label allow.
	denies *denyIndex
	// serial and memo serve Layered.Rebase.
	serial uint64
	memo   deniesMemo
	// under lists, per domain d, the name entries a wildcard ".d" may
	// enclose (d itself, and every name or wildcard below d); cidrs lists
	// the CIDR entries.
	under map[string][]int
	cidrs []int
	// src is set by CompileBase and Patch, for Patch.
	src *baseSource
}

// NewBaseIndex indexes base for Layer.
func NewBaseIndex(base *Policy) *BaseIndex {
	b := &BaseIndex{pol: base, byPattern: make(map[string]int, len(base.Allows)), extra: map[string][]*EgressRule{},
		under: make(map[string][]int, len(base.Allows)), denies: newDenyIndex(base.Denies), serial: baseSerial.Add(1)}
	add := func(r *EgressRule) { b.extra[r.Dst] = append(b.extra[r.Dst], r) }
	for i := range base.Allows {
		a := &base.Allows[i]
		b.byPattern[a.Pattern] = i
		if a.Prefix.IsValid() {
			b.cidrs = append(b.cidrs, i)
		} else {
			if !strings.HasPrefix(a.Pattern, ".") {
				b.under[a.Pattern] = append(b.under[a.Pattern], i)
			}
			for j := 1; j < len(a.Pattern); j++ {
				if a.Pattern[j-1] == '.' {
					b.under[a.Pattern[j:]] = append(b.under[a.Pattern[j:]], i)
				}
			}
		}
	}
	for i := range base.Denies {
		add(&base.Denies[i].Rule)
	}
	for i := range base.Overridden {
		add(&base.Overridden[i].Allow)
	}
	return b
}

// Policy returns the indexed base.
func (b *BaseIndex) Policy() *Policy { return b.pol }

// ownRules returns the entry's own rules (Compile lists them first, before
// those of the allows that enclose it).
func ownRules(a *Allowed) []EgressRule {
	n := 0
	for n < len(a.Rules) && a.Rules[n].Dst == a.Pattern {
		n++
	}
	return a.Rules[:n]
}

func (b *BaseIndex) own(pattern string) []EgressRule {
	if i, ok := b.byPattern[pattern]; ok {
		return ownRules(&b.pol.Allows[i])
	}
	return nil
}

// repeats reports whether r repeats a rule of the base (the same key and
// body: Dedup would drop it).
func (b *BaseIndex) repeats(r EgressRule) bool {
	k := r.Key()
	own := b.own(r.Dst)
	for i := range own {
		if own[i].Key() == k && sameBody(own[i], r) {
			return true
		}
	}
	for _, x := range b.extra[r.Dst] {
		if x.Key() == k && sameBody(*x, r) {
			return true
		}
	}
	return false
}

// Layer compiles one endpoint's label rules over its network's base into a
// layered Policy (Base set) that decides every destination exactly as
// Compile of the network's, runtime and label rules together would: the
// same verdict, and the same entry (identity, ports, paths, inspect,
// rules). It costs what the labels touch, not what the base holds, so a
// network's thousands of rules are compiled once however many labelled
// endpoints it has.
//
// The own layer holds the label denies and, compiled as Compile compiles
// them over the rules of both layers, every pattern whose merged entry
// differs from the base's: each label allow's pattern, and each base
// pattern that a label allow encloses (it gains that allow's ports and
// HTTP rules). Every other base entry is the merged entry unchanged, or is
// cancelled by a label deny (which MatchName and MatchIP check first, and
// which Allows skips). A destination's most specific covering allow is
// therefore in the own layer whenever any label allow covers it, so the
// layered match (see layered) takes it from there, and otherwise from the
// base.
func Layer(base *BaseIndex, label []EgressRule, gen uint64, alloc Allocator) (*Policy, error) {
	return layer(base, label, gen, alloc, nil)
}

// layer is Layer, noting in reads (when not nil) every part of base it
// reads.
func layer(base *BaseIndex, label []EgressRule, gen uint64, alloc Allocator, reads *baseReads) (*Policy, error) {
	rules, err := normalizeAll(label)
	if err != nil {
		return nil, err
	}
	if reads != nil {
		for _, r := range rules {
			reads.dst(r.Dst)
		}
	}
	rules = slices.DeleteFunc(rules, base.repeats)
	rules = Dedup(rules)

	bp := base.pol
	p := &Policy{Generation: gen, Allows: []Allowed{}, Denies: []Denied{}, InspectAll: bp.InspectAll, Base: bp}
	for _, r := range rules {
		if r.Action == Deny {
			p.Denies = append(p.Denies, Denied{Pattern: r.Dst, Prefix: rulePrefix(r), Rule: r})
		}
	}
	// Label allows outside every deny, by pattern (Compile's step 3; the
	// base's denies first, as Compile lists them).
	var patterns []string
	own := map[string][]EgressRule{}
	for _, r := range rules {
		if r.Action != Allow {
			continue
		}
		d, ok := base.denies.covering(r)
		if !ok {
			d, ok = coveringDeny(p.Denies, r)
		}
		if ok {
			p.Overridden = append(p.Overridden, Override{Allow: r, Deny: d.Rule})
			continue
		}
		if _, ok := own[r.Dst]; !ok {
			patterns = append(patterns, r.Dst)
		}
		own[r.Dst] = append(own[r.Dst], r)
	}
	// Base patterns a label allow encloses, unless a label deny cancels them.
	seen := map[string]bool{}
	for _, pat := range patterns {
		seen[pat] = true
	}
	for _, outer := range slices.Clone(patterns) {
		enclosed := base.enclosed(outer, own[outer][0])
		if reads != nil {
			reads.list(outer, own[outer][0])
		}
		for _, i := range enclosed {
			a := &bp.Allows[i]
			if reads != nil {
				reads.dst(a.Pattern)
			}
			if seen[a.Pattern] || !encloses(outer, own[outer][0], a) {
				continue
			}
			if _, ok := coveringDeny(p.Denies, ownRules(a)[0]); ok {
				continue
			}
			seen[a.Pattern] = true
			patterns = append(patterns, a.Pattern)
		}
	}
	slices.SortFunc(patterns, compareSpecificity)
	for _, pat := range patterns {
		var pre netip.Prefix
		mine := slices.Clone(base.own(pat))
		mine = append(mine, own[pat]...)
		pre = rulePrefix(mine[0])
		if reads != nil {
			reads.dst(pat)
		}
		for _, outer := range enclosing(pat, pre) {
			if reads != nil {
				reads.dst(outer)
			}
			mine = append(mine, base.own(outer)...)
			mine = append(mine, own[outer]...)
		}
		a := Allowed{Pattern: pat, Prefix: pre, Rules: mine, Ports: mergePorts(mine), Identity: alloc.Identity(pat)}
		a.Paths, a.PathDefault, a.Inspect = mergeHTTP(mine)
		p.Allows = append(p.Allows, a)
	}
	p.index()
	return p, nil
}

// enclosed returns the base entries that allow pattern outer (whose
// first rule is r) may enclose: a superset of those encloses accepts.
func (b *BaseIndex) enclosed(outer string, r EgressRule) []int {
	if rulePrefix(r).IsValid() {
		return b.cidrs
	}
	if apex, ok := strings.CutPrefix(outer, "."); ok {
		return b.under[apex]
	}
	return nil
}

// encloses reports whether allow pattern outer (whose first rule is r)
// strictly encloses entry a's pattern, as enclosing lists it: a CIDR
// every narrower CIDR inside it, a wildcard ".x" the name x and every
// name or wildcard below x.
func encloses(outer string, r EgressRule, a *Allowed) bool {
	if outer == a.Pattern {
		return false
	}
	if op := rulePrefix(r); op.IsValid() {
		return a.Prefix.IsValid() && op.Bits() < a.Prefix.Bits() && op.Contains(a.Prefix.Addr())
	}
	apex, wildcard := strings.CutPrefix(outer, ".")
	if !wildcard || a.Prefix.IsValid() {
		return false
	}
	return a.Pattern == apex || strings.HasSuffix(a.Pattern, "."+apex)
}

// Entries yields the allows of p's merged policy, most specific first, as
// Compile's Allows would hold them: for a layered policy its own entries
// and those of its base that neither an own entry restates nor an own deny
// cancels. Consumers that build from every allow (routes, listeners, xDS)
// iterate this, never Allows.
func (p *Policy) Entries() iter.Seq[*Allowed] {
	return func(yield func(*Allowed) bool) {
		if p == nil {
			return
		}
		if p.Base == nil {
			for i := range p.Allows {
				if !yield(&p.Allows[i]) {
					return
				}
			}
			return
		}
		mine := make(map[string]bool, len(p.Allows))
		for i := range p.Allows {
			mine[p.Allows[i].Pattern] = true
		}
		var base []*Allowed
		for a := range p.Base.Entries() {
			if mine[a.Pattern] {
				continue
			}
			if _, ok := coveringDeny(p.Denies, ownRules(a)[0]); ok {
				continue
			}
			base = append(base, a)
		}
		i, j := 0, 0
		for i < len(p.Allows) || j < len(base) {
			var a *Allowed
			if j == len(base) || (i < len(p.Allows) && compareSpecificity(p.Allows[i].Pattern, base[j].Pattern) < 0) {
				a, i = &p.Allows[i], i+1
			} else {
				a, j = base[j], j+1
			}
			if !yield(a) {
				return
			}
		}
	}
}

// Layers returns the policy's own layer alone (without Base), what the DNS
// sidecar's file carries per endpoint next to its network's base.
func (p *Policy) Layers() (base, own *Policy) {
	if p == nil || p.Base == nil {
		return nil, p
	}
	o := p.own()
	o.Overridden = p.Overridden
	return p.Base, o
}

// DenyEntries yields every deny of p's merged policy: a layered policy's
// base denies, then its own.
func (p *Policy) DenyEntries() iter.Seq[*Denied] {
	return func(yield func(*Denied) bool) {
		if p == nil {
			return
		}
		if p.Base != nil {
			for d := range p.Base.DenyEntries() {
				if !yield(d) {
					return
				}
			}
		}
		for i := range p.Denies {
			if !yield(&p.Denies[i]) {
				return
			}
		}
	}
}
