package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// BaseRoute reads the listener port the hooks steer (identity, port, l4)
// to for the endpoints of the network whose gateway is gw, from the
// base_routes map itself (what the connect hook reads). ok is false when
// the map holds no such route. bench/effective times rule changes with it.
func (m *Manager) BaseRoute(gw netip.Addr, identity uint32, port uint16, l4 uint8) (listener uint16, ok bool, err error) {
	if m.closed.Load() {
		return 0, false, ErrClosed
	}
	g, err := ip4(gw)
	if err != nil {
		return 0, false, fmt.Errorf("base route: gateway %s: %w", gw, err)
	}
	var v clawkerRouteVal
	err = m.maps[MapBaseRoutes].Lookup(clawkerRouteKey{Index: g, Identity: identity, Port: port, L4: l4}, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("base route: %w", err)
	}
	return v.ListenerPort, true, nil
}
