package policy

import (
	"errors"
	"slices"
	"sort"
)

// baseSource is what Patch needs to know of how a base was compiled: the
// runtime rules Compile kept (normalized, deduplicated against the network
// rules and each other, in order) and how many of the base's Overridden
// its network rules made (Compile lists those first).
type baseSource struct {
	tail       []EgressRule
	overridden int
}

// CompileBase compiles a network's base (Compile of its option and
// runtime rules and settings; in.Label must be empty) and indexes it. The
// index remembers what Patch needs to derive the base of other runtime
// rules from it.
func CompileBase(in CompileInput, alloc Allocator) (*BaseIndex, error) {
	if len(in.Label) > 0 {
		return nil, errors.New("compile base: a network's base has no label rules")
	}
	p, src, err := compile(in, alloc)
	if err != nil {
		return nil, err
	}
	b := NewBaseIndex(p)
	b.src = src
	return b, nil
}

// Patch returns, with true, what CompileBase returns for b's network
// rules and settings with runtime rules runtime instead of b's, in
// generation gen: the same Policy to the last field, identities allocated
// from alloc in the same order, and an index that answers every lookup
// the same. It returns false when it cannot derive that from b exactly;
// the caller then compiles. Nothing is allocated from alloc before every
// check passed.
//
// A runtime allow changes only the entry of its own pattern and the
// entries its pattern encloses (which list its rules after their own), so
// Patch:
//
//  1. normalizes the runtime rules and keeps those Compile keeps (a rule
//     repeating a network rule or an earlier runtime rule is dropped); a
//     rule that does not validate: false (Compile reports it);
//  2. refuses unless the runtime denies kept are b's: a deny changes what
//     every allow is checked against;
//  3. finds the patterns whose own rules changed (runtime allows outside
//     every deny, added, removed or reordered) and every entry of b they
//     enclose, and compiles those entries again as Compile's steps 4-5 do,
//     from the own rules of their pattern and of its enclosing patterns;
//  4. copies every other entry of b, merges the new ones in Compile's
//     order (step 6), drops patterns left without rules and takes every
//     identity from alloc in that order, as Compile does;
//  5. keeps the overrides of the network rules and lists after them the
//     runtime allows a deny covers.
//
// Rules are compared with EgressRule.Equal: on normalized rules (every
// empty list nil) it is reflect.DeepEqual.
//
// The new policy shares its denies and the unchanged entries' slices with
// b's: policies are never changed once built.
func (b *BaseIndex) Patch(runtime []EgressRule, gen uint64, alloc Allocator) (*BaseIndex, bool) {
	src := b.src
	if src == nil || src.overridden > len(b.pol.Overridden) {
		return nil, false
	}
	rt, err := normalizeAll(runtime)
	if err != nil {
		return nil, false
	}
	tail := b.keep(rt)
	if !slices.EqualFunc(denyRules(src.tail), denyRules(tail), EgressRule.Equal) {
		return nil, false
	}
	oldOwn, _ := b.allowsOf(src.tail)
	newOwn, overridden := b.allowsOf(tail)

	// Step 3: the own rules of every pattern they changed (the network
	// rules' first, then the runtime rules', as Compile groups them).
	own := map[string][]EgressRule{}
	for _, m := range []map[string][]EgressRule{oldOwn, newOwn} {
		for d := range m {
			if _, done := own[d]; done || slices.EqualFunc(oldOwn[d], newOwn[d], EgressRule.Equal) {
				continue
			}
			// b's entry lists the runtime allows last: what b.src says
			// (checked all the same: on any doubt, compile).
			have := b.own(d)
			n := len(have) - len(oldOwn[d])
			if n < 0 || !slices.EqualFunc(have[n:], oldOwn[d], EgressRule.Equal) {
				return nil, false
			}
			own[d] = append(slices.Clip(have[:n]), newOwn[d]...)
		}
	}
	ownOf := func(pat string) []EgressRule {
		if r, ok := own[pat]; ok {
			return r
		}
		return b.own(pat)
	}
	redo := map[string]bool{}
	for d := range own {
		redo[d] = true
		probe := EgressRule{Dst: d}
		for _, i := range b.enclosed(d, probe) {
			if a := &b.pol.Allows[i]; encloses(d, probe, a) {
				redo[a.Pattern] = true
			}
		}
	}
	fresh := make([]Allowed, 0, len(redo))
	for pat := range redo {
		mine := ownOf(pat)
		if len(mine) == 0 {
			continue
		}
		pre := rulePrefix(mine[0])
		rules := slices.Clone(mine)
		for _, outer := range enclosing(pat, pre) {
			rules = append(rules, ownOf(outer)...)
		}
		rules = slices.Clip(rules)
		a := Allowed{Pattern: pat, Prefix: pre, Rules: rules, Ports: mergePorts(rules)}
		a.Paths, a.PathDefault, a.Inspect = mergeHTTP(rules)
		fresh = append(fresh, a)
	}
	slices.SortFunc(fresh, func(x, y Allowed) int { return compareSpecificity(x.Pattern, y.Pattern) })

	// Step 4: b's entries in order, those compiled again left out, the
	// new ones each before the first entry that sorts after it.
	old := b.pol.Allows
	skip := make([]bool, len(old))
	for pat := range redo {
		if i, ok := b.byPattern[pat]; ok {
			skip[i] = true
		}
	}
	allows := make([]Allowed, 0, len(old)+len(fresh))
	k := 0
	for _, a := range fresh {
		at := k + sort.Search(len(old)-k, func(i int) bool { return compareSpecificity(old[k+i].Pattern, a.Pattern) >= 0 })
		allows = appendKept(allows, old[k:at], skip[k:at])
		allows = append(allows, a)
		k = at
	}
	allows = appendKept(allows, old[k:], skip[k:])
	for i := range allows {
		allows[i].Identity = alloc.Identity(allows[i].Pattern)
	}

	// Step 5.
	var ov []Override
	ov = append(ov, b.pol.Overridden[:src.overridden]...)
	ov = append(ov, overridden...)
	p := &Policy{Generation: gen, Allows: allows, Denies: b.pol.Denies, Overridden: ov, InspectAll: b.pol.InspectAll}
	p.index()
	nb := NewBaseIndex(p)
	nb.src = &baseSource{tail: tail, overridden: src.overridden}
	return nb, true
}

// keep returns the runtime rules rt (normalized) that Compile keeps after
// b's network rules: those repeating no network rule and no runtime rule
// kept before them. Compile keeps one rule of each key and body, so a rule
// that repeats one of b's rules (b.repeats) repeats a network rule unless
// it repeats one of b's runtime rules.
func (b *BaseIndex) keep(rt []EgressRule) []EgressRule {
	mine := map[string][]EgressRule{}
	for _, r := range b.src.tail {
		mine[r.Dst] = append(mine[r.Dst], r)
	}
	d := newDeduper(make([]EgressRule, 0, len(rt)), len(rt))
	for _, r := range rt {
		if b.repeats(r) && !slices.ContainsFunc(mine[r.Dst], func(x EgressRule) bool { return x.Key() == r.Key() && sameBody(x, r) }) {
			continue
		}
		d.add(r)
	}
	return d.out
}

// allowsOf returns the allows of rules that none of b's denies covers, by
// destination in order, and an override for each that one covers
// (Compile's step 3).
func (b *BaseIndex) allowsOf(rules []EgressRule) (map[string][]EgressRule, []Override) {
	own := map[string][]EgressRule{}
	var ov []Override
	for _, r := range rules {
		if r.Action != Allow {
			continue
		}
		if d, ok := b.denies.covering(r); ok {
			ov = append(ov, Override{Allow: r, Deny: d.Rule})
			continue
		}
		own[r.Dst] = append(own[r.Dst], r)
	}
	return own, ov
}

// denyRules returns the denies among rules.
func denyRules(rules []EgressRule) []EgressRule {
	var out []EgressRule
	for _, r := range rules {
		if r.Action == Deny {
			out = append(out, r)
		}
	}
	return out
}

// appendKept appends to dst the entries of src whose skip is false.
func appendKept(dst, src []Allowed, skip []bool) []Allowed {
	for i := range src {
		if !skip[i] {
			dst = append(dst, src[i])
		}
	}
	return dst
}
