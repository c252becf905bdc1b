package netguard

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Handle performs the rtnetlink and nftables calls of the closed network in
// one network namespace. Its methods are safe for concurrent use; they are
// serialized because each guard operation reads the nftables state before it
// writes one transaction.
type Handle struct {
	mu     sync.Mutex
	nl     *netlink.Handle
	ns     netns.NsHandle // netns.None() for the calling process's namespace
	ownsNS bool
	// bound and perBr are the listener ports of the last SetListenerPorts.
	bound Ports
	perBr map[string]Ports
}

// New returns a Handle working in the network namespace ns, or in the
// namespace of the calling process when ns is netns.None(). The caller keeps
// ns open until Close.
func New(ns netns.NsHandle) (*Handle, error) {
	var (
		nl  *netlink.Handle
		err error
	)
	if ns == netns.None() {
		nl, err = netlink.NewHandle()
	} else {
		nl, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return &Handle{nl: nl, ns: ns, perBr: map[string]Ports{}}, nil
}

// NewInNamespace returns a Handle working in the network namespace bound at
// path (for example /var/run/netns/NAME or /proc/PID/ns/net).
func NewInNamespace(path string) (*Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := New(ns)
	if err != nil {
		ns.Close()
		return nil, err
	}
	h.ownsNS = true
	return h, nil
}

// Close releases the handle's sockets (and its namespace when it opened it).
func (h *Handle) Close() error {
	h.nl.Close()
	if h.ownsNS {
		return h.ns.Close()
	}
	return nil
}

// nft returns a fresh nftables connection in the handle's namespace. The
// library opens one netlink socket per request, in that namespace.
func (h *Handle) nft() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if h.ns != netns.None() {
		opts = append(opts, nftables.WithNetNSFd(int(h.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	return c, nil
}

// inet6AddrGenModeNone keeps the kernel from giving an interface an IPv6
// link-local address (IN6_ADDR_GEN_MODE_NONE).
const inet6AddrGenModeNone = 1

// EnsureBridge makes sure a bridge called name exists, carries exactly the
// IPv4 address gw (the network's gateway with the subnet's prefix length) and
// is up. It is idempotent. The bridge gets a random locally administered MAC
// at creation so that its address does not change as ports come and go, and
// no IPv6 link-local address (best effort: IPv6 may be disabled).
func (h *Handle) EnsureBridge(name string, gw netip.Prefix) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	if !gw.IsValid() || !gw.Addr().Is4() {
		return fmt.Errorf("ensure bridge %s: gateway %v is not an IPv4 prefix", name, gw)
	}
	h.mu.Lock()
	defer h.mu.Unlock()

	link, err := h.nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: randomMAC()}}
		if err := h.nl.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = h.nl.LinkByName(name); err != nil {
			return fmt.Errorf("find bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("find bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return fmt.Errorf("ensure bridge %s: link exists with type %s", name, link.Type())
	}
	_ = h.nl.LinkSetIP6AddrGenMode(link, inet6AddrGenModeNone)

	want := &netlink.Addr{IPNet: prefixToIPNet(gw)}
	addrs, err := h.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == want.IPNet.String() {
			continue
		}
		if err := h.nl.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove address %s from %s: %w", a.IPNet, name, err)
		}
	}
	if err := h.nl.AddrReplace(link, want); err != nil {
		return fmt.Errorf("set address %s on %s: %w", gw, name, err)
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// DeleteBridge deletes the bridge called name. A missing bridge is not an
// error. Ports still attached are detached by the kernel, not deleted.
func (h *Handle) DeleteBridge(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("delete bridge %s: link has type %s", name, link.Type())
	}
	if err := h.nl.LinkDel(link); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// CreateVeth creates a veth pair: hostName is enslaved to bridge and set up,
// peerName stays in the handle's namespace, down, with MAC mac, for Docker to
// move into the container. It fails if hostName already exists. Before the
// host side joins the bridge, its guard chain is installed dropping every
// frame from it; GuardEndpoint (which the caller must call before Join
// returns) replaces that with the endpoint's anti-spoofing rules.
func (h *Handle) CreateVeth(hostName, peerName, bridge string, mac net.HardwareAddr) error {
	if err := checkIfName(hostName); err != nil {
		return err
	}
	if err := checkIfName(peerName); err != nil {
		return err
	}
	if len(mac) != 6 {
		return fmt.Errorf("create veth %s: MAC %q is not a 6-byte Ethernet address", hostName, mac)
	}
	h.mu.Lock()
	defer h.mu.Unlock()

	br, err := h.nl.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("create veth %s: %s is a %s, not a bridge", hostName, bridge, br.Type())
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: hostName, MTU: br.Attrs().MTU},
		PeerName:         peerName,
		PeerHardwareAddr: mac,
	}
	if err := h.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", hostName, peerName, err)
	}
	fail := func(err error) error {
		if l, lerr := h.nl.LinkByName(hostName); lerr == nil {
			_ = h.nl.LinkDel(l)
		}
		if c, cerr := h.nft(); cerr == nil {
			_ = unguardEndpoints(c, map[string]string{hostName: ""})
		}
		return err
	}
	host, err := h.nl.LinkByName(hostName)
	if err != nil {
		return fail(fmt.Errorf("find veth %s: %w", hostName, err))
	}
	_ = h.nl.LinkSetIP6AddrGenMode(host, inet6AddrGenModeNone)
	// The port drops everything until GuardEndpoint replaces its chain.
	c, err := h.nft()
	if err != nil {
		return fail(err)
	}
	addPending(c, bridge, hostName)
	if err := c.Flush(); err != nil {
		return fail(fmt.Errorf("install pending guard of %s: %w", hostName, err))
	}
	if err := h.nl.LinkSetMaster(host, br); err != nil {
		return fail(fmt.Errorf("attach %s to %s: %w", hostName, bridge, err))
	}
	if err := h.nl.LinkSetUp(host); err != nil {
		return fail(fmt.Errorf("set %s up: %w", hostName, err))
	}
	return nil
}

// DeleteVeth deletes the veth whose host side is hostName (which also
// deletes its peer) and then whatever guard chain or set element names it.
// A missing link is not an error.
func (h *Handle) DeleteVeth(hostName string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return fmt.Errorf("find veth %s: %w", hostName, err)
	case link.Type() != "veth":
		return fmt.Errorf("delete veth %s: link has type %s", hostName, link.Type())
	default:
		if err := h.nl.LinkDel(link); err != nil {
			return fmt.Errorf("delete veth %s: %w", hostName, err)
		}
	}
	c, err := h.nft()
	if err != nil {
		return err
	}
	if err := unguardEndpoints(c, map[string]string{hostName: ""}); err != nil {
		return err
	}
	return deleteEmptyTables(c)
}

func checkIfName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("interface name %q: must be 1 to 15 bytes", name)
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return fmt.Errorf("interface name %q: invalid character %q", name, r)
		}
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}
