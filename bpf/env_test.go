package bpf

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// Test topology (all in namespaces the test creates, addresses in
// 10.201/16, so nothing routes off the machine):
//
//	netns A (enrolled, index 1) cfwb0 10.201.1.2/24 --veth-- H 10.201.1.1 (+10.201.1.3, an ICC peer)
//	netns B (enrolled, index 2) cfwb0 10.201.3.2/24 --veth-- H 10.201.3.1
//	netns C (not enrolled)      cfwb0 10.201.2.2/24 --veth-- H 10.201.2.1
//
// H is the "host side": it holds the stand-in listeners and has
// 10.201.200.0/23 as local addresses (the "internet"), but no route off
// the namespace, so a flow a hook failed to steer or deny dies there.
// A, B and C route everything to H.
//
// The test process itself joins a cgroup it creates (the programs attach
// there, never at the root); sockets it opens while a thread is inside A,
// B or C therefore run through the hooks exactly as a container's would.
// Tests run as root, so every result below also is the uid-0 result: the
// hooks have no uid exemption.

const (
	bannerListener = "L15100" // gateway:15100, the web listener for 443
	bannerSSH      = "L15120" // gateway:15120, a dedicated listener
	bannerCA       = "CA"     // gateway:15002
	dnsAnswerProxy = "10.201.200.5"
	dnsAnswerHost  = "10.201.200.99" // the "real" resolver on H:53
)

type client struct {
	name   string
	ns     string // path
	ip     netip.Addr
	gw     netip.Addr
	subnet netip.Prefix
	index  uint32
	cookie uint64
}

func (c client) endpoint() Endpoint {
	return Endpoint{Index: c.index, IP: c.ip, Gateway: c.gw, Subnet: c.subnet, DNSPort: 15053, CAPort: 15002}
}

type env struct {
	t       *testing.T
	id      string
	cfg     Config
	host    string // H netns path
	a, b, c client
}

func randID(t testing.TB) string {
	var b [3]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return hex.EncodeToString(b[:])
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%s: %s", strings.Join(args, " "), out)
}

// testBPFFS returns a directory on a bpffs owned by this test.
func testBPFFS(t testing.TB, id string) string {
	t.Helper()
	if CheckHostBPFFS("/sys/fs/bpf") == nil {
		dir := "/sys/fs/bpf/clawker-test-bpf-" + id
		require.NoError(t, os.Mkdir(dir, 0o700))
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	// The host has no bpffs mounted: mount a private instance of our own
	// rather than changing the host.
	dir := filepath.Join(os.TempDir(), "clawker-test-bpf-"+id)
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, unix.Mount("bpf", dir, "bpf", 0, "mode=0700"))
	t.Cleanup(func() {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
	})
	return dir
}

func currentCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("no cgroup2 entry in /proc/self/cgroup")
}

// testCgroup creates a cgroup, moves this process into it, and undoes both
// at cleanup (registered before the manager's, so it runs after Remove).
func testCgroup(t testing.TB, id string) string {
	t.Helper()
	root, err := DetectCgroup2()
	require.NoError(t, err)
	orig, err := currentCgroup()
	require.NoError(t, err)
	dir := filepath.Join(root, "clawker-test-bpf-"+id)
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0))
	t.Cleanup(func() {
		back := filepath.Join(root, orig, "cgroup.procs")
		if err := os.WriteFile(back, []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
			t.Errorf("move back to cgroup %s: %v", orig, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}

func addNetns(t testing.TB, name string) string {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/var/run/netns/" + name
}

// newEnv builds the topology, the cgroup and the pin dir; it does not open
// a manager (see openManager).
func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequirePrivileged(t)
	id := randID(t)
	e := &env{t: t, id: id}
	bpffs := testBPFFS(t, id)
	cg := testCgroup(t, id)
	e.cfg = Config{PinDir: filepath.Join(bpffs, "pins"), CgroupPath: cg}

	hName := "cfwb-" + id + "-h"
	e.host = addNetns(t, hName)
	run(t, "ip", "-n", hName, "link", "set", "lo", "up")
	run(t, "ip", "-n", hName, "route", "add", "local", "10.201.200.0/23", "dev", "lo")

	mk := func(suffix string, net3 int, index uint32) client {
		name := "cfwb-" + id + "-" + suffix
		ns := addNetns(t, name)
		hIf := "cfwb" + suffix
		run(t, "ip", "-n", name, "link", "set", "lo", "up")
		run(t, "ip", "-n", name, "link", "add", "cfwb0", "type", "veth", "peer", "name", hIf, "netns", hName)
		run(t, "ip", "-n", name, "addr", "add", fmt.Sprintf("10.201.%d.2/24", net3), "dev", "cfwb0")
		run(t, "ip", "-n", name, "link", "set", "cfwb0", "up")
		run(t, "ip", "-n", name, "route", "add", "default", "via", fmt.Sprintf("10.201.%d.1", net3))
		// As Docker does for containers (per-netns sysctl): ICMP datagram
		// sockets are allowed, so only the hook can refuse them.
		run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
		run(t, "ip", "-n", hName, "addr", "add", fmt.Sprintf("10.201.%d.1/24", net3), "dev", hIf)
		run(t, "ip", "-n", hName, "link", "set", hIf, "up")
		cookie, err := NetnsCookie(ns)
		require.NoError(t, err)
		return client{
			name: suffix, ns: ns, index: index, cookie: cookie,
			ip:     netip.MustParseAddr(fmt.Sprintf("10.201.%d.2", net3)),
			gw:     netip.MustParseAddr(fmt.Sprintf("10.201.%d.1", net3)),
			subnet: netip.MustParsePrefix(fmt.Sprintf("10.201.%d.0/24", net3)),
		}
	}
	e.a = mk("a", 1, 1)
	e.b = mk("b", 3, 2)
	e.c = mk("c", 2, 3)
	// An ICC peer of A: H answers for 10.201.1.3 on A's link.
	run(t, "ip", "-n", hName, "addr", "add", "10.201.1.3/32", "dev", "cfwba")
	e.startListeners()
	return e
}

// openManager opens a manager on the env's pin dir and cgroup and removes
// everything at cleanup.
func (e *env) openManager() *Manager {
	e.t.Helper()
	m, err := Open(e.cfg)
	require.NoError(e.t, err)
	e.t.Cleanup(func() {
		// Remove via a fresh manager so pins go even if m was closed.
		if m2, err := Open(e.cfg); err == nil {
			_ = m2.Remove()
		}
		m.Close()
	})
	return m
}

func (e *env) startListeners() {
	t := e.t
	tcp := map[int]string{15100: bannerListener, 15120: bannerSSH, 15002: bannerCA,
		443: "direct443", 8443: "direct8443", 80: "direct80", 22: "direct22"}
	// UDP stand-ins bind the exact address they answer for: a wildcard
	// socket would reply from the route's source address, which a
	// connected client drops.
	udp := map[string]string{"0.0.0.0:15110": "L15110", "10.201.200.5:7000": "direct7000", "10.201.200.7:7000": "direct7000"}
	var closers []func()
	require.NoError(t, InNetns(e.host, func() error {
		for port, banner := range tcp {
			ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
			if err != nil {
				return err
			}
			closers = append(closers, func() { ln.Close() })
			go serveBanner(ln, banner)
		}
		for addr, banner := range udp {
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return err
			}
			closers = append(closers, func() { pc.Close() })
			go serveUDPBanner(pc, banner)
		}
		for port, answer := range map[int]string{15053: dnsAnswerProxy, 53: dnsAnswerHost} {
			for _, proto := range []string{"udp4", "tcp4"} {
				srv := &dns.Server{Net: proto, Handler: answerHandler(answer)}
				var err error
				addr := fmt.Sprintf("0.0.0.0:%d", port)
				if proto == "udp4" {
					srv.PacketConn, err = net.ListenPacket(proto, addr)
				} else {
					srv.Listener, err = net.Listen(proto, addr)
				}
				if err != nil {
					return err
				}
				closers = append(closers, func() { _ = srv.Shutdown() })
				go func() { _ = srv.ActivateAndServe() }()
			}
		}
		return nil
	}))
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
	})
}

func serveBanner(ln net.Listener, banner string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte(banner + "\n"))
		c.Close()
	}
}

func serveUDPBanner(pc net.PacketConn, banner string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(banner), from)
	}
}

// answerHandler answers A queries with addr, everything else empty.
func answerHandler(addr string) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", r.Question[0].Name, addr))
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	}
}

// result is what a client operation observed.
type result struct {
	banner string // what the server said
	peer   string // getpeername / reply source as the app sees it
	err    error
}

func (r result) String() string {
	return fmt.Sprintf("banner=%q peer=%q err=%v", r.banner, r.peer, r.err)
}

const opTimeout = 2 * time.Second

// dialTCP connects from netns ns and reads the banner.
func dialTCP(ns, network, addr string) (r result) {
	var conn net.Conn
	r.err = InNetns(ns, func() error {
		var err error
		conn, err = net.DialTimeout(network, addr, opTimeout)
		return err
	})
	if r.err != nil {
		return r
	}
	defer conn.Close()
	r.peer = conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(opTimeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	r.banner, r.err = strings.TrimSpace(line), err
	return r
}

// udpConnected connects a UDP socket from ns, sends a datagram and reads
// one reply.
func udpConnected(ns, addr string) (r result) {
	var conn net.Conn
	r.err = InNetns(ns, func() error {
		var err error
		conn, err = net.Dial("udp4", addr)
		return err
	})
	if r.err != nil {
		return r
	}
	defer conn.Close()
	r.peer = conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(opTimeout))
	if _, r.err = conn.Write([]byte("hi")); r.err != nil {
		return r
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	r.banner, r.err = string(buf[:n]), err
	return r
}

// udpUnconnected sends from an unbound, unconnected UDP socket in ns and
// reports the reply and its source as the app sees it (recvmsg).
func udpUnconnected(ns, addr string, payload []byte) (r result, reply []byte) {
	var pc *net.UDPConn
	r.err = InNetns(ns, func() error {
		var err error
		pc, err = net.ListenUDP("udp4", nil)
		return err
	})
	if r.err != nil {
		return r, nil
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(opTimeout))
	if _, r.err = pc.WriteToUDP(payload, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))); r.err != nil {
		return r, nil
	}
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		r.err = err
		return r, nil
	}
	r.peer = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()
	r.banner = string(buf[:n])
	return r, buf[:n]
}

// dnsUnconnected is a resolver that uses an unconnected UDP socket and, as
// musl does, drops replies whose source is not the server it asked.
func dnsUnconnected(ns, server, name string) (r result) {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		return result{err: err}
	}
	r, reply := udpUnconnected(ns, server, wire)
	if r.err != nil {
		return r
	}
	if r.peer != server {
		r.err = fmt.Errorf("reply from %s, asked %s: a resolver drops it", r.peer, server)
		return r
	}
	return dnsAnswer(r, reply)
}

func dnsAnswer(r result, wire []byte) result {
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		r.err = err
		return r
	}
	r.banner = ""
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			r.banner = a.A.String()
		}
	}
	return r
}

// dnsClient resolves name with miekg/dns over a connected socket dialled in
// ns (network "udp" or "tcp").
func dnsClient(ns, network, server, name string) (r result) {
	var conn net.Conn
	r.err = InNetns(ns, func() error {
		var err error
		conn, err = net.DialTimeout(network+"4", server, opTimeout)
		return err
	})
	if r.err != nil {
		return r
	}
	defer conn.Close()
	r.peer = conn.RemoteAddr().String()
	c := &dns.Client{Net: network, Timeout: opTimeout}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	resp, _, err := c.ExchangeWithConn(q, &dns.Conn{Conn: conn})
	if err != nil {
		r.err = err
		return r
	}
	wire, _ := resp.Pack()
	return dnsAnswer(r, wire)
}

// goResolver resolves name with Go's own resolver, its UDP/TCP sockets
// dialled in ns to server.
func goResolver(ns, server, name string) (r result) {
	res := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var conn net.Conn
			err := InNetns(ns, func() error {
				var err error
				d := net.Dialer{Timeout: opTimeout}
				conn, err = d.DialContext(ctx, network, server)
				return err
			})
			return conn, err
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	addrs, err := res.LookupHost(ctx, name)
	if err != nil {
		return result{err: err}
	}
	return result{banner: strings.Join(addrs, ",")}
}

// rawSocket opens a socket of this kind in ns.
func rawSocket(ns string, family, typ, proto int) (r result) {
	r.err = InNetns(ns, func() error {
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	return r
}

// socket6 opens an AF_INET6 socket of type typ in ns with opTimeout for
// sends and receives.
func socket6(ns string, typ int) (int, error) {
	fd := -1
	err := InNetns(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(opTimeout.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd, nil
}

// dialMapped connects an AF_INET6 socket to an IPv4-mapped address (Go's
// net package would use AF_INET) and reads the banner.
func dialMapped(ns string, addr netip.AddrPort) (r result) {
	var fd int
	if fd, r.err = socket6(ns, unix.SOCK_STREAM); r.err != nil {
		return r
	}
	defer unix.Close(fd)
	a16 := netip.AddrFrom16(addr.Addr().As16())
	if r.err = unix.Connect(fd, &unix.SockaddrInet6{Addr: a16.As16(), Port: int(addr.Port())}); r.err != nil {
		return r
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		if s6, ok := sa.(*unix.SockaddrInet6); ok {
			r.peer = netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), uint16(s6.Port)).String()
		}
	}
	buf := make([]byte, 128)
	n, err := unix.Read(fd, buf)
	if err != nil {
		r.err = err
		return r
	}
	r.banner = strings.TrimSpace(string(buf[:n]))
	return r
}
