package builtin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// ReasonHostLocal: the upstream is an address of the proxy's own host.
const ReasonHostLocal = verdict.ReasonHostLocal

// hostDockerInternal is the one name that reaches the host: the endpoint's
// network gateway, through an exact rule (as the DNS plugin answers it).
const hostDockerInternal = "host.docker.internal"

// errHostLocal is returned when a destination is an address of the host.
type errHostLocal struct {
	name string
	addr netip.Addr
	why  string
}

func (e *errHostLocal) Error() string {
	dst := e.addr.String()
	if e.name != "" {
		dst = e.name + " (" + dst + ")"
	}
	return fmt.Sprintf("refuse upstream %s: %s", dst, e.why)
}

// kernelHostLocal asks the kernel how it would route addr from the calling
// thread's network namespace (a new netlink socket per call, ~50 us here);
// see hostLocalVia.
func kernelHostLocal(addr netip.Addr) (bool, error) {
	return hostLocalVia(netlink.RouteGet)(addr)
}

// sharedHostLocal asks through one netlink socket opened now, in the
// caller's namespace, for the engine's life (~15 us per lookup here,
// serialized on the socket); it falls back to kernelHostLocal when the
// socket cannot be opened or a lookup on it fails. Its answers are kept
// while the kernel announces no change (hostLocalCache).
func sharedHostLocal() (func(netip.Addr) (bool, error), func()) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return kernelHostLocal, func() {}
	}
	shared := hostLocalVia(h.RouteGet)
	ask := func(addr netip.Addr) (bool, error) {
		if local, err := shared(addr); err == nil {
			return local, nil
		}
		return kernelHostLocal(addr)
	}
	c, err := newHostLocalCache(ask)
	if err != nil {
		return ask, h.Close
	}
	return c.hostLocal, func() { c.close(); h.Close() }
}

// hostLocalCache keeps the kernel's answers on which addresses are the
// host's for as long as the kernel announces no change that could alter
// one: a netlink socket of its own, subscribed to every link, address,
// route and routing-rule change, is checked (one non-blocking recv) before
// each answer is used, and anything queued on it, or an overflow of it,
// drops every answer. The kernel queues those announcements while it makes
// the change, before the call that made it returns, so an answer from
// memory is as current as a route lookup at the same moment: an address
// added a moment ago counts at once, as without the cache.
type hostLocalCache struct {
	ask func(netip.Addr) (bool, error)
	fd  int

	mu      sync.Mutex
	answers map[netip.Addr]bool
	gen     uint64 // counts the drops
	broken  bool   // the socket failed or was closed: every answer is asked
	buf     [8192]byte
}

// maxHostLocalAnswers bounds the cache; over it, it starts over.
const maxHostLocalAnswers = 4096

// hostLocalGroups are the rtnetlink groups whose messages may change how
// the kernel routes an address: links, addresses, routes and policy rules,
// IPv4 and IPv6 (those with a bit in bind's legacy mask; the others are
// hostLocalMoreGroups).
const hostLocalGroups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV4_RULE |
	unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_IPV6_ROUTE

// hostLocalMoreGroups are joined one by one (NETLINK_ADD_MEMBERSHIP): IPv6
// policy rules, which have no legacy mask bit, and next-hop objects, which
// routes may use.
var hostLocalMoreGroups = []int{unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_NEXTHOP}

// newHostLocalCache subscribes, in the caller's network namespace, to the
// changes that invalidate ask's answers.
func newHostLocalCache(ask func(netip.Addr) (bool, error)) (*hostLocalCache, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open route notifications: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: hostLocalGroups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("subscribe to route notifications: %w", err)
	}
	for _, g := range hostLocalMoreGroups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("subscribe to route notifications (group %d): %w", g, err)
		}
	}
	return &hostLocalCache{ask: ask, fd: fd, answers: map[netip.Addr]bool{}}, nil
}

// hostLocal answers from memory unless a change was announced since the
// answer was read; otherwise it asks (failures are not kept).
func (c *hostLocalCache) hostLocal(addr netip.Addr) (bool, error) {
	c.mu.Lock()
	c.pollLocked()
	if local, ok := c.answers[addr]; ok && !c.broken {
		c.mu.Unlock()
		return local, nil
	}
	gen, broken := c.gen, c.broken
	c.mu.Unlock()
	local, err := c.ask(addr)
	if err != nil || broken {
		return local, err
	}
	c.mu.Lock()
	c.pollLocked()
	// Kept only if nothing was announced while the kernel was asked.
	if c.gen == gen && !c.broken {
		if len(c.answers) >= maxHostLocalAnswers {
			clear(c.answers)
		}
		c.answers[addr] = local
	}
	c.mu.Unlock()
	return local, nil
}

// pollLocked drains the notification socket; anything on it (a message,
// an overflow, any error but "nothing queued") drops every answer.
func (c *hostLocalCache) pollLocked() {
	for !c.broken {
		_, _, err := unix.Recvfrom(c.fd, c.buf[:], unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return
		}
		if err == unix.EINTR {
			continue
		}
		clear(c.answers)
		c.gen++
		if err != nil && err != unix.ENOBUFS {
			c.broken = true // every answer from now on is asked
		}
	}
}

func (c *hostLocalCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.broken {
		c.broken = true
		clear(c.answers)
		unix.Close(c.fd)
	}
}

// hostLocalVia asks the kernel, through routeGet, how it would route addr
// from the proxy's network namespace (the host's: the plugin runs with host
// networking), at dial time, so that every address of every interface
// counts, including loopback, 0.0.0.0, the gateways of the bridges,
// addresses added a moment ago and local routes that are no interface's
// address: a destination the kernel delivers to the host itself (local,
// broadcast, anycast) is host-local.
func hostLocalVia(routeGet func(net.IP) ([]netlink.Route, error)) func(netip.Addr) (bool, error) {
	return func(addr netip.Addr) (bool, error) {
		return routeIsLocal(routeGet(addr.AsSlice()))
	}
}

func routeIsLocal(routes []netlink.Route, err error) (bool, error) {
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return false, nil // no route at all: not the host's, and the dial fails on its own
	}
	if err != nil {
		return false, fmt.Errorf("route lookup: %w", err)
	}
	for _, r := range routes {
		switch r.Type {
		case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST:
			return true, nil
		}
	}
	return false, nil
}

// hostLocal reports whether addr is the host's own; a failed lookup counts
// as host-local (fail closed).
func (e *Engine) hostLocal(addr netip.Addr) (bool, string) {
	local, err := e.cfg.HostLocal(addr.Unmap())
	switch {
	case err != nil:
		return true, "cannot tell whether it is an address of the host: " + err.Error()
	case local:
		return true, "it is an address of the host (the proxy dials from the host's network namespace); only an IP/CIDR rule naming it, or tcp://host.docker.internal:PORT, reaches the host"
	}
	return false, ""
}

// checkIPDest refuses an IP destination (IP rules, bypass) that is the
// host's own unless an IP/CIDR rule names it: a bypass does not open the
// host.
func (e *Engine) checkIPDest(pol *policy.Policy, addr netip.Addr, port uint16, l4 policy.L4) error {
	if local, why := e.hostLocal(addr); local && !verdict.NamesAddr(pol, addr, port, l4) {
		return &errHostLocal{addr: addr, why: why}
	}
	return nil
}

// gateway returns the address of host.docker.internal for endpoint idx: the
// gateway of its network, reached only through an exact host.docker.internal
// rule (no wildcard and no bypass reaches the host): d.entry is the allow
// the flow's verdict matched for the name.
func (e *Engine) gateway(d dialFor, idx uint32, port uint16) ([]netip.Addr, error) {
	refuse := func(why string) error { return &errHostLocal{name: hostDockerInternal, why: why} }
	if d.pol == nil || d.pol.AllowAll || d.entry == nil {
		return nil, refuse("the host is reachable only through an explicit host.docker.internal rule, not a bypass")
	}
	if !namedExactly(d.entry, hostDockerInternal, port) {
		return nil, refuse(fmt.Sprintf("the host is reachable only through an exact host.docker.internal rule for port %d, not a wildcard", port))
	}
	c := e.state()
	if c == nil {
		return nil, refuse("no snapshot")
	}
	ep, ok := c.snap.Endpoints[idx]
	if !ok {
		return nil, refuse("unknown endpoint")
	}
	n, ok := c.snap.Networks[ep.NetworkID]
	if !ok || !n.Gateway.IsValid() {
		return nil, refuse("the endpoint's network has no known gateway")
	}
	gw := n.Gateway.Unmap()
	if d.pol.DeniedAddr(gw) != nil {
		return nil, refuse("a CIDR deny covers the gateway")
	}
	return []netip.Addr{gw}, nil
}

// namedExactly reports whether one of the rules behind entry names name
// itself (not an enclosing wildcard) on port.
func namedExactly(entry *policy.Allowed, name string, port uint16) bool {
	for _, r := range entry.Rules {
		hi := max(r.PortEnd, r.Port)
		if r.Action == policy.Allow && r.Dst == name && r.Port <= port && port <= hi {
			return true
		}
	}
	return false
}

// l4Of maps a dial network to the policy's L4.
func l4Of(network string) policy.L4 {
	if network == "udp4" || network == "udp" {
		return policy.L4UDP
	}
	return policy.L4TCP
}

// dialIP dials an IP destination decided by match m, refusing the host's
// own addresses unless an IP/CIDR rule names them.
func (e *Engine) dialIP(ctx context.Context, pol *policy.Policy, network string, addr netip.Addr, port uint16) (net.Conn, error) {
	if err := e.checkIPDest(pol, addr, port, l4Of(network)); err != nil {
		return nil, err
	}
	return e.dialAddrs(ctx, network, []netip.Addr{addr}, port)
}
