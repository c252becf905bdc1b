package policy

import "strings"

// indexMin is the number of allows and denies from which a policy's
// constructor builds a name index for MatchName: below it the scan costs
// about what the index does and the index is not worth its memory. A
// variable so that tests can index every policy.
var indexMin = 64

// nameIndex maps each name pattern of a policy's allows and denies to the
// position of its first entry. A name n is covered by the exact allow n,
// the wildcard allow of n (".n", its apex) and the wildcard allow of
// every suffix of n after a dot; it lies in the subtree of the denies of
// the same names (a deny's root is its pattern without the leading dot).
// Allows being sorted most specific first, the lowest position among
// those present is the allow the scan finds first; so for denies.
//
// A policy's constructor builds it once (Policy.index, Policy.Indexed),
// before the policy is shared; lookups only read it. It is a function of
// the entries indexed, so two equal policies built alike hold equal
// indexes (require.Equal and reflect.DeepEqual compare it).
type nameIndex struct {
	// allows and denies are the slices indexed: the index answers only
	// for a policy that holds these very slices (the same array and
	// length, see current), so a policy whose Allows or Denies were
	// replaced, cut or appended to after it was built is scanned.
	allows []Allowed
	denies []Denied
	exact  map[string]int // exact allow -> position
	wild   map[string]int // wildcard allow's apex -> position
	deny   map[string]int // deny root -> position
}

func newNameIndex(allows []Allowed, denies []Denied) *nameIndex {
	ix := &nameIndex{allows: allows, denies: denies, exact: map[string]int{}, wild: map[string]int{}, deny: map[string]int{}}
	first := func(m map[string]int, key string, i int) {
		if _, ok := m[key]; !ok {
			m[key] = i
		}
	}
	for i, a := range allows {
		if a.Prefix.IsValid() {
			continue
		}
		if apex, ok := strings.CutPrefix(a.Pattern, "."); ok {
			first(ix.wild, apex, i)
		} else {
			first(ix.exact, a.Pattern, i)
		}
	}
	for i, d := range denies {
		if !d.Prefix.IsValid() {
			first(ix.deny, strings.TrimPrefix(d.Pattern, "."), i)
		}
	}
	return ix
}

// current reports whether ix indexes allows and denies: slices of the
// same lengths starting at the same elements.
func (ix *nameIndex) current(allows []Allowed, denies []Denied) bool {
	return len(ix.allows) == len(allows) && (len(allows) == 0 || &ix.allows[0] == &allows[0]) &&
		len(ix.denies) == len(denies) && (len(denies) == 0 || &ix.denies[0] == &denies[0])
}

// index gives p, which its constructor has just built and not yet
// shared, its name index when p has enough entries to need one.
func (p *Policy) index() {
	p.names = nil
	if len(p.Allows)+len(p.Denies) >= indexMin {
		p.names = newNameIndex(p.Allows, p.Denies)
	}
}

// Indexed returns a policy that answers as p does and looks names up in
// an index when p's own entries are many: p itself when it needs none or
// holds a current one, else a shallow copy of p (the same entries, Base
// and all) with the index built. p is never changed, so Indexed is safe on
// a policy already shared. Compile, CompileBase, Patch and Layer index what
// they build; call Indexed on a policy assembled or decoded otherwise
// (from JSON, the DNS sidecar's files, a struct literal) before deciding
// with it at scale. A layered policy's Base is indexed by whoever built
// it, not here.
func (p *Policy) Indexed() *Policy {
	if p == nil || len(p.Allows)+len(p.Denies) < indexMin || (p.names != nil && p.names.current(p.Allows, p.Denies)) {
		return p
	}
	q := *p
	q.index()
	return &q
}

// lowest returns the lowest position m holds for name itself or for a
// suffix of name after one of its dots, or -1.
func lowest(m map[string]int, name string) int {
	best := -1
	take := func(key string) {
		if i, ok := m[key]; ok && (best < 0 || i < best) {
			best = i
		}
	}
	take(name)
	for j := 0; j < len(name); j++ {
		if name[j] == '.' {
			take(name[j+1:])
		}
	}
	return best
}

// match is matchName's answer from the index; ok is false when p's
// entries are not those ix was built from (see current), or when an entry
// found does not check out, which a right index never does: the scan then
// answers.
func (ix *nameIndex) match(p *Policy, name string, port uint16, l4 L4) (m Match, ok bool) {
	if !ix.current(p.Allows, p.Denies) {
		return Match{}, false
	}
	if i := lowest(ix.deny, name); i >= 0 {
		d := &p.Denies[i]
		return Match{Reason: ReasonDenyRule, Deny: d}, subtree(d.Pattern, name)
	}
	i := lowest(ix.wild, name)
	if j, ok := ix.exact[name]; ok && (i < 0 || j < i) {
		i = j
	}
	if i < 0 {
		return Match{Reason: ReasonNoRule}, true
	}
	a := &p.Allows[i]
	return p.checkPort(a, port, l4), Covers(a.Pattern, name)
}
