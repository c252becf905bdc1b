package policy

import (
	"runtime"
	"strings"
	"sync"
	"weak"
)

// indexMin is the number of allows and denies from which MatchName looks
// a name up in an index instead of scanning them: below it the scan costs
// less than finding the index. A variable so that tests can index every
// policy.
var indexMin = 64

// nameIndex maps each name pattern of a policy's allows and denies to the
// position of its first entry. A name n is covered by the exact allow n,
// the wildcard allow of n (".n", its apex) and the wildcard allow of
// every suffix of n after a dot; it lies in the subtree of the denies of
// the same names (a deny's root is its pattern without the leading dot).
// Allows being sorted most specific first, the lowest position among
// those present is the allow the scan finds first; so for denies.
type nameIndex struct {
	allows []Allowed // the entries indexed, to notice a policy that changed
	denies []Denied
	exact  map[string]int // exact allow -> position
	wild   map[string]int // wildcard allow's apex -> position
	deny   map[string]int // deny root -> position
}

// nameIndexes holds the index of every indexed policy beside the policy
// rather than in it: policies are compared whole (require.Equal,
// reflect.DeepEqual) and copied by value, and an index built on one side
// only must not make two equal policies differ. The weak key lets a
// policy be collected; its cleanup drops the index.
var nameIndexes sync.Map // weak.Pointer[Policy] -> *nameIndex

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

// current reports whether ix indexes allows and denies (the same slices,
// not copies).
func (ix *nameIndex) current(allows []Allowed, denies []Denied) bool {
	return len(ix.allows) == len(allows) && (len(allows) == 0 || &ix.allows[0] == &allows[0]) &&
		len(ix.denies) == len(denies) && (len(denies) == 0 || &ix.denies[0] == &denies[0])
}

// names returns p's name index, building it on first use; nil when p has
// too few entries to need one.
func (p *Policy) names() *nameIndex {
	if len(p.Allows)+len(p.Denies) < indexMin {
		return nil
	}
	key := weak.Make(p)
	if v, ok := nameIndexes.Load(key); ok {
		if ix := v.(*nameIndex); ix.current(p.Allows, p.Denies) {
			return ix
		}
		ix := newNameIndex(p.Allows, p.Denies)
		nameIndexes.Store(key, ix)
		return ix
	}
	ix := newNameIndex(p.Allows, p.Denies)
	if v, loaded := nameIndexes.LoadOrStore(key, ix); loaded {
		return v.(*nameIndex)
	}
	runtime.AddCleanup(p, func(key weak.Pointer[Policy]) { nameIndexes.Delete(key) }, key)
	return ix
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

// match is matchName's answer from the index; ok is false when an entry
// found does not check out, which a right index never does (the scan
// then answers).
func (ix *nameIndex) match(p *Policy, name string, port uint16, l4 L4) (m Match, ok bool) {
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
