package policy

import (
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// A Layered is a label layer (what Layer returns) together with the parts
// of its base that its compile read, so that it can be carried over to a
// later base of the same network that holds the same parts (Rebase)
// instead of being compiled again: a network rule added or removed then
// costs the layers it touches, not every labelled endpoint's.
type Layered struct {
	// Policy is the layered policy, as Layer returns it.
	Policy *Policy
	base   *BaseIndex
	reads  *baseReads
}

// baseReads lists what layer read of its base: the rules of destinations
// (BaseIndex.own and extra), the entries listed below wildcard apexes
// (BaseIndex.under) and the CIDR entries (BaseIndex.cidrs). Beyond these
// it reads only the base's denies and InspectAll, which Rebase compares
// whole.
type baseReads struct {
	dsts   []string // may repeat one (a lookup costs less than a set)
	apexes []string
	cidrs  bool
}

func (r *baseReads) dst(d string) { r.dsts = append(r.dsts, d) }

// list notes the read of the base entries that allow pattern outer (whose
// first rule is first) may enclose (BaseIndex.enclosed).
func (r *baseReads) list(outer string, first EgressRule) {
	if rulePrefix(first).IsValid() {
		r.cidrs = true
	} else if apex, ok := strings.CutPrefix(outer, "."); ok {
		r.apexes = append(r.apexes, apex)
	}
}

// LayerTracked is Layer, also noting what the layer read of base (see
// Layered).
func LayerTracked(base *BaseIndex, label []EgressRule, gen uint64, alloc Allocator) (*Layered, error) {
	reads := &baseReads{dsts: make([]string, 0, 4*len(label))}
	p, err := layer(base, label, gen, alloc, reads)
	if err != nil {
		return nil, err
	}
	return &Layered{Policy: p, base: base, reads: reads}, nil
}

// Rebase returns l's layer on base b in generation gen, and true, when
// Layer(b, the same labels, gen) would build exactly the same own layer:
// that is when every part of l's base that its compile read is the same
// in b (the rules of each destination it looked up, the entries it
// listed below a label wildcard or CIDR, every deny, InspectAll). Layer
// is a function of those parts, its labels and the identities of its
// patterns (which never change), so the result is Layer's to the last
// field; TestRebaseEqualsLayer checks that over random rule changes. It
// returns false when anything read differs: the caller compiles the layer
// again.
func (l *Layered) Rebase(b *BaseIndex, gen uint64) (*Layered, bool) {
	if l.base == b {
		return l, true
	}
	if !b.sameDeniesAs(l.base) {
		return nil, false
	}
	old := l.base
	for _, d := range l.reads.dsts {
		if !sameRules(old, b, d) {
			return nil, false
		}
	}
	for _, apex := range l.reads.apexes {
		if !sameEntries(old, old.under[apex], b, b.under[apex]) {
			return nil, false
		}
	}
	if l.reads.cidrs && !sameEntries(old, old.cidrs, b, b.cidrs) {
		return nil, false
	}
	p := *l.Policy
	p.Base, p.Generation = b.pol, gen
	return &Layered{Policy: &p, base: b, reads: l.reads}, true
}

// sameRules reports whether destination d has the same rules in a and b:
// its entry's own rules and the base's other rules by that destination
// (what own and repeats read).
func sameRules(a, b *BaseIndex, d string) bool {
	same := func(x, y *EgressRule) bool { return x == y || reflect.DeepEqual(*x, *y) }
	oa, ob := a.own(d), b.own(d)
	if len(oa) != len(ob) || !slices.EqualFunc(a.extra[d], b.extra[d], same) {
		return false
	}
	for i := range oa {
		if !same(&oa[i], &ob[i]) {
			return false
		}
	}
	return true
}

// sameEntries reports whether the entries ia of a and ib of b have the
// same patterns in the same order (their rules are compared by
// destination).
func sameEntries(a *BaseIndex, ia []int, b *BaseIndex, ib []int) bool {
	return slices.EqualFunc(ia, ib, func(i, j int) bool { return a.pol.Allows[i].Pattern == b.pol.Allows[j].Pattern })
}

// baseSerial numbers BaseIndexes, so that one can remember a comparison
// with another without keeping it alive.
var baseSerial atomic.Uint64

// deniesMemo remembers the last sameDeniesAs answer of a BaseIndex.
type deniesMemo struct {
	mu     sync.Mutex
	serial uint64 // of the base compared with; 0 for none
	same   bool
}

// sameDeniesAs reports whether b and a have the same denies (in order)
// and InspectAll. Every layer rebased from a asks, so the answer is
// remembered.
func (b *BaseIndex) sameDeniesAs(a *BaseIndex) bool {
	b.memo.mu.Lock()
	defer b.memo.mu.Unlock()
	if b.memo.serial != a.serial {
		b.memo.serial = a.serial
		b.memo.same = a.pol.InspectAll == b.pol.InspectAll && reflect.DeepEqual(a.pol.Denies, b.pol.Denies)
	}
	return b.memo.same
}
