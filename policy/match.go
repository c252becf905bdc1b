package policy

import (
	"net/netip"
	"strings"
	"time"
)

// Covers reports whether pattern (an exact name or a ".wildcard") matches the
// normalized name. An exact pattern matches only itself; ".example.com"
// matches "example.com" and every name below it.
func Covers(pattern, name string) bool {
	if strings.HasPrefix(pattern, ".") {
		apex := pattern[1:]
		return name == apex || strings.HasSuffix(name, pattern)
	}
	return name == pattern
}

// subtree reports whether name lies in the subtree rooted at a deny pattern:
// a deny of "example.com" or ".example.com" covers the apex and every name
// below it.
func subtree(pattern, name string) bool {
	root := strings.TrimPrefix(pattern, ".")
	if len(name) <= len(root) {
		return name == root
	}
	return name[len(name)-len(root)-1] == '.' && strings.HasSuffix(name, root)
}

// trimName lower-cases name and drops one trailing dot; it is the cheap part
// of normalization that lookups on the hot path need.
func trimName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// MatchName decides a host name for this policy. port 0 means "any port"
// (DNS does not know which port will be used); otherwise the matched entry
// must route (port, l4).
//
// Decision order:
//  1. a nil policy denies (pending endpoints are the caller's business);
//  2. AllowAll (bypass) allows;
//  3. a deny whose subtree holds the name denies, on every port;
//  4. the most specific allow whose pattern covers the name is the entry;
//     none denies with ReasonNoRule;
//  5. a non-zero port outside the entry's ports denies with
//     ReasonPortNotAllow.
func (p *Policy) MatchName(name string, port uint16, l4 L4) Match {
	if p == nil {
		return Match{Reason: ReasonPending}
	}
	if p.AllowAll {
		return Match{Allowed: true, Reason: ReasonBypass}
	}
	name = trimName(name)
	if p.Base != nil {
		return p.layered(p.Base.MatchName(name, port, l4), p.matchName(name, port, l4))
	}
	return p.matchName(name, port, l4)
}

// matchName is MatchName on p's own allows and denies (steps 3-5). A
// policy whose constructor indexed it finds them in its name index
// (nameIndex), which answers what the scan of its denies and allows
// would; a policy without one, or whose entries are no longer those the
// index was built from, is scanned.
func (p *Policy) matchName(name string, port uint16, l4 L4) Match {
	if ix := p.names; ix != nil {
		if m, ok := ix.match(p, name, port, l4); ok {
			return m
		}
	}
	for i := range p.Denies {
		d := &p.Denies[i]
		if d.Prefix.IsValid() {
			continue
		}
		if subtree(d.Pattern, name) {
			return Match{Reason: ReasonDenyRule, Deny: d}
		}
	}
	for i := range p.Allows {
		a := &p.Allows[i]
		if a.Prefix.IsValid() || !Covers(a.Pattern, name) {
			continue
		}
		return p.checkPort(a, port, l4)
	}
	return Match{Reason: ReasonNoRule}
}

// MatchIP decides an IP destination (IP-literal rules and CIDRs only; learned
// DNS identities are decided in the kernel, from the routes map).
func (p *Policy) MatchIP(addr netip.Addr, port uint16, l4 L4) Match {
	if p == nil {
		return Match{Reason: ReasonPending}
	}
	if p.AllowAll {
		return Match{Allowed: true, Reason: ReasonBypass}
	}
	addr = addr.Unmap()
	if p.Base != nil {
		return p.layered(p.Base.MatchIP(addr, port, l4), p.matchIP(addr, port, l4))
	}
	return p.matchIP(addr, port, l4)
}

// matchIP is MatchIP on p's own allows and denies.
func (p *Policy) matchIP(addr netip.Addr, port uint16, l4 L4) Match {
	for i := range p.Denies {
		d := &p.Denies[i]
		if d.Prefix.IsValid() && d.Prefix.Contains(addr) {
			return Match{Reason: ReasonDenyRule, Deny: d}
		}
	}
	for i := range p.Allows {
		a := &p.Allows[i]
		if a.Prefix.IsValid() && a.Prefix.Contains(addr) {
			return p.checkPort(a, port, l4)
		}
	}
	return Match{Reason: ReasonNoRule}
}

func (p *Policy) checkPort(a *Allowed, port uint16, l4 L4) Match {
	if port == 0 {
		return Match{Allowed: true, Reason: ReasonAllowed, Entry: a}
	}
	for _, r := range a.Ports {
		if r.Contains(port, l4) {
			return Match{Allowed: true, Reason: ReasonAllowed, Entry: a}
		}
	}
	return Match{Reason: ReasonPortNotAllow, Entry: a}
}

// ProtoFor returns the protocol of the entry's port range that holds
// (port, l4), and false when none does.
func (a *Allowed) ProtoFor(port uint16, l4 L4) (Proto, bool) {
	for _, r := range a.Ports {
		if r.Contains(port, l4) {
			return r.Proto, true
		}
	}
	return "", false
}

// Index builds the snapshot's source-address index. Call it after building
// a Snapshot (or decoding one from JSON) and before sharing it; the index is
// built once, so a snapshot shared without it still indexes itself safely
// on its first lookup.
func (s *Snapshot) Index() *Snapshot {
	s.indexOnce.Do(func() {
		s.byIP = make(map[netip.Addr]*Endpoint, len(s.Endpoints))
		for _, ep := range s.Endpoints {
			if ep.IP.IsValid() {
				s.byIP[ep.IP.Unmap()] = ep
			}
		}
	})
	return s
}

// EndpointByIP returns the endpoint that owns source address ip. This is
// sound only because the closed network anti-spoofs every endpoint's veth.
func (s *Snapshot) EndpointByIP(ip netip.Addr) (*Endpoint, bool) {
	if s == nil {
		return nil, false
	}
	ep, ok := s.Index().byIP[ip.Unmap()]
	return ep, ok
}

// Effective returns the policy the data planes must apply for ep at time now:
// allow-all while bypassed (in learn mode marked Learn), nil while pending,
// and a policy with no allows when the container's labels were invalid.
// It is Who's policy (see Who for the order).
func (ep *Endpoint) Effective(now time.Time) *Policy { return ep.Who(now).Policy }

// DeniedAddr returns the IP/CIDR deny that covers addr, or nil. A name
// allow never reaches an address a deny covers: DNS answers in a denied
// range are not learned (so the hooks refuse them) and the proxy does not
// dial them.
func (p *Policy) DeniedAddr(addr netip.Addr) *Denied {
	if p == nil || p.AllowAll {
		return nil
	}
	addr = addr.Unmap()
	if p.Base != nil {
		if d := p.Base.DeniedAddr(addr); d != nil {
			return d
		}
	}
	for i := range p.Denies {
		if d := &p.Denies[i]; d.Prefix.IsValid() && d.Prefix.Contains(addr) {
			return d
		}
	}
	return nil
}

// own is a layered policy's own layer alone.
func (p *Policy) own() *Policy {
	return &Policy{Generation: p.Generation, Allows: p.Allows, Denies: p.Denies, InspectAll: p.InspectAll, names: p.names}
}

// layered combines the answers of a layered policy's base (network) and
// own (label) layers into the merged policy's answer. Compile drops an
// allow inside any deny and gives a destination the most specific allow
// that covers it, with the ports of every allow that covers it. The
// allows that cover one name (or address) are nested, so:
//  1. a deny of either layer that covers the destination denies, the
//     base's first (Compile lists network denies before label denies);
//  2. otherwise no allow covering it was dropped by a deny (the deny's
//     subtree would hold the destination), so the entry is the more
//     specific of the two layers' entries, the own layer's on a tie (the
//     identity is the pattern's either way);
//  3. its ports are the union of both layers' covering allows: the port is
//     allowed when either layer allows it.
func (p *Policy) layered(base, own Match) Match {
	switch {
	case base.Reason == ReasonDenyRule:
		return base
	case own.Reason == ReasonDenyRule:
		return own
	case base.Entry == nil:
		return own
	case own.Entry == nil:
		return base
	}
	best := own
	if compareSpecificity(base.Entry.Pattern, own.Entry.Pattern) < 0 {
		best = base
	}
	if !best.Allowed && (base.Allowed || own.Allowed) {
		best.Allowed, best.Reason = true, ReasonAllowed
	}
	return best
}
