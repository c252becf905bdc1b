package model

// The listener model's Build as it was before it was made cheaper (main
// 868402f), kept verbatim as the reference the randomized equality test
// compares Build with (TestBuildEqualsReference) and the benchmark
// measures it against (BenchmarkBuildScale).

import (
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/clawker-fw/clawker-fw/policy"
)

func refBuild(snap *policy.Snapshot, alloc *PortAllocator, lim Limits) (*Model, error) {
	if snap == nil || alloc == nil {
		return nil, fmt.Errorf("build listener model: nil snapshot or allocator")
	}
	m := &Model{
		Generation:  snap.Generation,
		Routes:      map[uint32][]Route{},
		CIDRs:       map[uint32][]CIDR{},
		BaseRoutes:  map[string][]Route{},
		BaseCIDRs:   map[string][]CIDR{},
		Layered:     map[uint32]string{},
		Failures:    map[uint32][]Failure{},
		BaseGateway: map[string]netip.Addr{},
	}
	baseFail := map[string][]Failure{}
	listeners := map[string]Listener{
		"transparent": {Key: "transparent", Kind: KindTransparent, Port: TransparentPort, L4: policy.L4TCP},
		"ca":          {Key: "ca", Kind: KindCA, Port: CAPort, L4: policy.L4TCP},
	}
	indexes := make([]uint32, 0, len(snap.Endpoints))
	for idx := range snap.Endpoints {
		indexes = append(indexes, idx)
	}
	slices.Sort(indexes)

	// Steps 1 and 2. A network's base is expanded once, ahead of its
	// endpoints (its ranges are charged to the network's budget), for
	// every endpoint layered on it: one that shares it (no label rules)
	// or whose policy is layered over it.
	var cands []*refCandidate
	netBudget := map[string]map[string]bool{}
	budgetOf := func(net string) map[string]bool {
		if netBudget[net] == nil {
			netBudget[net] = map[string]bool{}
		}
		return netBudget[net]
	}
	expand := func(entries iter.Seq[*policy.Allowed], idx uint32, base, net string) {
		epBudget := map[string]bool{}
		for a := range entries {
			if a.Prefix.IsValid() {
				if base != "" {
					m.BaseCIDRs[base] = append(m.BaseCIDRs[base], CIDR{Prefix: a.Prefix, Identity: a.Identity})
				} else {
					m.CIDRs[idx] = append(m.CIDRs[idx], CIDR{Prefix: a.Prefix, Identity: a.Identity})
				}
			}
			for _, r := range a.Ports {
				c := &refCandidate{index: idx, base: base, allow: a, r: r}
				owner, label := refRangeOwner(a, r)
				c.rule = owner
				if a.Prefix.IsValid() {
					cands = append(cands, c) // ListenerPort 0: the closed network redirects
					continue
				}
				keys, err := refRangeKeys(a.Pattern, r)
				if err != nil {
					m.refFailC(c, baseFail, c.failure(FailInvalid, err.Error()))
					continue
				}
				c.keys = keys
				budget, limit, code, whose := budgetOf(net), lim.PerNetwork, FailNetworkLimit, "network's rules"
				if label {
					budget, limit, code, whose = epBudget, lim.PerContainer, FailContainerLimit, "container's labels"
				}
				if n := len(budget) + refCountNew(budget, keys); n > limit {
					m.refFailC(c, baseFail, c.failure(code, fmt.Sprintf("it needs %d listener ports; with it this %s would use %d, more than the %d allowed", len(keys), whose, n, limit)))
					continue
				}
				for _, k := range keys {
					budget[k] = true
				}
				cands = append(cands, c)
			}
		}
	}
	// A base is keyed by its network's gateway in the hooks' maps: a
	// gateway two networks claim (which Docker's IPAM never hands out)
	// gets no base, and its endpoints their whole policies.
	var bases []string
	byGateway := map[netip.Addr]string{}
	for _, id := range slices.Sorted(maps.Keys(snap.Networks)) {
		n := snap.Networks[id]
		if n == nil || n.Base == nil || !n.Gateway.Is4() {
			continue
		}
		if other, ok := byGateway[n.Gateway]; ok {
			delete(m.BaseGateway, other)
			continue
		}
		byGateway[n.Gateway] = id
		m.BaseGateway[id] = n.Gateway
	}
	for _, idx := range indexes {
		ep := snap.Endpoints[idx]
		if ep.Own().State != "" {
			continue // pending or bad labels: no routes (a bypass keeps them for when it ends)
		}
		n := snap.Networks[ep.NetworkID]
		if n == nil || !m.BaseGateway[n.ID].IsValid() || (ep.Policy != n.Base && ep.Policy.Base != n.Base) {
			continue
		}
		if _, ok := m.BaseRoutes[n.ID]; !ok {
			m.BaseRoutes[n.ID] = nil
			bases = append(bases, n.ID)
		}
		m.Layered[idx] = n.ID
	}
	for id := range m.BaseGateway {
		if _, ok := m.BaseRoutes[id]; !ok {
			delete(m.BaseGateway, id)
		}
	}
	slices.Sort(bases)
	for _, id := range bases {
		expand(snap.Networks[id].Base.Entries(), 0, id, id)
	}
	for _, idx := range indexes {
		ep := snap.Endpoints[idx]
		if ep.Own().State != "" {
			continue
		}
		entries := ep.Policy.Entries()
		if _, ok := m.Layered[idx]; ok {
			if ep.Policy.Base == nil {
				continue // the base's own endpoint: nothing of its own
			}
			entries = refOwnEntries(ep.Policy)
		}
		expand(entries, idx, "", ep.NetworkID)
	}

	// Step 3.
	wanted := map[string]bool{}
	for _, c := range cands {
		for _, k := range c.keys {
			wanted[k] = true
		}
	}
	alloc.refReleaseExcept(wanted)

	// Step 4: ranges whose keys all have ports, then the others.
	for _, pass := range []bool{true, false} {
		for _, c := range cands {
			// The second pass takes every refCandidate left, those whose keys
			// the first pass's candidates allocated meanwhile included
			// (two allows on one new web port share its key).
			if c.done || (pass && !alloc.refAllHave(c.keys)) {
				continue
			}
			c.done = true
			ports, fresh, err := alloc.refPortsAll(c.keys)
			if err != nil {
				m.refFailC(c, baseFail, c.failure(FailExhausted, err.Error()))
				continue
			}
			m.NewPorts += fresh
			c.ok = true
			for i := range c.keys {
				l := refListenerOf(c.keys[i], ports[i], c.allow.Pattern, c.r.Proto, c.r.Lo+uint16(i))
				listeners[l.Key] = l
			}
			c.ports = ports
		}
	}
	// Routes in policy order (most specific first) for refDedupRoutes.
	for _, c := range cands {
		if !c.ok {
			continue
		}
		for i, p := 0, int(c.r.Lo); p <= int(c.r.Hi); i, p = i+1, p+1 {
			route := Route{Identity: c.allow.Identity, Port: uint16(p), L4: c.r.Proto.L4()}
			if len(c.keys) > 0 {
				route.ListenerPort = c.ports[i]
			}
			if c.base != "" {
				m.BaseRoutes[c.base] = append(m.BaseRoutes[c.base], route)
			} else {
				m.Routes[c.index] = append(m.Routes[c.index], route)
			}
		}
	}
	for idx, rs := range m.Routes {
		m.Routes[idx] = refDedupRoutes(rs)
	}
	for id, rs := range m.BaseRoutes {
		m.BaseRoutes[id] = refDedupRoutes(rs)
	}
	// A base's failures are every endpoint's on it (status and denials
	// read them per endpoint).
	for _, idx := range indexes {
		if id, ok := m.Layered[idx]; ok && len(baseFail[id]) > 0 {
			m.Failures[idx] = append(slices.Clone(baseFail[id]), m.Failures[idx]...)
		}
	}
	for _, l := range listeners {
		m.Listeners = append(m.Listeners, l)
	}
	sort.Slice(m.Listeners, func(i, j int) bool { return m.Listeners[i].Port < m.Listeners[j].Port })
	return m, nil
}

func refOwnEntries(p *policy.Policy) iter.Seq[*policy.Allowed] {
	return func(yield func(*policy.Allowed) bool) {
		for i := range p.Allows {
			if !yield(&p.Allows[i]) {
				return
			}
		}
	}
}

type refCandidate struct {
	index uint32
	base  string // network ID when the range is its base's (index unused)
	allow *policy.Allowed
	r     policy.PortRange
	keys  []string // one per port of r; none for IP/CIDR allows
	rule  string
	done  bool
	ok    bool     // got its ports
	ports []uint16 // per key
}

func (c *refCandidate) failure(code FailReason, detail string) Failure {
	return Failure{Identity: c.allow.Identity, Pattern: c.allow.Pattern, Proto: c.r.Proto, Lo: c.r.Lo, Hi: c.r.Hi,
		Rule: c.rule, Reason: code, Detail: detail}
}

func (m *Model) refFail(idx uint32, f Failure) { m.Failures[idx] = append(m.Failures[idx], f) }

// refFailC records a failure of c: its endpoint's, or its base's (then every
// endpoint's layered on it, see Build).
func (m *Model) refFailC(c *refCandidate, baseFail map[string][]Failure, f Failure) {
	if c.base != "" {
		baseFail[c.base] = append(baseFail[c.base], f)
		return
	}
	m.refFail(c.index, f)
}

func refRangeOwner(a *policy.Allowed, r policy.PortRange) (string, bool) {
	owner, label := "", true
	for _, rule := range a.Rules {
		if rule.Action != policy.Allow || rule.Proto != r.Proto || rule.Port != r.Lo || max(rule.PortEnd, rule.Port) != r.Hi {
			continue
		}
		if owner == "" {
			owner = Provenance(rule.Source)
		}
		if rule.Source.Kind != policy.SourceLabel {
			label = false
		}
	}
	return owner, label
}

func refCountNew(have map[string]bool, keys []string) int {
	n := 0
	seen := map[string]bool{}
	for _, k := range keys {
		if !have[k] && !seen[k] {
			seen[k] = true
			n++
		}
	}
	return n
}

func refRangeKeys(pattern string, r policy.PortRange) ([]string, error) {
	if r.Hi < r.Lo || int(r.Hi)-int(r.Lo)+1 > MaxRangePorts {
		return nil, fmt.Errorf("port range %d-%d of %s exceeds %d ports", r.Lo, r.Hi, pattern, MaxRangePorts)
	}
	if r.Proto.Dedicated() && strings.HasPrefix(pattern, ".") {
		return nil, fmt.Errorf("%s://%s:%d: %s rules need an exact name", r.Proto, pattern, r.Lo, r.Proto)
	}
	keys := make([]string, 0, int(r.Hi)-int(r.Lo)+1)
	for p := int(r.Lo); p <= int(r.Hi); p++ {
		if r.Proto.Dedicated() {
			keys = append(keys, DedicatedKey(r.Proto, pattern, uint16(p)))
		} else {
			keys = append(keys, WebKey(uint16(p)))
		}
	}
	return keys, nil
}

func refListenerOf(key string, port uint16, pattern string, proto policy.Proto, orig uint16) Listener {
	if !proto.Dedicated() {
		return Listener{Key: key, Kind: KindWeb, Port: port, L4: policy.L4TCP, OrigPort: orig}
	}
	return Listener{Key: key, Kind: KindDedicated, Port: port, L4: proto.L4(), OrigPort: orig, Proto: proto, Dst: pattern}
}

func refDedupRoutes(in []Route) []Route {
	type key struct {
		id   policy.Identity
		port uint16
		l4   policy.L4
	}
	seen := make(map[key]bool, len(in))
	out := in[:0]
	for _, r := range in {
		k := key{r.Identity, r.Port, r.L4}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, r)
	}
	return out
}

func (a *PortAllocator) refAllHave(keys []string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range keys {
		if _, ok := a.ports[k]; !ok {
			return false
		}
	}
	return true
}

func (a *PortAllocator) refPortsAll(keys []string) (ports []uint16, fresh int, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	missing := map[string]bool{}
	for _, k := range keys {
		if _, ok := a.ports[k]; !ok {
			missing[k] = true
		}
	}
	if free := int(AllocHi-AllocLo) + 1 - len(a.ports); len(missing) > free {
		return nil, 0, fmt.Errorf("it needs %d new listener ports and only %d of the %d in %d-%d are free", len(missing), free, int(AllocHi-AllocLo)+1, AllocLo, AllocHi)
	}
	ports = make([]uint16, len(keys))
	next := int(AllocLo)
	for i, k := range keys {
		if p, ok := a.ports[k]; ok {
			ports[i] = p
			continue
		}
		for a.used[uint16(next)] {
			next++
		}
		a.ports[k], a.used[uint16(next)] = uint16(next), true
		ports[i] = uint16(next)
		fresh++
	}
	return ports, fresh, nil
}

func (a *PortAllocator) refReleaseExcept(keep map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, p := range a.ports {
		if !keep[k] {
			delete(a.used, p)
			delete(a.ports, k)
		}
	}
}
