package policy

import (
	"maps"
	"slices"
)

// Clone returns a deep copy of r: nothing mutable (its path rules and their
// methods) is shared with r. Nil and empty slices stay nil and empty, so
// the copy encodes exactly as r does.
func (r EgressRule) Clone() EgressRule {
	if r.Paths != nil {
		paths := make([]PathRule, len(r.Paths))
		for i, p := range r.Paths {
			p.Methods = slices.Clone(p.Methods)
			paths[i] = p
		}
		r.Paths = paths
	}
	return r
}

// CloneRules returns a deep copy of rules (nil stays nil).
func CloneRules(rules []EgressRule) []EgressRule {
	out := slices.Clone(rules)
	for i := range out {
		if out[i].Paths != nil {
			out[i] = out[i].Clone()
		}
	}
	return out
}

// Clone returns a deep copy of c.
func (c NetworkConfig) Clone() NetworkConfig {
	c.Rules = CloneRules(c.Rules)
	c.Settings.DNSUpstreams = slices.Clone(c.Settings.DNSUpstreams)
	return c
}

// Clone returns an independent copy of t: identities allocated in one are
// not seen by the other.
func (t *IdentityTable) Clone() *IdentityTable {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return &IdentityTable{ids: maps.Clone(t.ids), next: t.next, body: slices.Clone(t.body)}
}

// Equal reports whether r and o are the same rule: every field, the path
// rules and their methods in order (a nil and an empty list are equal:
// they mean, encode and compile the same). It is what reflect.DeepEqual
// would say at a fraction of the cost (the plugin compares a network's
// thousands of rules on every mutation); TestRuleEqualFields fails when a
// field is added to the rule types and not compared here.
func (r EgressRule) Equal(o EgressRule) bool {
	if r.Dst != o.Dst || r.Proto != o.Proto || r.Port != o.Port || r.PortEnd != o.PortEnd || r.Action != o.Action ||
		r.PathDefault != o.PathDefault || r.Inspect != o.Inspect || r.Source != o.Source || len(r.Paths) != len(o.Paths) {
		return false
	}
	for i := range r.Paths {
		a, b := &r.Paths[i], &o.Paths[i]
		if a.Path != b.Path || a.Action != b.Action || !slices.Equal(a.Methods, b.Methods) {
			return false
		}
	}
	return true
}

// EqualRules reports whether a and b hold equal rules in the same order.
func EqualRules(a, b []EgressRule) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) > 0 && &a[0] == &b[0] {
		return true // the same rules (a cached network's, compared on every commit)
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// Equal reports whether s and o are the same settings.
func (s NetworkSettings) Equal(o NetworkSettings) bool {
	return s.InspectAll == o.InspectAll && s.ICC == o.ICC && slices.Equal(s.DNSUpstreams, o.DNSUpstreams)
}

// Equal reports whether c and o are the same configuration.
func (c NetworkConfig) Equal(o NetworkConfig) bool {
	return c.Settings.Equal(o.Settings) && EqualRules(c.Rules, o.Rules)
}
