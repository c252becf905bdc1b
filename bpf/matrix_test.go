package bpf

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Identities and listener ports of the matrix policy.
const (
	idWeb  = 100 // "allowed.example.test", learned as 10.201.200.5, tcp/443 -> 15100
	idCIDR = 200 // 10.201.201.0/24, tcp/8443 untouched (listener port 0)
	idUDP  = 300 // learned as 10.201.200.7, udp/7000 -> 15110
	idHost = 400 // "host.docker.internal", learned as the gateway, tcp/8080 -> 15120
)

// installPolicy enrolls c with the matrix policy.
func installPolicy(t *testing.T, m *Manager, c client) {
	t.Helper()
	require.NoError(t, m.Enroll(c.cookie, c.endpoint()))
	require.NoError(t, m.Learn(c.index, netip.MustParseAddr("10.201.200.5"), idWeb, time.Minute))
	require.NoError(t, m.Learn(c.index, netip.MustParseAddr("10.201.200.7"), idUDP, time.Minute))
	require.NoError(t, m.SyncRoutes(map[uint32][]Route{c.index: {
		{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100},
		{Identity: idCIDR, Port: 8443, L4: 6, ListenerPort: 0},
		{Identity: idUDP, Port: 7000, L4: 17, ListenerPort: 15110},
	}}))
	require.NoError(t, m.SyncCIDRs(map[uint32][]CIDR{c.index: {
		{Prefix: netip.MustParsePrefix("10.201.201.0/24"), Identity: idCIDR},
	}}))
}

// installHost adds what an exact tcp://host.docker.internal:8080 rule gives
// c: the gateway learned under its identity, routed to a listener (and one
// untouched route, which must not open the gateway).
func installHost(t *testing.T, m *Manager, c client) {
	t.Helper()
	require.NoError(t, m.Learn(c.index, c.gw, idHost, time.Minute))
	require.NoError(t, m.SyncRoutes(map[uint32][]Route{c.index: {
		{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100},
		{Identity: idCIDR, Port: 8443, L4: 6, ListenerPort: 0},
		{Identity: idUDP, Port: 7000, L4: 17, ListenerPort: 15110},
		{Identity: idHost, Port: 8080, L4: 6, ListenerPort: 15120},
		{Identity: idHost, Port: 8443, L4: 6, ListenerPort: 0},
	}}))
}

// expect is what one row must observe; nil fields are not checked.
type expect struct {
	banner string
	peer   string
	eperm  bool // the syscall failed with EPERM
	fails  bool // failed, any error but EPERM
	ok     bool // succeeded, nothing else checked
}

func check(t *testing.T, got result, want *expect) {
	t.Helper()
	switch {
	case want.eperm:
		require.Error(t, got.err, "want EPERM, got %s", got)
		require.True(t, errors.Is(got.err, syscall.EPERM), "want EPERM, got %s", got)
	case want.fails:
		require.Error(t, got.err, "want a failure, got %s", got)
		require.False(t, errors.Is(got.err, syscall.EPERM), "want a non-EPERM failure (untouched), got %s", got)
	default:
		require.NoError(t, got.err, "got %s", got)
		if want.banner != "" {
			require.Equal(t, want.banner, got.banner, "got %s", got)
		}
		if want.peer != "" {
			require.Equal(t, want.peer, got.peer, "got %s", got)
		}
	}
}

// TestDecisionMatrix runs every kind of flow from an enrolled namespace (A)
// and from one that is not enrolled (C) through the attached programs. The
// test runs as root: the enrolled results are also the uid-0 results.
func TestDecisionMatrix(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	installPolicy(t, m, e.a)
	installHost(t, m, e.a)
	denials := m.Denials()

	a, c := e.a, e.c
	gwA, gwC := a.gw.String(), c.gw.String()
	// A listener inside each client namespace, on all its addresses.
	// resolver: TCP and UDP listeners on 127.0.0.11 at one random port, as
	// dockerd's embedded resolver has in each container namespace.
	local, resolver := map[string]string{}, map[string]string{}
	for _, cl := range []client{a, c} {
		require.NoError(t, InNetns(cl.ns, func() error {
			ln, err := net.Listen("tcp", ":0")
			if err != nil {
				return err
			}
			t.Cleanup(func() { ln.Close() })
			go serveBanner(ln, "local")
			local[cl.ns] = strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			pc, ln2, err := listenBoth("127.0.0.11")
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close(); ln2.Close() })
			go serveUDPBanner(pc, "dockerd")
			go serveBanner(ln2, "dockerd")
			resolver[cl.ns] = strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
			return nil
		}))
	}
	other := func(ns string) string { return "127.0.0.12:" + local[ns] }
	own := map[string]string{a.ns: a.ip.String(), c.ns: c.ip.String()}
	rows := []struct {
		name     string
		op       func(ns, gw string) result
		enrolled *expect
		plain    *expect
	}{
		{"learned ip allowed port reaches listener, peer is original",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.200.5:443") },
			&expect{banner: bannerListener, peer: "10.201.200.5:443"},
			&expect{banner: "direct443", peer: "10.201.200.5:443"}},
		{"learned ip other port",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.200.5:8443") },
			&expect{eperm: true}, &expect{banner: "direct8443"}},
		{"unknown ip",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.200.6:443") },
			&expect{eperm: true}, &expect{banner: "direct443"}},
		{"ip literal never resolved",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.200.77:22") },
			&expect{eperm: true}, &expect{banner: "direct22"}},
		{"cidr rule with listener 0 is untouched",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.201.9:8443") },
			&expect{banner: "direct8443", peer: "10.201.201.9:8443"}, &expect{banner: "direct8443"}},
		{"cidr address other port",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.201.9:443") },
			&expect{eperm: true}, &expect{banner: "direct443"}},
		{"gateway http goes to the CA listener",
			func(ns, gw string) result { return dialTCP(ns, "tcp4", gw+":80") },
			&expect{banner: bannerCA, peer: gwA + ":80"}, &expect{banner: "direct80"}},
		{"gateway other port",
			func(ns, gw string) result { return dialTCP(ns, "tcp4", gw+":22") },
			&expect{eperm: true}, &expect{banner: "direct22"}},
		{"gateway port routed for host.docker.internal goes to its listener",
			func(ns, gw string) result { return dialTCP(ns, "tcp4", gw+":8080") },
			&expect{banner: bannerSSH, peer: gwA + ":8080"}, &expect{fails: true}},
		{"gateway port with an untouched route is still denied",
			func(ns, gw string) result { return dialTCP(ns, "tcp4", gw+":8443") },
			&expect{eperm: true}, &expect{banner: "direct8443"}},
		{"same-subnet peer without icc",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "10.201.1.3:443") },
			&expect{eperm: true}, nil},
		{"ipv4-mapped ipv6 allowed",
			func(ns, _ string) result { return dialMapped(ns, netip.MustParseAddrPort("[::ffff:10.201.200.5]:443")) },
			&expect{banner: bannerListener, peer: "[::ffff:10.201.200.5]:443"},
			&expect{banner: "direct443", peer: "[::ffff:10.201.200.5]:443"}},
		{"ipv4-mapped ipv6 unknown",
			func(ns, _ string) result { return dialMapped(ns, netip.MustParseAddrPort("[::ffff:10.201.200.6]:443")) },
			&expect{eperm: true}, &expect{banner: "direct443"}},
		{"native ipv6",
			func(ns, _ string) result { return dialTCP(ns, "tcp6", "[fd00:201::5]:443") },
			&expect{eperm: true}, &expect{fails: true}},
		{"ipv6 loopback untouched",
			func(ns, _ string) result { return dialTCP(ns, "tcp6", "[::1]:1") },
			&expect{fails: true}, &expect{fails: true}},
		{"ipv4 loopback untouched",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "127.0.0.1:1") },
			&expect{fails: true}, &expect{fails: true}},
		{"loopback listener in the namespace",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "127.0.0.1:"+local[ns]) },
			&expect{banner: "local"}, &expect{banner: "local"}},
		{"own address",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", own[ns]+":"+local[ns]) },
			&expect{banner: "local"}, &expect{banner: "local"}},
		{"0.0.0.0 is the local host",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "0.0.0.0:"+local[ns]) },
			&expect{banner: "local"}, &expect{banner: "local"}},
		{"ipv6 loopback listener in the namespace",
			func(ns, _ string) result { return dialTCP(ns, "tcp6", "[::1]:"+local[ns]) },
			&expect{banner: "local"}, &expect{banner: "local"}},
		{"docker's resolver on its real tcp port",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", "127.0.0.11:"+resolver[ns]) },
			&expect{eperm: true}, &expect{banner: "dockerd"}},
		{"docker's resolver on its real udp port, connected",
			func(ns, _ string) result { return udpConnected(ns, "127.0.0.11:"+resolver[ns]) },
			&expect{eperm: true}, &expect{banner: "dockerd"}},
		{"docker's resolver on its real udp port, unconnected",
			func(ns, _ string) result {
				r, _ := udpUnconnected(ns, "127.0.0.11:"+resolver[ns], []byte("hi"))
				return r
			},
			&expect{eperm: true}, &expect{banner: "dockerd"}},
		{"docker's resolver ipv4-mapped tcp",
			func(ns, _ string) result {
				return dialMapped(ns, netip.MustParseAddrPort("[::ffff:127.0.0.11]:"+resolver[ns]))
			},
			&expect{eperm: true}, &expect{banner: "dockerd"}},
		{"docker's resolver ipv4-mapped udp, unconnected (sendmsg6)",
			func(ns, _ string) result {
				return udpMapped(ns, netip.MustParseAddrPort("[::ffff:127.0.0.11]:"+resolver[ns]))
			},
			&expect{eperm: true}, &expect{banner: "dockerd"}},
		{"docker's resolver on any other port (nothing listens)",
			func(ns, _ string) result { return udpConnected(ns, "127.0.0.11:5353") },
			&expect{eperm: true}, &expect{fails: true}},
		{"another loopback address is the container's own",
			func(ns, _ string) result { return dialTCP(ns, "tcp4", other(ns)) },
			&expect{banner: "local"}, &expect{banner: "local"}},
		{"go resolver over connected udp to 127.0.0.11",
			func(ns, _ string) result { return goResolver(ns, "127.0.0.11:53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy}, &expect{fails: true}},
		{"go resolver over connected udp to the gateway resolver",
			func(ns, gw string) result { return goResolver(ns, gw+":53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy}, &expect{banner: dnsAnswerHost}},
		{"miekg client connected udp to 127.0.0.11, peer is original",
			func(ns, _ string) result { return dnsClient(ns, "udp", "127.0.0.11:53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy, peer: "127.0.0.11:53"}, &expect{fails: true}},
		{"miekg client tcp to another resolver address",
			func(ns, _ string) result { return dnsClient(ns, "tcp", "10.201.200.53:53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy, peer: "10.201.200.53:53"}, &expect{banner: dnsAnswerHost}},
		{"unconnected udp dns to 127.0.0.11, reply source is original",
			func(ns, _ string) result { return dnsUnconnected(ns, "127.0.0.11:53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy, peer: "127.0.0.11:53"}, nil},
		{"unconnected udp dns to the gateway resolver",
			func(ns, gw string) result { return dnsUnconnected(ns, gw+":53", "allowed.example.test.") },
			&expect{banner: dnsAnswerProxy}, &expect{banner: dnsAnswerHost}},
		{"connected udp on an allowed udp route",
			func(ns, _ string) result { return udpConnected(ns, "10.201.200.7:7000") },
			&expect{banner: "L15110", peer: "10.201.200.7:7000"}, &expect{banner: "direct7000"}},
		{"unconnected udp on an allowed udp route, reply source is original",
			func(ns, _ string) result {
				r, _ := udpUnconnected(ns, "10.201.200.7:7000", []byte("hi"))
				return r
			},
			&expect{banner: "L15110", peer: "10.201.200.7:7000"}, &expect{banner: "direct7000"}},
		{"other udp connected",
			func(ns, _ string) result { return udpConnected(ns, "10.201.200.5:7000") },
			&expect{eperm: true}, &expect{banner: "direct7000"}},
		{"other udp unconnected",
			func(ns, _ string) result {
				r, _ := udpUnconnected(ns, "10.201.200.5:7000", []byte("hi"))
				return r
			},
			&expect{eperm: true}, &expect{banner: "direct7000"}},
		{"raw socket",
			func(ns, _ string) result { return rawSocket(ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP) },
			&expect{eperm: true}, &expect{ok: true}},
		{"raw ipv6 socket",
			func(ns, _ string) result { return rawSocket(ns, unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6) },
			&expect{eperm: true}, &expect{ok: true}},
		{"icmp datagram socket",
			func(ns, _ string) result { return rawSocket(ns, unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP) },
			&expect{eperm: true}, &expect{ok: true}},
		{"plain tcp and udp sockets can be created",
			func(ns, _ string) result { return rawSocket(ns, unix.AF_INET, unix.SOCK_STREAM, 0) },
			&expect{ok: true}, &expect{ok: true}},
	}
	for _, row := range rows {
		t.Run(strings.ReplaceAll(row.name, " ", "_"), func(t *testing.T) {
			t.Run("enrolled", func(t *testing.T) {
				check(t, row.op(a.ns, gwA), row.enrolled)
			})
			if row.plain != nil {
				t.Run("not_enrolled", func(t *testing.T) {
					check(t, row.op(c.ns, gwC), row.plain)
				})
			}
		})
	}

	t.Run("icc allows same-subnet peers", func(t *testing.T) {
		ep := a.endpoint()
		ep.ICC = true
		require.NoError(t, m.Enroll(a.cookie, ep))
		defer func() { require.NoError(t, m.Enroll(a.cookie, a.endpoint())) }()
		check(t, dialTCP(a.ns, "tcp4", "10.201.1.3:443"), &expect{banner: "direct443"})
	})

	t.Run("bypass leaves flows untouched until it ends", func(t *testing.T) {
		require.NoError(t, m.SetBypass(a.cookie, time.Now().Add(time.Minute)))
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.6:443"), &expect{banner: "direct443"})
		require.NoError(t, m.SetBypass(a.cookie, time.Time{}))
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})
	})

	t.Run("unenrolled namespace is untouched", func(t *testing.T) {
		require.NoError(t, m.Unenroll(a.cookie))
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.6:443"), &expect{banner: "direct443"})
		require.NoError(t, m.Enroll(a.cookie, a.endpoint()))
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})
	})

	t.Run("counters", func(t *testing.T) {
		cnt, err := m.Counters(a.index)
		require.NoError(t, err)
		require.NotZero(t, cnt.Allowed)
		require.NotZero(t, cnt.Denied)
		require.NotZero(t, cnt.DNS)
		none, err := m.Counters(c.index)
		require.NoError(t, err)
		require.Zero(t, none, "a namespace that is not enrolled is not counted")
	})

	t.Run("denial events", func(t *testing.T) {
		// Drain what the matrix produced, then cause one of each kind.
		drain(denials)
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})
		check(t, dialTCP(a.ns, "tcp4", "10.201.200.5:8443"), &expect{eperm: true})
		check(t, rawSocket(a.ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP), &expect{eperm: true})
		check(t, udpConnected(a.ns, "127.0.0.11:"+resolver[a.ns]), &expect{eperm: true})
		got := []Denial{next(t, denials), next(t, denials), next(t, denials), next(t, denials)}
		require.Equal(t, ReasonUnknownDest, got[0].Reason)
		require.Equal(t, netip.MustParseAddr("10.201.200.6"), got[0].Addr)
		require.Equal(t, uint16(443), got[0].Port)
		require.Equal(t, uint8(6), got[0].L4)
		require.Equal(t, a.index, got[0].Index)
		require.WithinDuration(t, time.Now(), got[0].Time, 5*time.Second)
		require.Equal(t, ReasonNoRoute, got[1].Reason)
		require.Equal(t, uint32(idWeb), got[1].Identity)
		require.Equal(t, uint16(8443), got[1].Port)
		require.Equal(t, ReasonRawSocket, got[2].Reason)
		require.Equal(t, ReasonResolver, got[3].Reason)
		require.Equal(t, netip.MustParseAddr("127.0.0.11"), got[3].Addr)
		require.Equal(t, uint8(17), got[3].L4)
	})
}

// listenBoth binds UDP and TCP on addr at one free port.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	for range 50 {
		pc, err := net.ListenPacket("udp4", addr+":0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, errors.New("no port free for both udp and tcp")
}

// udpMapped sends from an unconnected AF_INET6 UDP socket to an IPv4-mapped
// address (sendmsg6) and reads one reply.
func udpMapped(ns string, addr netip.AddrPort) (r result) {
	var fd int
	if fd, r.err = socket6(ns, unix.SOCK_DGRAM); r.err != nil {
		return r
	}
	defer unix.Close(fd)
	if r.err = unix.Sendto(fd, []byte("hi"), 0, &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}); r.err != nil {
		return r
	}
	buf := make([]byte, 128)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		r.err = err
		return r
	}
	r.banner = string(buf[:n])
	return r
}

func drain(ch <-chan Denial) {
	for {
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func next(t *testing.T, ch <-chan Denial) Denial {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(3 * time.Second):
		t.Fatal("no denial event within 3s")
		return Denial{}
	}
}
