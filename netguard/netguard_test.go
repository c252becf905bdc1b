package netguard

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/stretchr/testify/require"
)

// egressTopo adds the stand-in listeners of the plugin in "host" (DNS on
// udp/tcp dnsPort, the transparent listener reading SO_ORIGINAL_DST, one
// allocated listener) and recorders: a listener on a non-plugin host port
// (udp and tcp) and a capture on far's interface.
type egress struct {
	*topo
	dns, transparent, alloc, closed, farCap *recorder
}

func newEgress(t *testing.T) *egress {
	tp := newTopo(t)
	e := &egress{topo: tp, dns: &recorder{}, transparent: &recorder{}, alloc: &recorder{}, closed: &recorder{}, farCap: &recorder{}}
	listenUDP(t, tp.host, dnsPort, e.dns)
	listenTCP(t, tp.host, dnsPort, false, e.dns)
	listenTCP(t, tp.host, transparentPort, true, e.transparent)
	listenTCP(t, tp.host, allocLo, false, e.alloc)
	listenUDP(t, tp.host, closedPort, e.closed)
	listenTCP(t, tp.host, closedPort, false, e.closed)
	// far answers like a real server would, and its wire is captured.
	listenTCP(t, tp.far, 443, false, &recorder{})
	listenUDP(t, tp.far, 9999, &recorder{})
	capture(t, tp.far, tp.ff, e.farCap)
	return e
}

func farFromC1(l4 uint8, port uint16) func(event) bool {
	return func(e event) bool {
		return e.what == "pkt" && e.src.Addr() == c1Addr && e.l4 == l4 && (port == 0 || e.dst.Port() == port)
	}
}

const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

// TestControlWithoutGuard proves the topology would leak: with no guard, c1's
// TCP, UDP and ICMP are routed to far and reach the host's other ports. If
// this failed, the guarded test below could pass for the wrong reason.
func TestControlWithoutGuard(t *testing.T) {
	e := newEgress(t)
	farTCP := netip.AddrPortFrom(farAddr, 443)

	_, err := dialTCP(t, e.c1, farTCP)
	require.NoError(t, err, "without the guard c1 reaches far over TCP")
	e.farCap.waitFor(t, "TCP SYN from c1 in far", farFromC1(protoTCP, 443))

	_, _ = sendUDP(t, e.c1, netip.AddrPortFrom(farAddr, 9999), "x")
	e.farCap.waitFor(t, "UDP from c1 in far", farFromC1(protoUDP, 9999))

	ping(t, e.c1, farAddr)
	e.farCap.waitFor(t, "ICMP from c1 in far", farFromC1(protoICMP, 0))

	_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, closedPort))
	require.NoError(t, err)
	_, _ = sendUDP(t, e.c1, netip.AddrPortFrom(gwAddr, closedPort), "x")
	e.closed.waitFor(t, "TCP to a non-plugin host port", func(ev event) bool { return ev.what == "tcp" && fromC1(ev) })
	e.closed.waitFor(t, "UDP to a non-plugin host port", func(ev event) bool { return ev.what == "udp" && fromC1(ev) })

	// DNS to an arbitrary address is not redirected without the guard.
	_, err = sendUDP(t, e.c1, netip.AddrPortFrom(farAddr, 53), "q")
	require.Error(t, err)
	e.farCap.waitFor(t, "DNS from c1 in far", farFromC1(protoUDP, 53))
	require.Empty(t, e.dns.snapshot())
}

// TestGuardedNetworkFailsClosed: with the guard, nothing from c1 reaches far
// or a non-plugin host port, while DNS and outbound TCP are redirected to the
// plugin's listeners, which see the original destination.
func TestGuardedNetworkFailsClosed(t *testing.T) {
	e := newEgress(t)
	e.guard(true)

	t.Run("tcp to far is redirected to the transparent listener", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{
			netip.AddrPortFrom(farAddr, 443),
			netip.AddrPortFrom(unrouted, 22),
			netip.AddrPortFrom(hostFarAddr, closedPort), // another host address
		} {
			line, err := dialTCP(t, e.c1, dst)
			require.NoError(t, err, dst)
			require.Equal(t, dst.String(), line, "the listener reads SO_ORIGINAL_DST")
			ev := e.transparent.waitFor(t, "redirected "+dst.String(), func(ev event) bool { return ev.dst == dst })
			require.Equal(t, c1Addr, ev.src.Addr(), "no NAT of the source")
		}
	})

	t.Run("dns to any address is redirected to the DNS listener", func(t *testing.T) {
		for _, dst := range []netip.Addr{farAddr, unrouted, gwAddr, c2Addr} {
			payload := "q-" + dst.String()
			ans, err := sendUDP(t, e.c1, netip.AddrPortFrom(dst, 53), payload)
			require.NoError(t, err, "udp dns to %s", dst)
			require.Equal(t, "ok", ans, "the answer appears to come from %s", dst)
			e.dns.waitFor(t, "udp "+payload, func(ev event) bool { return ev.what == "udp" && ev.data == payload && fromC1(ev) })
		}
		_, err := dialTCP(t, e.c1, netip.AddrPortFrom(unrouted, 53))
		require.NoError(t, err, "tcp dns")
		e.dns.waitFor(t, "tcp dns", func(ev event) bool { return ev.what == "tcp" && fromC1(ev) })
	})

	t.Run("plugin ports on the gateway are reachable", func(t *testing.T) {
		ans, err := sendUDP(t, e.c1, netip.AddrPortFrom(gwAddr, dnsPort), "direct")
		require.NoError(t, err)
		require.Equal(t, "ok", ans)
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, allocLo))
		require.NoError(t, err)
		e.alloc.waitFor(t, "allocated listener", fromC1)
	})

	t.Run("transparent port is reachable only by redirected flows", func(t *testing.T) {
		before := len(e.transparent.snapshot())
		_, err := dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, transparentPort))
		require.Error(t, err)
		require.Len(t, e.transparent.snapshot(), before)
	})

	t.Run("nothing else leaves", func(t *testing.T) {
		_, err := sendUDP(t, e.c1, netip.AddrPortFrom(farAddr, 9999), "x")
		require.Error(t, err)
		ping(t, e.c1, farAddr)
		ping(t, e.c1, gwAddr)
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, closedPort))
		require.Error(t, err)
		_, err = sendUDP(t, e.c1, netip.AddrPortFrom(gwAddr, closedPort), "x")
		require.Error(t, err)
		_, err = sendUDP(t, e.c1, netip.AddrPortFrom(hostFarAddr, closedPort), "x")
		require.Error(t, err)

		e.farCap.never(t, "a packet from c1 in far", func(ev event) bool { return ev.what == "pkt" && ev.src.Addr() == c1Addr })
		require.Empty(t, e.closed.snapshot(), "non-plugin host port")
	})

	t.Run("guard is idempotent", func(t *testing.T) {
		before := e.nft(e.hostN, "list", "ruleset")
		e.guard(true)
		require.Equal(t, countRules(before), countRules(e.nft(e.hostN, "list", "ruleset")))
		line, err := dialTCP(t, e.c1, netip.AddrPortFrom(farAddr, 443))
		require.NoError(t, err)
		require.Equal(t, netip.AddrPortFrom(farAddr, 443).String(), line)
	})
}

func countRules(ruleset string) int { return strings.Count(ruleset, "comment \"clawker-fw") }

// TestAntiSpoofing: frames from c1 with a forged source IP or MAC, or an ARP
// reply claiming c2's IP, never reach the host or c2. The same frames do
// arrive without the guard (control), and honest raw frames pass with it.
func TestAntiSpoofing(t *testing.T) {
	for _, guarded := range []bool{false, true} {
		t.Run(fmt.Sprintf("guarded=%v", guarded), func(t *testing.T) {
			tp := newTopo(t)
			hostRec, c2Rec := &recorder{}, &recorder{}
			listenUDP(t, tp.host, dnsPort, hostRec)
			listenUDP(t, tp.c2, 9000, c2Rec)
			c2Cap := &recorder{}
			capture(t, tp.c2, tp.p2, c2Cap)
			if guarded {
				tp.guard(true)
			}
			// c2 talks to the host first, so the host has a neighbour entry
			// for c2 that a forged ARP reply could overwrite.
			_, err := sendUDP(t, tp.c2, netip.AddrPortFrom(gwAddr, dnsPort), "hello")
			require.NoError(t, err)
			require.Equal(t, tp.mac2.String(), tp.neighMAC(c2Addr))

			forgedMAC := net.HardwareAddr{0x02, 0x42, 0x0a, 0xca, 0x01, 0x99}
			spoofIP := netip.MustParseAddr("10.202.1.99")
			hostDNS := netip.AddrPortFrom(gwAddr, dnsPort)
			c2Port := netip.AddrPortFrom(c2Addr, 9000)
			frames := []struct {
				name, payload string
				frame         []byte
				rec           *recorder
				honest        bool
			}{
				{"honest to host", "honest-h", nil, hostRec, true},
				{"forged IP to host", "fip-h", nil, hostRec, false},
				{"c2's IP to host", "c2ip-h", nil, hostRec, false},
				{"forged MAC to host", "fmac-h", nil, hostRec, false},
				{"honest to c2", "honest-c2", nil, c2Rec, true},
				{"forged IP to c2", "fip-c2", nil, c2Rec, false},
				{"forged MAC to c2", "fmac-c2", nil, c2Rec, false},
			}
			src := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 40000) }
			frames[0].frame = udpFrame(tp.gwMAC, tp.mac1, src(c1Addr), hostDNS, frames[0].payload)
			frames[1].frame = udpFrame(tp.gwMAC, tp.mac1, src(spoofIP), hostDNS, frames[1].payload)
			frames[2].frame = udpFrame(tp.gwMAC, tp.mac1, src(c2Addr), hostDNS, frames[2].payload)
			frames[3].frame = udpFrame(tp.gwMAC, forgedMAC, src(c1Addr), hostDNS, frames[3].payload)
			frames[4].frame = udpFrame(tp.mac2, tp.mac1, src(c1Addr), c2Port, frames[4].payload)
			frames[5].frame = udpFrame(tp.mac2, tp.mac1, src(spoofIP), c2Port, frames[5].payload)
			frames[6].frame = udpFrame(tp.mac2, forgedMAC, src(c1Addr), c2Port, frames[6].payload)
			// c2 must know c1's MAC for the honest frame's reply path; not
			// needed: the listener only records.
			for _, f := range frames {
				sendFrame(t, tp.c1, tp.p1, f.frame)
			}
			// Frames of other ethertypes (IPv6, a raw experimental type) to c2.
			ip6 := append(ethHeader(tp.mac2, tp.mac1, 0x86dd), make([]byte, 40)...)
			raw := append(ethHeader(tp.mac2, tp.mac1, 0x88b5), []byte("raw ethertype payload.........................")...)
			sendFrame(t, tp.c1, tp.p1, ip6)
			sendFrame(t, tp.c1, tp.p1, raw)

			// Forged ARP reply claiming c2's IP is at c1's MAC, after the
			// neighbour lock time (1 s) so that the kernel would accept it.
			time.Sleep(1100 * time.Millisecond)
			sendFrame(t, tp.c1, tp.p1, arpFrame(tp.gwMAC, tp.mac1, tp.mac1, c2Addr, tp.gwMAC, gwAddr))

			for _, f := range frames {
				match := func(ev event) bool { return ev.data == f.payload }
				if f.honest || !guarded {
					f.rec.waitFor(t, f.name, match)
				} else {
					f.rec.never(t, f.name, match)
				}
			}
			otherType := func(et string) func(event) bool {
				return func(ev event) bool { return ev.data == "ethertype="+et+" src="+tp.mac1.String() }
			}
			if guarded {
				c2Cap.never(t, "IPv6 frame in c2", otherType("0x86dd"))
				c2Cap.never(t, "raw ethertype frame in c2", otherType("0x88b5"))
				require.Equal(t, tp.mac2.String(), tp.neighMAC(c2Addr), "forged ARP reply must not move c2's IP")
			} else {
				c2Cap.waitFor(t, "IPv6 frame in c2", otherType("0x86dd"))
				c2Cap.waitFor(t, "raw ethertype frame in c2", otherType("0x88b5"))
				deadline := time.Now().Add(2 * time.Second)
				for tp.neighMAC(c2Addr) != tp.mac1.String() && time.Now().Before(deadline) {
					time.Sleep(50 * time.Millisecond)
				}
				require.Equal(t, tp.mac1.String(), tp.neighMAC(c2Addr), "control: the forged ARP reply poisons the host")
			}
		})
	}
}

// TestUnguardedPortDropsEverything: between CreateVeth and GuardEndpoint a
// port sends nothing, even honest traffic.
func TestUnguardedPortDropsEverything(t *testing.T) {
	tp := newTopo(t)
	rec := &recorder{}
	listenUDP(t, tp.host, dnsPort, rec)
	require.NoError(t, tp.h.GuardNetwork(tp.network))
	require.NoError(t, tp.h.GuardEndpoint(tp.ep2))
	// Reinstall the pending chain CreateVeth makes for v1.
	require.NoError(t, tp.h.UnguardEndpoint(tp.v1))
	_, err := sendUDP(t, tp.c1, netip.AddrPortFrom(gwAddr, dnsPort), "pending")
	require.Error(t, err)
	rec.never(t, "datagram from a pending port", fromC1)

	require.NoError(t, tp.h.GuardEndpoint(tp.ep1))
	// c1's ARP for the gateway was dropped while pending: its neighbour
	// entry retries once a second, so allow a few tries.
	var ans string
	for i := 0; i < 5; i++ {
		if ans, err = sendUDP(t, tp.c1, netip.AddrPortFrom(gwAddr, dnsPort), "guarded"); err == nil {
			break
		}
	}
	require.NoError(t, err)
	require.Equal(t, "ok", ans)
}

// dockerLike sets up what Docker (with iptables-nft, as on Debian 12) leaves
// in table ip filter, with the iptables-nft binary as Docker does: FORWARD
// with policy drop that first jumps to DOCKER-USER, which returns.
func (tp *topo) dockerLike() {
	_, err := exec.LookPath("iptables-nft")
	testutil.Require(tp.t, err == nil, "iptables-nft on PATH (Debian package iptables)")
	tp.iptables("-N", "DOCKER-USER")
	tp.iptables("-A", "DOCKER-USER", "-j", "RETURN")
	tp.iptables("-P", "FORWARD", "DROP")
	tp.iptables("-A", "FORWARD", "-j", "DOCKER-USER")
}

func (tp *topo) iptables(args ...string) string {
	return run(tp.t, append([]string{"ip", "netns", "exec", tp.hostN, "iptables-nft"}, args...)...)
}

// setBrNetfilter turns br_netfilter's call-iptables on or off in the host
// namespace only (the sysctl is per network namespace).
func (tp *topo) setBrNetfilter(on bool) {
	const path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	global, err := os.ReadFile(path)
	testutil.Require(tp.t, err == nil, "br_netfilter loaded (as Docker does)")
	v := "0"
	if on {
		v = "1"
	}
	run(tp.t, "ip", "netns", "exec", tp.hostN, "sh", "-c", "echo "+v+" > "+path)
	after, err := os.ReadFile(path)
	require.NoError(tp.t, err)
	if string(after) != string(global) {
		_ = os.WriteFile(path, global, 0o644)
		tp.t.Fatalf("%s is not per network namespace on this kernel: restored", path)
	}
}

// TestICC: ICC=false isolates the endpoints of one network, ICC=true connects
// them. The test namespaces have br_netfilter's call-iptables on (as Docker
// hosts do), so bridged IPv4 traverses the IP forward hook; cases with it off
// prove the bridge-family rule isolates on its own. Without a DOCKER-USER
// chain GuardNetwork skips that step; with Docker's FORWARD drop policy only
// GuardNetwork's DOCKER-USER accept lets ICC work (the control case removes
// it and ICC breaks).
func TestICC(t *testing.T) {
	cases := []struct {
		name             string
		icc, docker      bool
		brnfOff          bool
		dropDockerAccept bool
		reachable        bool
	}{
		{name: "icc off", reachable: false},
		{name: "icc on, no DOCKER-USER chain (skip path)", icc: true, reachable: true},
		{name: "icc on, Docker FORWARD drop with DOCKER-USER", icc: true, docker: true, reachable: true},
		{name: "control: Docker FORWARD drop without our accept", icc: true, docker: true, dropDockerAccept: true, reachable: false},
		{name: "icc off, Docker FORWARD drop with DOCKER-USER", docker: true, reachable: false},
		{name: "icc off, br_netfilter off", brnfOff: true, reachable: false},
		{name: "icc on, br_netfilter off", icc: true, brnfOff: true, reachable: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTopo(t)
			c2Rec, c2UDP := &recorder{}, &recorder{}
			listenTCP(t, tp.c2, 9000, false, c2Rec)
			listenUDP(t, tp.c2, 9001, c2UDP)
			if tc.docker {
				tp.dockerLike()
			}
			if tc.brnfOff {
				tp.setBrNetfilter(false)
			}
			tp.guard(tc.icc)
			if tc.dropDockerAccept {
				c, err := tp.h.nft()
				require.NoError(t, err)
				require.NoError(t, tp.h.syncDockerUser(c, tp.br, false))
			}
			_, tcpErr := dialTCP(t, tp.c1, netip.AddrPortFrom(c2Addr, 9000))
			_, udpErr := sendUDP(t, tp.c1, netip.AddrPortFrom(c2Addr, 9001), "icc")
			if tc.reachable {
				require.NoError(t, tcpErr)
				require.NoError(t, udpErr)
				c2Rec.waitFor(t, "tcp from c1", fromC1)
			} else {
				require.Error(t, tcpErr)
				require.Error(t, udpErr)
				c2Rec.never(t, "tcp from c1", fromC1)
				c2UDP.never(t, "udp from c1", fromC1)
			}
			if !tc.docker || tc.dropDockerAccept {
				return
			}
			// iptables-nft (which Docker runs) reads our rule, and Docker's
			// own check of its RETURN rule still works.
			accept := "-A DOCKER-USER -i " + tp.br + " -o " + tp.br + ` -m comment --comment "clawker-fw net=` + tp.br + `" -j ACCEPT`
			rules := tp.iptables("-S", "DOCKER-USER")
			require.Equal(t, tc.icc, strings.Contains(rules, accept), rules)
			if tc.icc {
				require.Less(t, strings.Index(rules, accept), strings.Index(rules, "-j RETURN"), "accept ahead of Docker's RETURN")
			}
			tp.iptables("-C", "DOCKER-USER", "-j", "RETURN")
			// Switching ICC replaces the accept, re-guarding does not
			// duplicate it, and Unguard removes it.
			tp.network.ICC = !tc.icc
			require.NoError(t, tp.h.GuardNetwork(tp.network))
			require.NoError(t, tp.h.GuardNetwork(tp.network))
			rules = tp.iptables("-S", "DOCKER-USER")
			require.Equal(t, boolInt(!tc.icc), strings.Count(rules, accept), rules)
			require.NoError(t, tp.h.UnguardNetwork(tp.br))
			require.NotContains(t, tp.iptables("-S", "DOCKER-USER"), "clawker-fw")
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestUnguardAndDelete: Unguard removes every rule, DeleteVeth/DeleteBridge
// leave no link, and ListOwned reports all that until it is gone.
func TestUnguardAndDelete(t *testing.T) {
	tp := newTopo(t)
	tp.dockerLike()
	tp.guard(true)
	owned, err := tp.h.ListOwned(tp.br)
	require.NoError(t, err)
	all := owned.String()
	for _, want := range []string{
		"bridge " + tp.br, "veth " + tp.v1, "veth " + tp.v2,
		"inet clawker_fw in_" + tp.br, "inet clawker_fw fwd_" + tp.br, "inet clawker_fw nat_" + tp.br,
		"bridge clawker_fw fwd_" + tp.br, "bridge clawker_fw ep_" + tp.v1, "bridge clawker_fw ep_" + tp.v2,
		"bridge clawker_fw ports_" + tp.br + " element " + tp.v1, "ip filter DOCKER-USER",
	} {
		require.Contains(t, all, want)
	}

	require.NoError(t, tp.h.UnguardEndpoint(tp.v1))
	require.NoError(t, tp.h.UnguardEndpoint(tp.v2))
	require.NoError(t, tp.h.UnguardNetwork(tp.br))
	require.NoError(t, tp.h.UnguardNetwork(tp.br), "idempotent")
	ruleset := tp.nft(tp.hostN, "list", "ruleset")
	// The veths still exist, so their chains stay, dropping everything.
	require.Contains(t, ruleset, "chain ep_"+tp.v1)
	require.NotContains(t, ruleset, "ports_"+tp.br)
	require.NotContains(t, ruleset, "table inet clawker_fw")
	require.NotContains(t, ruleset, "net="+tp.br+"\"")

	require.NoError(t, tp.h.DeleteVeth(tp.v1))
	require.NoError(t, tp.h.DeleteVeth(tp.v2))
	require.NoError(t, tp.h.DeleteVeth(tp.v2), "idempotent")
	require.NoError(t, tp.h.DeleteBridge(tp.br))
	require.NoError(t, tp.h.DeleteBridge(tp.br), "idempotent")

	ruleset = tp.nft(tp.hostN, "list", "ruleset")
	require.NotContains(t, ruleset, "clawker_fw")
	require.NotContains(t, ruleset, "clawker-fw")
	links := run(t, "ip", "-n", tp.hostN, "-o", "link")
	for _, l := range []string{tp.br, tp.v1, tp.v2} {
		require.NotContains(t, links, l+"@")
		require.NotContains(t, links, l+":")
	}
	owned, err = tp.h.ListOwned(tp.br)
	require.NoError(t, err)
	require.True(t, owned.Empty(), owned.String())
}

// TestCleanup: Cleanup removes a fully guarded network in one call.
func TestCleanup(t *testing.T) {
	tp := newTopo(t)
	tp.dockerLike()
	tp.guard(true)
	require.NoError(t, tp.h.Cleanup(tp.br))
	owned, err := tp.h.ListOwned(tp.br)
	require.NoError(t, err)
	require.True(t, owned.Empty(), owned.String())
	ruleset := tp.nft(tp.hostN, "list", "ruleset")
	require.NotContains(t, ruleset, "clawker")
	require.Contains(t, ruleset, "DOCKER-USER", "other tables are left alone")
}

// TestHandleLifecycle: NewInNamespace, EnsureBridge idempotency (a stray
// address is replaced), CreateVeth's pending guard, GuardEndpoint's check that
// the veth is a port of the bridge, and Networks.
func TestHandleLifecycle(t *testing.T) {
	testutil.RequirePrivileged(t)
	s := randSuffix()
	nsName := "cfwnl" + s
	newNS(t, nsName)
	h, err := NewInNamespace("/var/run/netns/" + nsName)
	require.NoError(t, err)
	defer h.Close()
	br, br2, v := "cfwnb"+s, "cfwnc"+s, "cfwnv"+s
	t.Cleanup(func() {
		require.NoError(t, h.Cleanup(br))
		require.NoError(t, h.Cleanup(br2))
	})

	gw := netip.MustParsePrefix("10.202.1.1/24")
	require.NoError(t, h.EnsureBridge(br, gw))
	run(t, "ip", "-n", nsName, "addr", "add", "10.202.7.1/24", "dev", br)
	require.NoError(t, h.EnsureBridge(br, gw))
	addrs := run(t, "ip", "-n", nsName, "-4", "-o", "addr", "show", "dev", br)
	require.Contains(t, addrs, "10.202.1.1/24")
	require.NotContains(t, addrs, "10.202.7.1")
	require.Contains(t, run(t, "ip", "-n", nsName, "-o", "link", "show", br), "UP")
	require.NotContains(t, run(t, "ip", "-n", nsName, "-6", "-o", "addr", "show", "dev", br), "fe80", "no IPv6 link-local on the bridge")

	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0xca, 0x01, 0x02}
	require.NoError(t, h.CreateVeth(v, "cfwnp"+s, br, mac))
	require.Error(t, h.CreateVeth(v, "cfwnq"+s, br, mac), "existing veth")
	require.Contains(t, run(t, "ip", "-n", nsName, "-o", "link", "show", "cfwnp"+s), mac.String())
	chain := run(t, "ip", "netns", "exec", nsName, "nft", "list", "chain", "bridge", TableName, "ep_"+v)
	require.Contains(t, chain, `iifname "`+v+`" counter packets 0 bytes 0 drop`, "pending guard")

	require.NoError(t, h.EnsureBridge(br2, netip.MustParsePrefix("10.202.3.1/24")))
	err = h.GuardEndpoint(Endpoint{Bridge: br2, HostVeth: v, IP: netip.MustParseAddr("10.202.1.2"), MAC: mac})
	require.ErrorContains(t, err, "not a port of bridge")
	require.NoError(t, h.GuardEndpoint(Endpoint{Bridge: br, HostVeth: v, IP: netip.MustParseAddr("10.202.1.2"), MAC: mac}))

	n := validNetwork()
	n.Bridge = br
	require.NoError(t, h.GuardNetwork(n))
	n2 := n
	n2.Bridge, n2.Subnet, n2.Gateway = br2, netip.MustParsePrefix("10.202.3.0/24"), netip.MustParseAddr("10.202.3.1")
	require.NoError(t, h.GuardNetwork(n2))
	nets, err := h.Networks()
	require.NoError(t, err)
	require.Equal(t, []string{br, br2}, nets)

	require.Error(t, h.GuardNetwork(Network{Bridge: br}), "invalid network changes nothing")
	require.NoError(t, h.Cleanup(br2))
	nets, err = h.Networks()
	require.NoError(t, err)
	require.Equal(t, []string{br}, nets)
	owned, err := h.ListOwned(br2)
	require.NoError(t, err)
	require.True(t, owned.Empty(), owned.String())
}

// TestMissingAfterRulesetLoss: when something else deletes the plugin's
// tables (a firewall reload), Missing names every lost piece, the network
// is open meanwhile (control), and guarding again restores isolation.
func TestMissingAfterRulesetLoss(t *testing.T) {
	tp := newTopo(t)
	c2Rec := &recorder{}
	listenTCP(t, tp.c2, 9000, false, c2Rec)
	tp.guard(false)
	veths := []string{tp.v1, tp.v2, "cfwnvgone"} // a veth that no longer exists is skipped
	missing, err := tp.h.Missing(tp.network, veths)
	require.NoError(t, err)
	require.Empty(t, missing)
	_, err = dialTCP(t, tp.c1, netip.AddrPortFrom(c2Addr, 9000))
	require.Error(t, err, "icc off")

	tp.nft(tp.hostN, "delete", "table", "inet", TableName)
	tp.nft(tp.hostN, "delete", "table", "bridge", TableName)
	missing, err = tp.h.Missing(tp.network, veths)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{
		"inet clawker_fw in_" + tp.br, "inet clawker_fw fwd_" + tp.br, "inet clawker_fw nat_" + tp.br,
		"bridge clawker_fw fwd_" + tp.br, "bridge clawker_fw ep_" + tp.v1, "bridge clawker_fw ep_" + tp.v2,
		"bridge clawker_fw ports_" + tp.br, "inet clawker_fw listeners",
	}, missing)
	// A positive control may retry: under a loaded -race run one 700 ms dial
	// can time out (seen in CI); the refusals below stay single attempts.
	require.Eventually(t, func() bool {
		_, err := dialTCP(t, tp.c1, netip.AddrPortFrom(c2Addr, 9000))
		return err == nil
	}, 10*time.Second, 100*time.Millisecond, "control: without the tables the bridge is open")

	tp.guard(false)
	missing, err = tp.h.Missing(tp.network, veths)
	require.NoError(t, err)
	require.Empty(t, missing)
	_, err = dialTCP(t, tp.c1, netip.AddrPortFrom(c2Addr, 9000))
	require.Error(t, err, "isolation restored")

	t.Run("lost DOCKER-USER accept", func(t *testing.T) {
		tp.dockerLike()
		tp.guard(true)
		missing, err := tp.h.Missing(tp.network, veths)
		require.NoError(t, err)
		require.Empty(t, missing)
		tp.iptables("-F", "DOCKER-USER")
		missing, err = tp.h.Missing(tp.network, veths)
		require.NoError(t, err)
		require.Equal(t, []string{"ip filter DOCKER-USER accept for " + tp.br}, missing)
		require.NoError(t, tp.h.GuardNetwork(tp.network))
		missing, err = tp.h.Missing(tp.network, veths)
		require.NoError(t, err)
		require.Empty(t, missing)
	})
}
