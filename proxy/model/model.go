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
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Fixed ports of the plugin's listeners (see docs/SEAMS.md).
const (
	DNSPort         uint16 = 15053
	TransparentPort uint16 = 15001
	CAPort          uint16 = 15002
	HealthPort      uint16 = 15003
	// ReservedLo..ReservedHi is the whole range the closed network lets a
	// container reach on its gateway.
	ReservedLo uint16 = 15000
	ReservedHi uint16 = 15999
	// AllocLo..AllocHi is where the allocator hands out listener ports.
	AllocLo uint16 = 15100
	AllocHi uint16 = 15999
	// MaxRangePorts bounds how many ports one rule's range may expand to.
	MaxRangePorts = 256
)

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
	// Routes and CIDRs are keyed by endpoint index.
	Routes map[uint32][]Route `json:"routes"`
	CIDRs  map[uint32][]CIDR  `json:"cidrs"`
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
func Build(snap *policy.Snapshot, alloc *PortAllocator) (*Model, error) {
	m := &Model{
		Generation: snap.Generation,
		Routes:     map[uint32][]Route{},
		CIDRs:      map[uint32][]CIDR{},
	}
	listeners := map[string]Listener{
		"transparent": {Key: "transparent", Kind: KindTransparent, Port: TransparentPort, L4: policy.L4TCP},
		"ca":          {Key: "ca", Kind: KindCA, Port: CAPort, L4: policy.L4TCP},
	}
	indexes := make([]uint32, 0, len(snap.Endpoints))
	for idx := range snap.Endpoints {
		indexes = append(indexes, idx)
	}
	sort.Slice(indexes, func(i, j int) bool { return indexes[i] < indexes[j] })

	for _, idx := range indexes {
		ep := snap.Endpoints[idx]
		if ep.Pending || ep.LabelError != "" || ep.Policy == nil {
			continue
		}
		var routes []Route
		for _, a := range ep.Policy.Allows {
			if a.Prefix.IsValid() {
				m.CIDRs[idx] = append(m.CIDRs[idx], CIDR{Prefix: a.Prefix, Identity: a.Identity})
			}
			for _, r := range a.Ports {
				if int(r.Hi)-int(r.Lo)+1 > MaxRangePorts || r.Hi < r.Lo {
					return nil, fmt.Errorf("build routes for %s: port range %d-%d exceeds %d ports", a.Pattern, r.Lo, r.Hi, MaxRangePorts)
				}
				for p := int(r.Lo); p <= int(r.Hi); p++ {
					port := uint16(p)
					route := Route{Identity: a.Identity, Port: port, L4: r.Proto.L4()}
					if a.Prefix.IsValid() {
						routes = append(routes, route) // ListenerPort 0: closed network redirects
						continue
					}
					l, err := listenerFor(a.Pattern, r.Proto, port, alloc)
					if err != nil {
						return nil, err
					}
					listeners[l.Key] = l
					route.ListenerPort = l.Port
					routes = append(routes, route)
				}
			}
		}
		m.Routes[idx] = dedupRoutes(routes)
	}
	for _, l := range listeners {
		m.Listeners = append(m.Listeners, l)
	}
	sort.Slice(m.Listeners, func(i, j int) bool { return m.Listeners[i].Port < m.Listeners[j].Port })
	return m, nil
}

func listenerFor(pattern string, proto policy.Proto, port uint16, alloc *PortAllocator) (Listener, error) {
	if !proto.Dedicated() {
		key := WebKey(port)
		lp, err := alloc.Port(key)
		if err != nil {
			return Listener{}, err
		}
		return Listener{Key: key, Kind: KindWeb, Port: lp, L4: policy.L4TCP, OrigPort: port}, nil
	}
	if len(pattern) > 0 && pattern[0] == '.' {
		return Listener{}, fmt.Errorf("build listener for %s://%s:%d: %s rules need an exact name", proto, pattern, port, proto)
	}
	key := DedicatedKey(proto, pattern, port)
	lp, err := alloc.Port(key)
	if err != nil {
		return Listener{}, err
	}
	return Listener{Key: key, Kind: KindDedicated, Port: lp, L4: proto.L4(), OrigPort: port, Proto: proto, Dst: pattern}, nil
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
