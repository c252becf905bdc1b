package builtin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestKernelHostLocal asks the kernel in a fresh netns: its interface
// addresses, loopback, broadcast and an address added after the first
// question are the host's; a neighbour on the link and an unroutable
// address are not.
func TestKernelHostLocal(t *testing.T) {
	ns := newTestNS(t)
	ask := func(a string) bool {
		var local bool
		var err error
		ns.do(t, func() { local, err = kernelHostLocal(netip.MustParseAddr(a)) })
		require.NoError(t, err, a)
		return local
	}
	require.True(t, ask("10.203.0.1"))
	require.True(t, ask("127.0.0.9"))
	require.True(t, ask("10.203.255.255"))
	require.True(t, ask("0.0.0.0"), "connecting to 0.0.0.0 reaches the host")
	require.False(t, ask("10.203.0.9"))
	require.False(t, ask("198.51.100.7"))
	require.False(t, ask("10.204.0.1"))
	run(t, "ip", "-n", ns.name, "addr", "add", "10.204.0.1/32", "dev", "cfwp1")
	require.True(t, ask("10.204.0.1"), "an address added later counts at once")

	// The engine's default keeps one socket, opened in its namespace, which
	// answers for that namespace whichever thread asks.
	var shared func(netip.Addr) (bool, error)
	var done func()
	ns.do(t, func() { shared, done = sharedHostLocal() })
	defer done()
	for a, want := range map[string]bool{"10.203.0.1": true, "10.204.0.1": true, "10.203.0.9": false, "127.0.0.1": true} {
		got, err := shared(netip.MustParseAddr(a))
		require.NoError(t, err, a)
		require.Equal(t, want, got, a)
	}
	run(t, "ip", "-n", ns.name, "addr", "add", "10.205.0.1/32", "dev", "cfwp1")
	got, err := shared(netip.MustParseAddr("10.205.0.1"))
	require.NoError(t, err)
	require.True(t, got, "an address added after the socket opened counts at once")
	local, err := kernelHostLocal(netip.MustParseAddr("10.205.0.1"))
	require.NoError(t, err)
	require.False(t, local, "the test's own namespace does not have it")
}

// TestHostLocalCache: the engine's default keeps the kernel's answers only
// while the kernel announces no change: an address added or removed, a
// local route, a policy rule pointing at a table with one, and a burst of
// changes large enough to overflow its notification socket each take
// effect on the very next answer, with no wait; unchanged answers are not
// asked again; a closed cache asks every time.
func TestHostLocalCache(t *testing.T) {
	ns := newTestNS(t)
	var asks atomic.Int64
	var c *hostLocalCache
	ns.do(t, func() {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		require.NoError(t, err)
		t.Cleanup(h.Close)
		via := hostLocalVia(h.RouteGet)
		c, err = newHostLocalCache(func(a netip.Addr) (bool, error) {
			asks.Add(1)
			return via(a)
		})
		require.NoError(t, err)
	})
	t.Cleanup(c.close)
	check := func(a string, want bool, why string) {
		t.Helper()
		got, err := c.hostLocal(netip.MustParseAddr(a))
		require.NoError(t, err, why)
		require.Equal(t, want, got, why)
	}
	check("10.207.0.1", false, "not an address of the namespace")
	check("10.203.0.1", true, "the interface's address")
	n := asks.Load()
	check("10.207.0.1", false, "again")
	check("10.203.0.1", true, "again")
	require.Equal(t, n, asks.Load(), "unchanged answers come from memory")

	run(t, "ip", "-n", ns.name, "addr", "add", "10.207.0.1/32", "dev", "cfwp1")
	check("10.207.0.1", true, "an address added after it was cached counts at once")
	run(t, "ip", "-n", ns.name, "addr", "del", "10.207.0.1/32", "dev", "cfwp1")
	check("10.207.0.1", false, "a removed address stops counting at once")

	check("10.208.0.5", false, "before the local route")
	run(t, "ip", "-n", ns.name, "route", "add", "local", "10.208.0.0/24", "dev", "lo")
	check("10.208.0.5", true, "a local route that is no interface's address")

	run(t, "ip", "-n", ns.name, "route", "add", "local", "10.209.0.5", "dev", "lo", "table", "100")
	check("10.209.0.5", false, "a local route in a table no rule uses")
	run(t, "ip", "-n", ns.name, "rule", "add", "to", "10.209.0.5", "lookup", "100", "priority", "50")
	check("10.209.0.5", true, "a policy rule that makes the kernel use that table")

	// IPv6: a policy rule has a group of its own (no bit in bind's mask).
	run(t, "ip", "-n", ns.name, "-6", "route", "add", "local", "fd00:209::5", "dev", "lo", "table", "101")
	check("fd00:209::5", false, "an IPv6 local route in a table no rule uses")
	run(t, "ip", "-n", ns.name, "-6", "rule", "add", "to", "fd00:209::5", "lookup", "101", "priority", "50")
	check("fd00:209::5", true, "an IPv6 policy rule that makes the kernel use that table")

	// Far more announcements than the socket holds, then one that matters.
	check("10.210.0.1", false, "before the burst")
	var batch strings.Builder
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&batch, "addr add 10.211.%d.%d/32 dev cfwp1\n", i/250, i%250+1)
	}
	batch.WriteString("addr add 10.210.0.1/32 dev cfwp1\n")
	cmd := exec.Command("ip", "-n", ns.name, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	check("10.210.0.1", true, "an address added in a burst that overflowed the notifications")
	check("10.211.11.250", true, "one of the burst")

	c.close()
	n = asks.Load()
	check("10.203.0.1", true, "closed: asked")
	require.Equal(t, n+1, asks.Load(), "a closed cache asks every time")
}

// countingListener accepts on addr and counts connections.
func countingListener(t *testing.T, addr string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

// TestHostLocalRefused: a name under an allowed wildcard that resolves to an
// address of the host (127.0.0.5 here) is refused at dial, for passthrough
// and for inspected requests, even though AllowPrivateUpstreams covers
// 127.0.0.0/8; nothing reaches a listener there. The neighbour name still
// works, and an IP/CIDR rule naming the address opens it.
func TestHostLocalRefused(t *testing.T) {
	h := newHarness(t)
	hits := countingListener(t, "127.0.0.5:"+strconv.Itoa(int(h.up.port)))
	h.dns.set("local.pkg.example.test", "127.0.0.5")
	h.dns.set("ok.pkg.example.test", "127.0.0.1")
	h.dns.set("local.insp.example.test", "127.0.0.5")
	pol := basicPolicy()
	pol.Allows = append(pol.Allows, allow(".insp.example.test", policy.ProtoHTTPS, 443, 443, inspected))
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))

	_, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "local.pkg.example.test")
	require.Error(t, err)
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonHostLocal })
	require.Equal(t, "local.pkg.example.test", d.Name)
	require.Contains(t, d.Detail, "127.0.0.5")

	resp, err := h.httpClient("127.0.0.2", h.webAddr(443), false).Get("https://local.insp.example.test/x")
	require.NoError(t, err)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	require.Equal(t, 403, resp.StatusCode, body)
	require.Contains(t, resp.Header.Get("X-Clawker-Denied"), string(ReasonHostLocal))
	require.Contains(t, body, "host.docker.internal")
	require.Zero(t, hits.Load(), "a host-local upstream was dialled")

	tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "ok.pkg.example.test")
	require.NoError(t, err)
	tc.Close()

	// An IP/CIDR rule naming the address is the explicit way.
	pol.Allows = append(pol.Allows, allow("127.0.0.5/32", policy.ProtoTCP, 443, 443))
	h.apply(snapshot(2, endpoint(1, "127.0.0.2", pol)))
	c := dialFrom(t, "127.0.0.2", h.webAddr(443))
	defer c.Close()
	_, _ = c.Write(clientHello(t, "local.pkg.example.test"))
	require.Eventually(t, func() bool { return hits.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
}

// TestCheckIPDest: IP destinations (IP rules, bypass) of the host's own are
// refused unless an IP/CIDR rule names them; a bypass does not open them.
func TestCheckIPDest(t *testing.T) {
	h := newHarness(t)
	local := netip.MustParseAddr("127.0.0.5")
	cidr := &policy.Policy{Allows: []policy.Allowed{allow("127.0.0.0/24", policy.ProtoTCP, 22, 22)}}
	require.NoError(t, h.e.checkIPDest(cidr, local, 22, policy.L4TCP))
	require.Error(t, h.e.checkIPDest(cidr, local, 23, policy.L4TCP), "another port is not named")
	require.Error(t, h.e.checkIPDest(&policy.Policy{AllowAll: true}, local, 22, policy.L4TCP))
	require.Error(t, h.e.checkIPDest(&policy.Policy{}, local, 22, policy.L4TCP))
	require.NoError(t, h.e.checkIPDest(&policy.Policy{AllowAll: true}, netip.MustParseAddr("127.0.0.1"), 22, policy.L4TCP), "the tests' upstream address")
	failing := newHarness(t, func(c *Config) {
		c.HostLocal = func(netip.Addr) (bool, error) { return false, io.ErrUnexpectedEOF }
	})
	require.Error(t, failing.e.checkIPDest(&policy.Policy{AllowAll: true}, netip.MustParseAddr("198.51.100.7"), 22, policy.L4TCP), "a failed lookup fails closed")
}

// TestHostDockerInternal: an exact tcp://host.docker.internal:PORT rule
// reaches the endpoint's gateway (the host); a wildcard over it or a bypass
// does not.
func TestHostDockerInternal(t *testing.T) {
	h := newHarness(t)
	echo := newTCPEcho(t, "127.0.0.6")
	h.mapPort(echo, echo)
	hits := countingListener(t, "127.0.0.6:"+strconv.Itoa(int(h.up.port)))
	withGW := func(snap *policy.Snapshot) *policy.Snapshot {
		snap.Networks["net1"] = &policy.Network{ID: "net1", Gateway: netip.MustParseAddr("127.0.0.6")}
		return snap
	}
	// As the compiler builds it: the exact entry also carries the ports and
	// rules of the wildcard that encloses it.
	exact := allow("host.docker.internal", policy.ProtoTCP, echo, echo, withPorts(policy.ProtoHTTPS, 443, 443))
	wild := allow(".docker.internal", policy.ProtoHTTPS, 443, 443)
	exact.Rules = append(exact.Rules, wild.Rules...)
	pol := &policy.Policy{Allows: []policy.Allowed{exact, wild}}
	bypass := &policy.Policy{AllowAll: true}
	h.apply(withGW(snapshot(1, endpoint(1, "127.0.0.2", pol), endpoint(2, "127.0.0.3", bypass))))

	c := dialFrom(t, "127.0.0.2", h.dedicatedAddr(policy.ProtoTCP, "host.docker.internal", echo))
	defer c.Close()
	_, err := io.WriteString(c, "to the host\n")
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "to the host\n", line)

	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		_, err = h.tlsFrom(src, h.webAddr(443), "host.docker.internal")
		require.Error(t, err, src)
	}
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonHostLocal && d.Endpoint == 1 })
	require.Contains(t, d.Detail, "wildcard")
	d = h.waitDecision(func(d Decision) bool { return d.Reason == ReasonHostLocal && d.Endpoint == 2 })
	require.Contains(t, d.Detail, "bypass")
	require.Zero(t, hits.Load())
}
