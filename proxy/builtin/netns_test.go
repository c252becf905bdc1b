package builtin

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// testNS is a network namespace of this package's tests (name cfwp-*,
// addresses in 10.203.0.0/16). Nothing in it routes anywhere: packets to
// 10.203.0.0/16 stay in it.
type testNS struct {
	name string
	h    netns.NsHandle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	testutil.RequirePrivileged(t)
	_, err := exec.LookPath("nft")
	testutil.Require(t, err == nil, "nft binary")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &testNS{name: "cfwp-" + hex.EncodeToString(b)}
	run(t, "ip", "netns", "add", ns.name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns.name).Run() })
	h, err := netns.GetFromName(ns.name)
	require.NoError(t, err)
	ns.h = h
	t.Cleanup(func() { h.Close() })
	run(t, "ip", "-n", ns.name, "link", "set", "lo", "up")
	run(t, "ip", "-n", ns.name, "link", "add", "cfwp0", "type", "veth", "peer", "name", "cfwp1")
	run(t, "ip", "-n", ns.name, "link", "set", "cfwp1", "up")
	run(t, "ip", "-n", ns.name, "addr", "add", "10.203.0.1/16", "dev", "cfwp0")
	run(t, "ip", "-n", ns.name, "link", "set", "cfwp0", "up")
	return ns
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%v: %s", args, out)
}

// do runs fn with the calling thread inside the namespace. Sockets created
// in fn stay in the namespace after fn returns.
func (ns *testNS) do(t *testing.T, fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	require.NoError(t, err)
	defer orig.Close()
	require.NoError(t, netns.Set(ns.h))
	defer func() { require.NoError(t, netns.Set(orig)) }()
	fn()
}

func (ns *testNS) nft(t *testing.T, ruleset string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nft: %s", out)
}

// TestTransparentOriginalDst sends flows that nftables redirected (inside a
// test netns) to the transparent listener: they are decided by their SNI or
// Host and the proxy dials the NAME, whatever IP the client asked for; an
// IP rule dials the original IP.
func TestTransparentOriginalDst(t *testing.T) {
	ns := newTestNS(t)
	ns.nft(t, `
table ip cfwp {
	chain out {
		type nat hook output priority -100; policy accept;
		ip daddr 10.203.9.9 tcp dport { 443, 80 } redirect to :15001
		ip daddr 127.0.0.7 tcp dport 9 redirect to :15001
	}
}`)
	echo := newTCPEcho(t, "127.0.0.7")
	plain := newPlainUpstream(t, "127.0.0.1")
	h := newHarness(t, func(c *Config) {
		base := c.ListenPort
		c.ListenPort = func(p uint16) uint16 {
			if p == model.TransparentPort {
				return p // inside the test netns only
			}
			return base(p)
		}
		c.Listen = func(network, addr string) (net.Listener, error) {
			if !strings.HasSuffix(addr, ":15001") {
				return net.Listen(network, addr)
			}
			var ln net.Listener
			var err error
			ns.do(t, func() { ln, err = net.Listen(network, "0.0.0.0:15001") })
			return ln, err
		}
	})
	h.mapPort(9, echo)
	h.mapPort(80, plain)
	h.dns.set("api.example.test", "127.0.0.1")
	h.dns.set("web.example.test", "127.0.0.1")
	pol := basicPolicy()
	pol.Allows = append(pol.Allows, allow("web.example.test", policy.ProtoHTTP, 80, 80))
	ipPol := &policy.Policy{Allows: []policy.Allowed{allow("127.0.0.7/32", policy.ProtoTCP, 9, 9)}}
	// The client in the netns has source 10.203.0.1 towards 10.203.9.9 and
	// 127.0.0.1 towards 127.0.0.7.
	h.apply(snapshot(1, endpoint(1, "10.203.0.1", pol), endpoint(2, "127.0.0.1", ipPol)))

	dialNS := func(addr string) (net.Conn, error) {
		var c net.Conn
		var err error
		ns.do(t, func() { c, err = net.DialTimeout("tcp4", addr, 5*time.Second) })
		return c, err
	}

	t.Run("allowed SNI reaches the name, not the original IP", func(t *testing.T) {
		c, err := dialNS("10.203.9.9:443")
		require.NoError(t, err)
		tc := tls.Client(c, &tls.Config{ServerName: "api.example.test", RootCAs: h.ca.pool()})
		defer tc.Close()
		_, err = io.WriteString(tc, "ECHO\nvia-transparent\n")
		require.NoError(t, err)
		line, err := bufio.NewReader(tc).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "via-transparent\n", line)
		d := h.waitDecision(func(d Decision) bool { return d.Allowed && d.Listener == model.KindTransparent })
		require.Equal(t, "10.203.9.9", d.Dst.String())
		require.Equal(t, uint16(443), d.Port)
		require.Equal(t, "api.example.test", d.Name)
	})
	t.Run("denied SNI is reset", func(t *testing.T) {
		c, err := dialNS("10.203.9.9:443")
		require.NoError(t, err)
		tc := tls.Client(c, &tls.Config{ServerName: "evil.example.test", RootCAs: h.ca.pool()})
		defer tc.Close()
		require.Error(t, tc.Handshake())
		d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Name == "evil.example.test" })
		require.Equal(t, model.KindTransparent, d.Listener)
	})
	t.Run("plain HTTP by Host", func(t *testing.T) {
		cl := &http.Client{Transport: &http.Transport{DialContext: nil, Dial: func(_, _ string) (net.Conn, error) {
			return dialNS("10.203.9.9:80")
		}}, Timeout: 5 * time.Second}
		resp, err := cl.Get("http://web.example.test/x")
		require.NoError(t, err)
		require.Equal(t, "http GET web.example.test /x", readAll(t, resp.Body))
		resp.Body.Close()
		resp, err = cl.Get("http://evil.example.test/x")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 403, resp.StatusCode)
	})
	t.Run("IP rule dials the original IP", func(t *testing.T) {
		c, err := dialNS("127.0.0.7:9")
		require.NoError(t, err)
		defer c.Close()
		_, err = io.WriteString(c, "raw\n")
		require.NoError(t, err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "raw\n", line)
		d := h.waitDecision(func(d Decision) bool { return d.Allowed && d.Endpoint == 2 })
		require.Equal(t, "127.0.0.7", d.Dst.String())
	})
}
