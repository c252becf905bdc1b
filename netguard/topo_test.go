package netguard

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The test topology, all in network namespaces the test creates:
//
//	c1 (10.202.1.2) --veth-- [bridge 10.202.1.1/24 in "host"] --veth-- c2 (10.202.1.3)
//	                          host 10.202.2.1/30 --veth-- far 10.202.2.2/30
//
// "host" plays the plugin's namespace (ip_forward on, so that without the
// guard packets from c1 are routed to "far", the fake internet).
var (
	subnet  = netip.MustParsePrefix("10.202.1.0/24")
	gwAddr  = netip.MustParseAddr("10.202.1.1")
	c1Addr  = netip.MustParseAddr("10.202.1.2")
	c2Addr  = netip.MustParseAddr("10.202.1.3")
	farAddr = netip.MustParseAddr("10.202.2.2")
	// hostFarAddr is the host's own address on the link to far.
	hostFarAddr = netip.MustParseAddr("10.202.2.1")
	// unrouted is an address nothing owns (not even routed in "host").
	unrouted = netip.MustParseAddr("10.202.9.9")
)

const (
	dnsPort         = 15053
	transparentPort = 15001
	caPort          = 15002
	allocLo         = 15100
	// hostService is a port of the reserved range that some host service
	// listens on and that no network's listeners use.
	hostService = 15101
	// closedPort is a host port with a listener that is not one of the
	// plugin's: only reachable when the guard is missing.
	closedPort = 7777
)

type topo struct {
	t                  *testing.T
	h                  *Handle
	sfx                string
	host, c1, c2, far  netns.NsHandle
	hostN, c1N, c2N    string
	farN               string
	br, v1, v2, p1, p2 string
	hf, ff             string // host side and far side of the far link
	mac1, mac2, gwMAC  net.HardwareAddr
	network            Network
	ep1, ep2           Endpoint
}

func randSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%s: %s", strings.Join(args, " "), out)
	return string(out)
}

func newNS(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	require.NoError(t, err)
	t.Cleanup(func() { ns.Close() })
	return ns
}

// inNS runs fn on a thread switched into ns; sockets created in fn live in ns.
func inNS(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	require.NoError(t, err)
	defer orig.Close()
	require.NoError(t, netns.Set(ns))
	fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go discards it when the goroutine ends.
		t.Fatalf("restore netns: %v", err)
	}
	runtime.UnlockOSThread()
}

// newTopo builds the topology with no guard installed.
func newTopo(t *testing.T) *topo {
	testutil.RequirePrivileged(t)
	_, err := exec.LookPath("ip")
	testutil.Require(t, err == nil, "ip (iproute2) on PATH")
	s := randSuffix()
	tp := &topo{
		t: t, sfx: s,
		hostN: "cfwnh" + s, c1N: "cfwn1" + s, c2N: "cfwn2" + s, farN: "cfwnf" + s,
		br: "cfwnb" + s, v1: "cfwnv1" + s, v2: "cfwnv2" + s, p1: "cfwnp1" + s, p2: "cfwnp2" + s,
		hf: "cfwnhf" + s, ff: "cfwnff" + s,
		mac1: net.HardwareAddr{0x02, 0x42, 0x0a, 0xca, 0x01, 0x02},
		mac2: net.HardwareAddr{0x02, 0x42, 0x0a, 0xca, 0x01, 0x03},
	}
	tp.host = newNS(t, tp.hostN)
	tp.c1 = newNS(t, tp.c1N)
	tp.c2 = newNS(t, tp.c2N)
	tp.far = newNS(t, tp.farN)
	h, err := New(tp.host)
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	tp.h = h

	require.NoError(t, h.EnsureBridge(tp.br, netip.PrefixFrom(gwAddr, 24)))
	require.NoError(t, h.CreateVeth(tp.v1, tp.p1, tp.br, tp.mac1))
	require.NoError(t, h.CreateVeth(tp.v2, tp.p2, tp.br, tp.mac2))
	// CreateVeth leaves the ports dropping everything until GuardEndpoint; the
	// unguarded control topology removes that.
	tp.dropEndpointChains()

	ipn := func(ns string, args ...string) { run(t, append([]string{"ip", "-n", ns}, args...)...) }
	for _, c := range []struct {
		ns, peer string
		addr     netip.Addr
	}{{tp.c1N, tp.p1, c1Addr}, {tp.c2N, tp.p2, c2Addr}} {
		ipn(tp.hostN, "link", "set", c.peer, "netns", c.ns)
		ipn(c.ns, "link", "set", "lo", "up")
		ipn(c.ns, "addr", "add", c.addr.String()+"/24", "dev", c.peer)
		ipn(c.ns, "link", "set", c.peer, "up")
		ipn(c.ns, "route", "add", "default", "via", gwAddr.String())
	}
	ipn(tp.hostN, "link", "set", "lo", "up")
	ipn(tp.hostN, "link", "add", tp.hf, "type", "veth", "peer", "name", tp.ff, "netns", tp.farN)
	ipn(tp.hostN, "addr", "add", hostFarAddr.String()+"/30", "dev", tp.hf)
	ipn(tp.hostN, "link", "set", tp.hf, "up")
	ipn(tp.farN, "link", "set", "lo", "up")
	ipn(tp.farN, "addr", "add", farAddr.String()+"/30", "dev", tp.ff)
	ipn(tp.farN, "link", "set", tp.ff, "up")
	ipn(tp.farN, "route", "add", subnet.String(), "via", hostFarAddr.String())
	// ip_forward only inside our own "host" namespace.
	run(t, "ip", "netns", "exec", tp.hostN, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

	brl, err := h.nl.LinkByName(tp.br)
	require.NoError(t, err)
	tp.gwMAC = brl.Attrs().HardwareAddr

	tp.network = Network{
		Bridge: tp.br, Subnet: subnet, Gateway: gwAddr, ICC: true,
		DNSPort: dnsPort, TransparentPort: transparentPort, CAPort: caPort,
	}
	// The plugin's bound listeners, and the one this network's routes use.
	lp := Ports{TCP: []uint16{allocLo, dnsPort, transparentPort, caPort}, UDP: []uint16{allocLo, dnsPort}}
	require.NoError(t, h.SetListenerPorts(lp, map[string]Ports{tp.br: {TCP: []uint16{allocLo}, UDP: []uint16{allocLo}}}))
	tp.ep1 = Endpoint{Bridge: tp.br, HostVeth: tp.v1, IP: c1Addr, MAC: tp.mac1}
	tp.ep2 = Endpoint{Bridge: tp.br, HostVeth: tp.v2, IP: c2Addr, MAC: tp.mac2}
	t.Cleanup(func() {
		if err := h.Cleanup(tp.br); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		_ = h.DeleteVeth(tp.hf)
	})
	return tp
}

// dropEndpointChains removes the pending (drop-all) chains that CreateVeth
// installed, for the unguarded control.
func (tp *topo) dropEndpointChains() {
	c, err := tp.h.nft()
	require.NoError(tp.t, err)
	require.NoError(tp.t, unguardEndpoints(c, map[string]string{tp.v1: "", tp.v2: ""}))
	require.NoError(tp.t, deleteEmptyTables(c))
}

func (tp *topo) guard(icc bool) {
	tp.network.ICC = icc
	require.NoError(tp.t, tp.h.GuardNetwork(tp.network))
	require.NoError(tp.t, tp.h.GuardEndpoint(tp.ep1))
	require.NoError(tp.t, tp.h.GuardEndpoint(tp.ep2))
}

func (tp *topo) nft(ns string, args ...string) string {
	return run(tp.t, append([]string{"ip", "netns", "exec", ns, "nft"}, args...)...)
}

// ---- recorders -------------------------------------------------------------

// event is something a stand-in listener or a capture saw.
type event struct {
	what string // "udp", "tcp", "pkt"
	src  netip.AddrPort
	dst  netip.AddrPort // for pkt: IPv4 destination; for tcp on 15001: SO_ORIGINAL_DST
	l4   uint8
	data string
}

type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) add(e event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events...)
}

func (r *recorder) find(match func(event) bool) (event, bool) {
	for _, e := range r.snapshot() {
		if match(e) {
			return e, true
		}
	}
	return event{}, false
}

// waitFor waits up to 3 s for an event that matches.
func (r *recorder) waitFor(t testing.TB, what string, match func(event) bool) event {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if e, ok := r.find(match); ok {
			return e
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("never saw %s; saw %+v", what, r.snapshot())
	return event{}
}

// never checks that no matching event shows up within a settle time.
func (r *recorder) never(t testing.TB, what string, match func(event) bool) {
	t.Helper()
	time.Sleep(400 * time.Millisecond)
	if e, ok := r.find(match); ok {
		t.Fatalf("%s: saw %+v", what, e)
	}
}

func fromC1(e event) bool { return e.src.Addr() == c1Addr }

// ---- stand-in listeners ----------------------------------------------------

// listenUDP records datagrams on port in ns and answers "ok".
func listenUDP(t *testing.T, ns netns.NsHandle, port int, rec *recorder) {
	var pc net.PacketConn
	var err error
	inNS(t, ns, func() { pc, err = net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port)) })
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort()
			rec.add(event{what: "udp", src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), data: string(buf[:n])})
			_, _ = pc.WriteTo([]byte("ok"), from)
		}
	}()
}

// listenTCP records connections on port in ns; with origDst it reads
// SO_ORIGINAL_DST like the plugin's transparent listener and writes it back.
func listenTCP(t *testing.T, ns netns.NsHandle, port int, origDst bool, rec *recorder) {
	var ln net.Listener
	var err error
	inNS(t, ns, func() { ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port)) })
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			src := conn.RemoteAddr().(*net.TCPAddr).AddrPort()
			e := event{what: "tcp", src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port())}
			if origDst {
				e.dst, err = originalDst(conn.(*net.TCPConn))
				if err != nil {
					e.data = err.Error()
				}
			}
			rec.add(e)
			_, _ = fmt.Fprintf(conn, "%s\n", e.dst)
			conn.Close()
		}
	}()
}

// originalDst reads SO_ORIGINAL_DST (SOL_IP 80) of a redirected connection.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa unix.RawSockaddrInet4
	var serr error
	err = raw.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, 80, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", serr)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}

// capture records every IPv4 packet seen on interface ifName in ns (an
// AF_PACKET socket, like tcpdump), and every frame's ethertype.
func capture(t *testing.T, ns netns.NsHandle, ifName string, rec *recorder) {
	var fd int
	var err error
	inNS(t, ns, func() {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return
		}
		var ifi *net.Interface
		ifi, err = net.InterfaceByName(ifName)
		if err != nil {
			return
		}
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; unix.Close(fd) })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for ctx.Err() == nil {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
					continue
				}
				return
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			rec.add(parseFrame(buf[:n]))
		}
	}()
}

func parseFrame(f []byte) event {
	e := event{what: "pkt"}
	if len(f) < 14 {
		return e
	}
	et := binary.BigEndian.Uint16(f[12:14])
	e.data = fmt.Sprintf("ethertype=%#04x src=%s", et, net.HardwareAddr(f[6:12]))
	if et != 0x0800 || len(f) < 34 {
		return e
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	e.l4 = ip[9]
	var sport, dport uint16
	if (e.l4 == unix.IPPROTO_TCP || e.l4 == unix.IPPROTO_UDP) && len(ip) >= ihl+4 {
		sport = binary.BigEndian.Uint16(ip[ihl:])
		dport = binary.BigEndian.Uint16(ip[ihl+2:])
	}
	e.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), sport)
	e.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), dport)
	return e
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ---- clients in c1 ---------------------------------------------------------

// dialTCP connects from ns to dst with a short timeout and returns the first
// line the server sent.
func dialTCP(t *testing.T, ns netns.NsHandle, dst netip.AddrPort) (string, error) {
	var conn net.Conn
	var err error
	inNS(t, ns, func() { conn, err = net.DialTimeout("tcp4", dst.String(), 700*time.Millisecond) })
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if n > 0 {
		err = nil
	}
	return strings.TrimSpace(string(buf[:n])), err
}

// sendUDP sends one datagram from ns to dst and waits briefly for an answer,
// which must come from dst (the socket is connected).
func sendUDP(t *testing.T, ns netns.NsHandle, dst netip.AddrPort, payload string) (string, error) {
	var conn *net.UDPConn
	var err error
	inNS(t, ns, func() { conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst)) })
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte(payload))
	require.NoError(t, err)
	_ = conn.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	return string(buf[:n]), err
}

// ping sends one ICMP echo request from ns to dst (raw socket).
func ping(t *testing.T, ns netns.NsHandle, dst netip.Addr) {
	var fd int
	var err error
	inNS(t, ns, func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP) })
	require.NoError(t, err)
	defer unix.Close(fd)
	msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'c', 'f', 'w', 'n'}
	binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
	require.NoError(t, unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: dst.As4()}))
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// sendFrame sends a raw Ethernet frame out of ifName in ns (AF_PACKET, which
// containers can use with the default NET_RAW).
func sendFrame(t *testing.T, ns netns.NsHandle, ifName string, frame []byte) {
	var fd int
	var ifi *net.Interface
	var err error
	inNS(t, ns, func() {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			ifi, err = net.InterfaceByName(ifName)
		}
	})
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}))
}

func ethHeader(dst, src net.HardwareAddr, etherType uint16) []byte {
	h := make([]byte, 14)
	copy(h, dst)
	copy(h[6:], src)
	binary.BigEndian.PutUint16(h[12:], etherType)
	return h
}

// udpFrame builds an Ethernet/IPv4/UDP frame (UDP checksum 0: none).
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload string) []byte {
	ip := make([]byte, 20+8+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip[:20]))
	binary.BigEndian.PutUint16(ip[20:], src.Port())
	binary.BigEndian.PutUint16(ip[22:], dst.Port())
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(payload)))
	copy(ip[28:], payload)
	return append(ethHeader(dstMAC, srcMAC, 0x0800), ip...)
}

// arpFrame builds an ARP reply: sender (sha, spa) to target (tha, tpa).
func arpFrame(dstMAC, srcMAC, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 2) // reply
	s4, t4 := spa.As4(), tpa.As4()
	copy(a[8:], sha)
	copy(a[14:], s4[:])
	copy(a[18:], tha)
	copy(a[24:], t4[:])
	return append(ethHeader(dstMAC, srcMAC, 0x0806), a...)
}

// neighMAC returns the MAC the host namespace has for addr ("" if none).
func (tp *topo) neighMAC(addr netip.Addr) string {
	out := run(tp.t, "ip", "-n", tp.hostN, "neigh", "show", addr.String(), "dev", tp.br)
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}
