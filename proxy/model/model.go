// Package model is the proxy's listener and route model: a pure function of
// the policy snapshot that both proxy engines (builtin and Envoy) and the BPF
// route sync are fed from.
//
// The original destination port of a flow cannot be read back after the
// connect hook rewrote it, so it is carried by the listener the flow arrives
// on: one "web" listener (TLS or plain HTTP, sniffed) per distinct original
// port used by https/http rules, and one "dedicated" listener per (pattern,
// proto, port) of ssh/tcp/udp rules, whose destination is fixed. Flows that
// the closed network redirected arrive on the transparent listener and carry
// their original destination in SO_ORIGINAL_DST.
package model

import (
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Loopback is the host:port of a loopback-only listener on port.
func Loopback(port uint16) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))) }

// Source is the IPv4 or IPv6 address (unmapped) of a listener's peer: the
// address DNS and the proxy identify the endpoint by (sound because the
// closed network anti-spoofs). It is the zero Addr when a has none.
func Source(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}

// Fixed ports of the plugin's listeners (see docs/SEAMS.md).
const (
	DNSPort         uint16 = 15053
	TransparentPort uint16 = 15001
	CAPort          uint16 = 15002
	HealthPort      uint16 = 15003
	// EnvoyAdminPort is the Envoy admin interface (loopback only, envoy
	// engine).
	EnvoyAdminPort uint16 = 15004
	// The DNS sidecar's operational endpoints (loopback only): health,
	// metrics, status (GET /generation) and ready.
	DNSHealthPort  uint16 = 15054
	DNSMetricsPort uint16 = 15055
	DNSStatusPort  uint16 = 15056
	DNSReadyPort   uint16 = 15057
	// ReservedLo..ReservedHi is the whole range the closed network lets a
	// container reach on its gateway.
	ReservedLo uint16 = 15000
	ReservedHi uint16 = 15999
	// AllocLo..AllocHi is where the allocator hands out listener ports.
	AllocLo uint16 = 15100
	AllocHi uint16 = 15999
	// MaxRangePorts bounds how many ports one rule's range may expand to.
	MaxRangePorts = 256
	// MaxPortsPerContainer bounds the listener ports one container's label
	// rules may need, and MaxPortsPerNetwork those of one network's option
	// and runtime rules (the pool AllocLo-AllocHi, 900 ports, is shared by
	// every network): one label or network cannot take the whole pool.
	MaxPortsPerContainer = 256
	MaxPortsPerNetwork   = 512
)

// Limits are the listener-port budgets Build enforces.
type Limits struct {
	PerContainer int
	PerNetwork   int
}

// DefaultLimits returns MaxPortsPerContainer and MaxPortsPerNetwork.
func DefaultLimits() Limits {
	return Limits{PerContainer: MaxPortsPerContainer, PerNetwork: MaxPortsPerNetwork}
}

// FailReason is the stable code of a rule that got no listener.
type FailReason string

// Why a rule's port range got no listener.
const (
	FailInvalid        FailReason = "invalid-range"
	FailContainerLimit FailReason = "container-port-limit"
	FailNetworkLimit   FailReason = "network-port-limit"
	FailExhausted      FailReason = "ports-exhausted"
	FailBind           FailReason = "bind-failed"
)

// Failure is one port range of an endpoint's policy that got no route: the
// rest of the policy works, connections to this range are refused by the
// hooks, and status and denials show why.
type Failure struct {
	Identity policy.Identity `json:"identity"`
	Pattern  string          `json:"pattern"`
	Proto    policy.Proto    `json:"proto"`
	Lo       uint16          `json:"lo"`
	Hi       uint16          `json:"hi"`
	// Rule is the provenance of the rule that asked for the range.
	Rule   string     `json:"rule,omitempty"`
	Reason FailReason `json:"reason"`
	Detail string     `json:"detail"`
}

// String is the failure in one line for status and denials.
func (f Failure) String() string {
	ports := strconv.Itoa(int(f.Lo))
	if f.Hi != f.Lo {
		ports += "-" + strconv.Itoa(int(f.Hi))
	}
	rule := f.Rule
	if rule == "" {
		rule = fmt.Sprintf("%s://%s:%s", f.Proto, f.Pattern, ports)
	}
	return fmt.Sprintf("rule %s (%s %s) has no listener: %s: %s", rule, f.Proto, ports, f.Reason, f.Detail)
}

// Covers reports whether the failed range holds port of transport l4.
func (f Failure) Covers(port uint16, l4 policy.L4) bool {
	return f.Proto.L4() == l4 && port >= f.Lo && port <= f.Hi
}

// Kind is the kind of a listener.
type Kind string

// Listener kinds.
const (
	KindWeb         Kind = "web"         // TLS (SNI) or plain HTTP (Host), per original port
	KindDedicated   Kind = "dedicated"   // ssh/tcp/udp, one per (pattern, proto, port)
	KindTransparent Kind = "transparent" // redirected flows, SO_ORIGINAL_DST
	KindCA          Kind = "ca"          // serves the CA certificate over plain HTTP
)

// Listener is one proxy listener.
type Listener struct {
	// Key names the listener in the port allocator ("web:443",
	// "dedicated:tcp:db.example.test:5432").
	Key  string    `json:"key"`
	Kind Kind      `json:"kind"`
	Port uint16    `json:"port"`
	L4   policy.L4 `json:"l4"`
	// OrigPort is the destination port the client asked for (web and
	// dedicated listeners).
	OrigPort uint16 `json:"orig_port,omitempty"`
	// Proto and Dst are set for dedicated listeners: the rule's protocol and
	// its exact name or IP, which is what the proxy dials.
	Proto policy.Proto `json:"proto,omitempty"`
	Dst   string       `json:"dst,omitempty"`
}

// Route says where the connect hook sends (identity, port, l4) for one
// endpoint. ListenerPort 0 leaves the destination alone: the closed network
// redirects the flow to the transparent listener (IP and CIDR rules).
type Route struct {
	Identity     policy.Identity `json:"identity"`
	Port         uint16          `json:"port"`
	L4           policy.L4       `json:"l4"`
	ListenerPort uint16          `json:"listener_port"`
}

// CIDR maps an IP/CIDR rule of one endpoint to its identity.
type CIDR struct {
	Prefix   netip.Prefix    `json:"prefix"`
	Identity policy.Identity `json:"identity"`
}

// Model is the compiled listener/route model of one snapshot generation.
type Model struct {
	Generation uint64 `json:"generation"`
	// Listeners is sorted by port.
	Listeners []Listener `json:"listeners"`
	// Routes and CIDRs are keyed by endpoint index. An endpoint in Layered
	// has here only what its labels change (policy.Layer's own layer); the
	// rest of its routes and CIDRs are its network's, built once, in
	// BaseRoutes and BaseCIDRs (keyed by network ID), which the hooks fall
	// back to for it.
	Routes     map[uint32][]Route `json:"routes"`
	CIDRs      map[uint32][]CIDR  `json:"cidrs"`
	BaseRoutes map[string][]Route `json:"base_routes,omitempty"`
	BaseCIDRs  map[string][]CIDR  `json:"base_cidrs,omitempty"`
	// Layered maps an endpoint index to the network whose base its routes
	// fall back to; BaseGateway gives each such network's gateway, which
	// keys its base in the hooks' maps.
	Layered     map[uint32]string     `json:"layered,omitempty"`
	BaseGateway map[string]netip.Addr `json:"base_gateway,omitempty"`
	// Failures lists, per endpoint index, the port ranges that got no
	// listener (their routes are absent; everything else is built).
	Failures map[uint32][]Failure `json:"failures,omitempty"`
	// NewPorts counts the listener ports allocated by this build (the
	// allocator must be persisted before they are used).
	NewPorts int `json:"-"`
}

// Listener returns the listener on port, if any.
func (m *Model) Listener(port uint16) (Listener, bool) {
	i := sort.Search(len(m.Listeners), func(i int) bool { return m.Listeners[i].Port >= port })
	if i < len(m.Listeners) && m.Listeners[i].Port == port {
		return m.Listeners[i], true
	}
	return Listener{}, false
}

// WebKey and DedicatedKey are the allocator keys of listeners.
func WebKey(origPort uint16) string { return "web:" + strconv.Itoa(int(origPort)) }

// DedicatedKey is the allocator key of the dedicated listener of one
// (proto, destination, port).
func DedicatedKey(proto policy.Proto, dst string, port uint16) string {
	return fmt.Sprintf("dedicated:%s:%s:%d", proto, dst, port)
}

// Build compiles snap into a Model, allocating listener ports from alloc
// (which the caller persists afterwards). Endpoints that are pending or whose
// labels failed to parse get no routes: their flows are carried by the
// closed network's redirect and decided (or refused) by the proxy.
//
// Build never fails as a whole: a port range that cannot get its listeners
// fails alone and is listed in Model.Failures for its endpoint, while every
// other route (and every revocation) is built. The steps:
//  1. every (endpoint, allow, port range) is expanded into the listener keys
//     it needs; a range wider than MaxRangePorts, or a ssh/tcp/udp range on
//     a wildcard, fails (FailInvalid);
//  2. ranges are charged, in endpoint and policy order, against the budget
//     of what they come from: ranges that only label rules ask for against
//     their container's (Limits.PerContainer), the others against their
//     network's (Limits.PerNetwork); a range that would exceed its budget
//     fails (FailContainerLimit, FailNetworkLimit);
//  3. every allocated key that no surviving range needs is released, so
//     the ports of rules that went are free again;
//  4. the surviving ranges get their ports, keys that already have one
//     first (ports never move), then the others in endpoint order; a range
//     whose new keys do not all fit in what is free fails whole
//     (FailExhausted) and allocates nothing.
//
// The error is reserved for a nil snapshot or allocator.
func Build(snap *policy.Snapshot, alloc *PortAllocator) (*Model, error) {
	return BuildWithLimits(snap, alloc, DefaultLimits())
}

// BuildWithLimits is Build with explicit budgets.
func BuildWithLimits(snap *policy.Snapshot, alloc *PortAllocator, lim Limits) (*Model, error) {
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
	var cands []candidate
	netBudget := map[string]map[string]bool{}
	budgetOf := func(net string) map[string]bool {
		if netBudget[net] == nil {
			netBudget[net] = map[string]bool{}
		}
		return netBudget[net]
	}
	keys := keyCache{}
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
				c := candidate{index: idx, base: base, allow: a, r: r}
				if a.Prefix.IsValid() {
					cands = append(cands, c) // ListenerPort 0: the closed network redirects
					continue
				}
				ks, err := keys.of(a.Pattern, r)
				if err != nil {
					m.failC(&c, baseFail, c.failure(FailInvalid, err.Error()))
					continue
				}
				c.keys = ks
				budget, limit, code, whose := budgetOf(net), lim.PerNetwork, FailNetworkLimit, "network's rules"
				if labelOnly(a, r) {
					budget, limit, code, whose = epBudget, lim.PerContainer, FailContainerLimit, "container's labels"
				}
				if n := len(budget) + countNew(budget, ks); n > limit {
					m.failC(&c, baseFail, c.failure(code, fmt.Sprintf("it needs %d listener ports; with it this %s would use %d, more than the %d allowed", len(ks), whose, n, limit)))
					continue
				}
				for _, k := range ks {
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
	// Most allows have one port range: room for that many ranges up front
	// (growing the slice was half of Build's time at 10,000 rules).
	size := 0
	for _, id := range bases {
		size += len(snap.Networks[id].Base.Allows)
	}
	for _, ep := range snap.Endpoints {
		if ep.Policy != nil {
			size += len(ep.Policy.Allows)
		}
	}
	cands = make([]candidate, 0, size+size/8)
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
			entries = ownEntries(ep.Policy)
		}
		expand(entries, idx, "", ep.NetworkID)
	}

	// Step 3. The allocator is held to the end: its ports are read per
	// range below.
	alloc.mu.Lock()
	defer alloc.mu.Unlock()
	wanted := map[string]bool{}
	for i := range cands {
		for _, k := range cands[i].keys {
			wanted[k] = true
		}
	}
	alloc.releaseExceptLocked(wanted)

	// Step 4: ranges whose keys all have ports (which allocates nothing),
	// then the others in order, each allocating the keys it misses (of
	// two allows on one new web port, the first allocates its key and the
	// second finds it).
	for i := range cands {
		cands[i].ok = alloc.allHaveLocked(cands[i].keys)
	}
	for i := range cands {
		c := &cands[i]
		if c.ok {
			continue
		}
		fresh, err := alloc.allocLocked(c.keys)
		if err != nil {
			m.failC(c, baseFail, c.failure(FailExhausted, err.Error()))
			continue
		}
		m.NewPorts += fresh
		c.ok = true
	}
	// Listeners, and routes in policy order (most specific first) for
	// dedupRoutes. A key's listener is the same whichever range asks for
	// it (the key holds its kind, destination and port).
	var (
		routes []Route
		owner  *candidate
	)
	flush := func() {
		if len(routes) == 0 {
			return
		}
		if owner.base != "" {
			m.BaseRoutes[owner.base] = append(m.BaseRoutes[owner.base], routes...)
		} else {
			m.Routes[owner.index] = append(m.Routes[owner.index], routes...)
		}
		routes = nil
	}
	for i := range cands {
		c := &cands[i]
		if !c.ok {
			continue
		}
		if owner == nil || owner.base != c.base || owner.index != c.index {
			flush()
			owner = c
		}
		for i, p := 0, int(c.r.Lo); p <= int(c.r.Hi); i, p = i+1, p+1 {
			route := Route{Identity: c.allow.Identity, Port: uint16(p), L4: c.r.Proto.L4()}
			if len(c.keys) > 0 {
				k := c.keys[i]
				route.ListenerPort = alloc.ports[k]
				if _, ok := listeners[k]; !ok {
					listeners[k] = listenerOf(k, route.ListenerPort, c.allow.Pattern, c.r.Proto, uint16(p))
				}
			}
			routes = append(routes, route)
		}
	}
	flush()
	for idx, rs := range m.Routes {
		m.Routes[idx] = dedupRoutes(rs)
	}
	for id, rs := range m.BaseRoutes {
		m.BaseRoutes[id] = dedupRoutes(rs)
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

// ownEntries yields a layered policy's own entries (those its labels
// change), most specific first.
func ownEntries(p *policy.Policy) iter.Seq[*policy.Allowed] {
	return func(yield func(*policy.Allowed) bool) {
		for i := range p.Allows {
			if !yield(&p.Allows[i]) {
				return
			}
		}
	}
}

// candidate is one (endpoint or network base, allow, port range) of Build.
type candidate struct {
	index uint32
	base  string // network ID when the range is its base's (index unused)
	allow *policy.Allowed
	r     policy.PortRange
	keys  []string // one per port of r; none for IP/CIDR allows (shared: read only)
	ok    bool     // got its ports
}

func (c *candidate) failure(code FailReason, detail string) Failure {
	return Failure{Identity: c.allow.Identity, Pattern: c.allow.Pattern, Proto: c.r.Proto, Lo: c.r.Lo, Hi: c.r.Hi,
		Rule: rangeOwner(c.allow, c.r), Reason: code, Detail: detail}
}

func (m *Model) fail(idx uint32, f Failure) { m.Failures[idx] = append(m.Failures[idx], f) }

// failC records a failure of c: its endpoint's, or its base's (then every
// endpoint's layered on it, see Build).
func (m *Model) failC(c *candidate, baseFail map[string][]Failure, f Failure) {
	if c.base != "" {
		baseFail[c.base] = append(baseFail[c.base], f)
		return
	}
	m.fail(c.index, f)
}

// asks reports whether rule is an allow that asks for range r.
func asks(rule *policy.EgressRule, r policy.PortRange) bool {
	return rule.Action == policy.Allow && rule.Proto == r.Proto && rule.Port == r.Lo && max(rule.PortEnd, rule.Port) == r.Hi
}

// rangeOwner returns the provenance of the first rule of a that asks for
// range r ("label clawker.allow=tcp://db:5432"), which failures name.
func rangeOwner(a *policy.Allowed, r policy.PortRange) string {
	for i := range a.Rules {
		if asks(&a.Rules[i], r) {
			return Provenance(a.Rules[i].Source)
		}
	}
	return ""
}

// labelOnly reports whether only label rules of a ask for range r: then it
// is charged to the container, else to the network.
func labelOnly(a *policy.Allowed, r policy.PortRange) bool {
	for i := range a.Rules {
		if asks(&a.Rules[i], r) && a.Rules[i].Source.Kind != policy.SourceLabel {
			return false
		}
	}
	return true
}

// Provenance describes where a rule came from ("label clawker.allow=x").
func Provenance(p policy.Provenance) string {
	if p.Kind == "" {
		return ""
	}
	// Concatenated, not fmt.Sprintf: Build names the owner of every
	// allowed entry's ports (10,000 at scale) on every commit.
	return string(p.Kind) + " " + p.Key + "=" + p.Item
}

func countNew(have map[string]bool, keys []string) int {
	if len(keys) == 1 { // most ranges: no set to build
		if have[keys[0]] {
			return 0
		}
		return 1
	}
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

// keyCache hands out the listener keys of ranges (rangeKeys), one shared
// slice per range: at scale thousands of allows ask for the same few web
// ports, and Build runs on every change.
type keyCache map[keyOf][]string

type keyOf struct {
	pattern string           // "" for web ranges (their keys name only the port)
	r       policy.PortRange // Proto "" for web ranges
}

func (kc keyCache) of(pattern string, r policy.PortRange) ([]string, error) {
	k := keyOf{r: r}
	if r.Proto.Dedicated() {
		k.pattern = pattern
	} else {
		k.r.Proto = "" // web keys name only the port
	}
	if ks, ok := kc[k]; ok {
		return ks, nil
	}
	ks, err := rangeKeys(pattern, r)
	if err == nil {
		kc[k] = ks
	}
	return ks, err
}

// rangeKeys returns the listener key of every port of r for pattern.
func rangeKeys(pattern string, r policy.PortRange) ([]string, error) {
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

func listenerOf(key string, port uint16, pattern string, proto policy.Proto, orig uint16) Listener {
	if !proto.Dedicated() {
		return Listener{Key: key, Kind: KindWeb, Port: port, L4: policy.L4TCP, OrigPort: orig}
	}
	return Listener{Key: key, Kind: KindDedicated, Port: port, L4: proto.L4(), OrigPort: orig, Proto: proto, Dst: pattern}
}

// RuleKeys returns the distinct listener keys the allow rules of rules need
// (IP/CIDR rules and denies need none), for the limit checks at network
// create, container create and rules add.
func RuleKeys(rules []policy.EgressRule) (map[string]bool, error) {
	out := map[string]bool{}
	for i := range rules {
		if err := addRuleKeys(out, &rules[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addRuleKeys adds the listener keys rule r needs to into.
func addRuleKeys(into map[string]bool, r *policy.EgressRule) error {
	if r.Action != policy.Allow || isIPRule(r.Dst) {
		return nil
	}
	keys, err := rangeKeys(r.Dst, policy.PortRange{Proto: r.Proto, Lo: r.Port, Hi: max(r.PortEnd, r.Port)})
	if err != nil {
		return fmt.Errorf("%s=%s: %w", r.Source.Key, r.Source.Item, err)
	}
	for _, k := range keys {
		into[k] = true
	}
	return nil
}

func isIPRule(dst string) bool {
	if _, err := netip.ParsePrefix(dst); err == nil {
		return true
	}
	_, err := netip.ParseAddr(dst)
	return err == nil
}

// LimitError says that rules need more listener ports than their budget.
// Key and Item name the option or label, and the rule with which the count
// crossed the limit.
type LimitError struct {
	Key, Item   string
	Need, Limit int
	// Whose is "a network" or "a container".
	Whose string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s=%s: the rules need %d listener ports (one per port of each tcp/udp/ssh rule, one per distinct https/http port), and %s may use at most %d",
		e.Key, e.Item, e.Need, e.Whose, e.Limit)
}

// CheckLimit returns a *LimitError when rules need more than limit listener
// ports, naming the rule with which the count crosses it. whose is "a
// network" or "a container".
func CheckLimit(rules []policy.EgressRule, limit int, whose string) error {
	seen := map[string]bool{}
	var first *policy.EgressRule
	for i := range rules {
		if err := addRuleKeys(seen, &rules[i]); err != nil {
			return err
		}
		if len(seen) > limit && first == nil {
			first = &rules[i]
		}
	}
	if first == nil {
		return nil
	}
	return &LimitError{Key: first.Source.Key, Item: first.Source.Item, Need: len(seen), Limit: limit, Whose: whose}
}

// dedupRoutes keeps the first route of each (identity, port, l4): entries are
// visited most specific first, so the first one wins.
func dedupRoutes(in []Route) []Route {
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

// PortAllocator hands out listener ports in [AllocLo, AllocHi], once per key,
// and never moves a key's port. Its JSON form is persisted by the plugin so
// ports survive restarts. It is safe for concurrent use.
type PortAllocator struct {
	mu    sync.Mutex
	ports map[string]uint16
	used  map[uint16]bool
}

// NewPortAllocator returns an empty allocator.
func NewPortAllocator() *PortAllocator {
	return &PortAllocator{ports: map[string]uint16{}, used: map[uint16]bool{}}
}

// Port returns key's port, allocating the lowest free one the first time.
func (a *PortAllocator) Port(key string) (uint16, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.ports[key]; ok {
		return p, nil
	}
	for p := int(AllocLo); p <= int(AllocHi); p++ {
		if !a.used[uint16(p)] {
			a.ports[key] = uint16(p)
			a.used[uint16(p)] = true
			return uint16(p), nil
		}
	}
	return 0, fmt.Errorf("allocate listener port for %s: all %d ports in %d-%d are in use", key, int(AllocHi-AllocLo)+1, AllocLo, AllocHi)
}

// Free returns how many ports are unallocated.
func (a *PortAllocator) Free() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(AllocHi-AllocLo) + 1 - len(a.ports)
}

// Has reports whether key has a port.
func (a *PortAllocator) Has(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.ports[key]
	return ok
}

// allHaveLocked reports whether every key has a port (a.mu held).
func (a *PortAllocator) allHaveLocked(keys []string) bool {
	for _, k := range keys {
		if _, ok := a.ports[k]; !ok {
			return false
		}
	}
	return true
}

// allocLocked gives every key a port, allocating the missing ones, or
// allocates nothing and fails when they do not all fit (a.mu held). fresh
// counts the keys it allocated.
func (a *PortAllocator) allocLocked(keys []string) (fresh int, err error) {
	missing := map[string]bool{}
	for _, k := range keys {
		if _, ok := a.ports[k]; !ok {
			missing[k] = true
		}
	}
	if free := int(AllocHi-AllocLo) + 1 - len(a.ports); len(missing) > free {
		return 0, fmt.Errorf("it needs %d new listener ports and only %d of the %d in %d-%d are free", len(missing), free, int(AllocHi-AllocLo)+1, AllocLo, AllocHi)
	}
	next := int(AllocLo)
	for _, k := range keys {
		if _, ok := a.ports[k]; ok {
			continue
		}
		for a.used[uint16(next)] {
			next++
		}
		a.ports[k], a.used[uint16(next)] = uint16(next), true
		fresh++
	}
	return fresh, nil
}

// releaseExceptLocked frees the port of every key not in keep (a.mu held).
func (a *PortAllocator) releaseExceptLocked(keep map[string]bool) {
	for k, p := range a.ports {
		if !keep[k] {
			delete(a.used, p)
			delete(a.ports, k)
		}
	}
}

// Release frees key's port (when nothing uses the listener any more).
func (a *PortAllocator) Release(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.ports[key]; ok {
		delete(a.used, p)
		delete(a.ports, key)
	}
}

// MarshalJSON encodes the key -> port table.
func (a *PortAllocator) MarshalJSON() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return json.Marshal(a.ports)
}

// UnmarshalJSON restores a persisted table, rejecting ports outside the
// allocation range and duplicates.
func (a *PortAllocator) UnmarshalJSON(b []byte) error {
	var ports map[string]uint16
	if err := json.Unmarshal(b, &ports); err != nil {
		return fmt.Errorf("decode port allocator: %w", err)
	}
	used := make(map[uint16]bool, len(ports))
	for k, p := range ports {
		if p < AllocLo || p > AllocHi {
			return fmt.Errorf("decode port allocator: %s has port %d outside %d-%d", k, p, AllocLo, AllocHi)
		}
		if used[p] {
			return fmt.Errorf("decode port allocator: port %d allocated twice", p)
		}
		used[p] = true
	}
	if ports == nil {
		ports = map[string]uint16{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ports, a.used = ports, used
	return nil
}

// BindFailure is a listener a data plane could not open.
type BindFailure struct {
	Listener Listener
	Err      string
}

// BindError is what a data plane's Apply returns (wrapped or joined) when
// some listeners did not open; the rest of the state was applied.
type BindError struct {
	Failed []BindFailure
}

func (e *BindError) Error() string {
	parts := make([]string, 0, len(e.Failed))
	for _, f := range e.Failed {
		parts = append(parts, fmt.Sprintf("open %s listener %s on port %d: %s", f.Listener.Kind, f.Listener.Key, f.Listener.Port, f.Err))
	}
	return strings.Join(parts, "; ")
}

// WithoutListeners returns a copy of m without the listeners in failed: the
// routes that pointed to them are gone (the hooks must never steer to a port
// that is not listening) and are listed as FailBind failures of their
// endpoints, named after snap's policies.
func (m *Model) WithoutListeners(snap *policy.Snapshot, failed []BindFailure) *Model {
	if len(failed) == 0 {
		return m
	}
	gone := map[uint16]BindFailure{}
	for _, f := range failed {
		gone[f.Listener.Port] = f
	}
	out := *m
	out.Listeners = nil
	for _, l := range m.Listeners {
		if _, ok := gone[l.Port]; !ok {
			out.Listeners = append(out.Listeners, l)
		}
	}
	out.Routes = make(map[uint32][]Route, len(m.Routes))
	out.Failures = make(map[uint32][]Failure, len(m.Failures))
	for idx, fs := range m.Failures {
		out.Failures[idx] = slices.Clone(fs)
	}
	// withoutGone drops the routes to a gone listener and names them as
	// failures after pol's entries.
	withoutGone := func(rs []Route, pol *policy.Policy) (kept []Route, fails []Failure) {
		kept = make([]Route, 0, len(rs))
		for _, r := range rs {
			f, ok := gone[r.ListenerPort]
			if r.ListenerPort == 0 || !ok {
				kept = append(kept, r)
				continue
			}
			fl := Failure{Identity: r.Identity, Pattern: f.Listener.Dst, Proto: f.Listener.Proto, Lo: r.Port, Hi: r.Port, Reason: FailBind,
				Detail: fmt.Sprintf("listener %s on port %d could not be opened: %s", f.Listener.Key, f.Listener.Port, f.Err)}
			if fl.Proto == "" {
				fl.Proto = policy.ProtoHTTPS
			}
			for a := range pol.Entries() {
				if a.Identity == r.Identity {
					fl.Pattern = a.Pattern
					if len(a.Rules) > 0 {
						fl.Rule = Provenance(a.Rules[0].Source)
					}
					break
				}
			}
			fails = append(fails, fl)
		}
		return kept, fails
	}
	for idx, rs := range m.Routes {
		var pol *policy.Policy
		if ep := snap.Endpoints[idx]; ep != nil {
			pol = ep.Policy
		}
		kept, fails := withoutGone(rs, pol)
		out.Failures[idx] = append(out.Failures[idx], fails...)
		out.Routes[idx] = kept
	}
	if len(m.BaseRoutes) > 0 {
		out.BaseRoutes = make(map[string][]Route, len(m.BaseRoutes))
		for id, rs := range m.BaseRoutes {
			var pol *policy.Policy
			if n := snap.Networks[id]; n != nil {
				pol = n.Base
			}
			kept, fails := withoutGone(rs, pol)
			out.BaseRoutes[id] = kept
			if len(fails) == 0 {
				continue
			}
			for idx, net := range m.Layered {
				if net == id {
					out.Failures[idx] = append(out.Failures[idx], fails...)
				}
			}
		}
	}
	return &out
}

// RoutesOf returns what the hooks route for endpoint idx: its own routes,
// then its network's base routes when it is layered (a lookup takes the
// first route of a key).
func (m *Model) RoutesOf(idx uint32) []Route {
	rs := m.Routes[idx]
	if id, ok := m.Layered[idx]; ok {
		rs = append(slices.Clip(rs), m.BaseRoutes[id]...)
	}
	return rs
}

// ListenerPorts returns the ports of m's listeners by transport.
func (m *Model) ListenerPorts() (tcp, udp []uint16) {
	for _, l := range m.Listeners {
		if l.L4 == policy.L4UDP {
			udp = append(udp, l.Port)
		} else {
			tcp = append(tcp, l.Port)
		}
	}
	return tcp, udp
}

// RoutePorts returns the listener ports the routes of the given endpoints
// steer to, by transport, sorted and without duplicates.
func (m *Model) RoutePorts(indexes []uint32) (tcp, udp []uint16) {
	var sets [][]Route
	seen := map[string]bool{}
	for _, idx := range indexes {
		sets = append(sets, m.Routes[idx])
		if id, ok := m.Layered[idx]; ok && !seen[id] {
			seen[id] = true
			sets = append(sets, m.BaseRoutes[id])
		}
	}
	for _, rs := range sets {
		for _, r := range rs {
			if r.ListenerPort == 0 {
				continue
			}
			if r.L4 == policy.L4UDP {
				udp = append(udp, r.ListenerPort)
			} else {
				tcp = append(tcp, r.ListenerPort)
			}
		}
	}
	slices.Sort(tcp)
	slices.Sort(udp)
	return slices.Compact(tcp), slices.Compact(udp)
}
