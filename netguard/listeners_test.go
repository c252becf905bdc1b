package netguard

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
)

// sendUDPFrom sends one datagram from ns with source address src (which
// must be an address of ns) to dst, without waiting for an answer.
func sendUDPFrom(t *testing.T, ns netns.NsHandle, src netip.Addr, dst netip.AddrPort, payload string) {
	var conn *net.UDPConn
	var err error
	inNS(t, ns, func() {
		conn, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(dst))
	})
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte(payload))
	require.NoError(t, err)
}

// TestListenerPortsOnly: from a guarded bridge only the listener ports of
// that network are reachable on the gateway, not a host service elsewhere in
// the reserved range; and the plugin's bound listener ports are reachable
// from no other interface, even by packets that spoof an endpoint's address
// (rp_filter off).
func TestListenerPortsOnly(t *testing.T) {
	e := newEgress(t)
	svc := &recorder{}
	listenTCP(t, e.host, hostService, false, svc)
	listenUDP(t, e.host, hostService, svc)
	allocUDP := &recorder{}
	listenUDP(t, e.host, allocLo, allocUDP)
	run(t, "ip", "netns", "exec", e.hostN, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf."+e.hf+".rp_filter=0")
	// far may send with c1's address: a spoofer on another interface.
	run(t, "ip", "-n", e.farN, "addr", "add", c1Addr.String()+"/32", "dev", e.ff)
	e.guard(true)

	t.Run("host service in the reserved range is unreachable from the bridge", func(t *testing.T) {
		_, err := dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, hostService))
		require.Error(t, err)
		_, err = sendUDP(t, e.c1, netip.AddrPortFrom(gwAddr, hostService), "svc")
		require.Error(t, err)
		require.Empty(t, svc.snapshot())
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, allocLo))
		require.NoError(t, err, "control: the network's own listener port is reachable")
	})

	t.Run("ports follow SetListenerPorts", func(t *testing.T) {
		bound := Ports{TCP: []uint16{allocLo, hostService, dnsPort, transparentPort, caPort}, UDP: []uint16{allocLo, dnsPort}}
		require.NoError(t, e.h.SetListenerPorts(bound, map[string]Ports{e.br: {TCP: []uint16{hostService}}}))
		_, err := dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, hostService))
		require.NoError(t, err, "a port the network's routes use is reachable")
		svc.waitFor(t, "tcp from c1", fromC1)
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, allocLo))
		require.Error(t, err, "a port it no longer uses is not")
		// Re-guarding (a repair after a ruleset flush) keeps them.
		e.guard(true)
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, allocLo))
		require.Error(t, err)
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, hostService))
		require.NoError(t, err)
		lp := Ports{TCP: []uint16{allocLo, dnsPort, transparentPort, caPort}, UDP: []uint16{allocLo, dnsPort}}
		require.NoError(t, e.h.SetListenerPorts(lp, map[string]Ports{e.br: {TCP: []uint16{allocLo}, UDP: []uint16{allocLo}}}))
	})

	t.Run("bound ports are dropped from other interfaces, spoofed or not", func(t *testing.T) {
		// Control: the host service's port is not the plugin's, so far
		// reaches it (the topology delivers packets from far with c1's
		// address to the host).
		sendUDPFrom(t, e.far, c1Addr, netip.AddrPortFrom(gwAddr, hostService), "spoof-svc")
		svc.waitFor(t, "spoofed udp to a host service", func(ev event) bool { return ev.data == "spoof-svc" })

		sendUDPFrom(t, e.far, c1Addr, netip.AddrPortFrom(gwAddr, allocLo), "spoof-gw")
		sendUDPFrom(t, e.far, c1Addr, netip.AddrPortFrom(hostFarAddr, allocLo), "spoof-hf")
		sendUDPFrom(t, e.far, c1Addr, netip.AddrPortFrom(gwAddr, dnsPort), "spoof-dns")
		sendUDPFrom(t, e.far, farAddr, netip.AddrPortFrom(hostFarAddr, dnsPort), "far-dns")
		_, err := dialTCP(t, e.far, netip.AddrPortFrom(hostFarAddr, allocLo))
		require.Error(t, err)
		_, err = dialTCP(t, e.far, netip.AddrPortFrom(gwAddr, dnsPort))
		require.Error(t, err)
		e.dns.never(t, "a datagram from far at the DNS port", func(ev event) bool { return ev.data == "spoof-dns" || ev.data == "far-dns" })
		allocUDP.never(t, "a datagram from far at a listener port", func(event) bool { return true })
		e.alloc.never(t, "a connection from far at a listener port", func(ev event) bool { return ev.src.Addr() == farAddr })
		_, err = dialTCP(t, e.c1, netip.AddrPortFrom(gwAddr, allocLo))
		require.NoError(t, err, "control: c1 itself still reaches it")
	})
}
