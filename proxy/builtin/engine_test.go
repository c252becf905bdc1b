package builtin

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
)

// procIO reads rchar and wchar of this process: bytes moved by read(2) and
// write(2)-family calls. splice(2) between sockets moves neither.
func procIO(t *testing.T) (rchar, wchar int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "wchar":
			wchar = n
		}
	}
	return
}

func basicPolicy() *policy.Policy {
	return &policy.Policy{Allows: []policy.Allowed{
		allow("api.example.test", policy.ProtoHTTPS, 443, 443, withPorts(policy.ProtoHTTPS, 8443, 8443)),
		allow(".pkg.example.test", policy.ProtoHTTPS, 443, 443),
	}}
}

func TestPassthroughBulkIsSpliced(t *testing.T) {
	var nonTCP atomic.Int64
	var spliced atomic.Int64
	spliceHook = func(up, down net.Conn) {
		_, ok1 := up.(*net.TCPConn)
		_, ok2 := down.(*net.TCPConn)
		if !ok1 || !ok2 {
			nonTCP.Add(1)
		}
		spliced.Add(1)
	}
	t.Cleanup(func() { spliceHook = nil })
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	addr := h.webAddr(443)
	const payload = 4 << 20

	t.Run("upload", func(t *testing.T) {
		tc, err := h.tlsFrom("127.0.0.2", addr, "api.example.test")
		require.NoError(t, err)
		defer tc.Close()
		r0, w0 := procIO(t)
		want := sha256.New()
		_, err = io.WriteString(tc, "SINK\n")
		require.NoError(t, err)
		_, err = io.Copy(io.MultiWriter(tc, want), io.LimitReader(newPRNG(), payload))
		require.NoError(t, err)
		require.NoError(t, tc.CloseWrite())
		got, err := bufio.NewReader(tc).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, hex.EncodeToString(want.Sum(nil)), strings.TrimSpace(got))
		r1, w1 := procIO(t)
		// Client write + upstream read move the payload once each; a
		// user-space copy in the proxy would move it once more each way.
		t.Logf("upload %d bytes: rchar +%d wchar +%d", payload, r1-r0, w1-w0)
		require.Less(t, r1-r0, int64(payload*3/2), "proxy copied the upload through user space")
		require.Less(t, w1-w0, int64(payload*3/2), "proxy copied the upload through user space")
	})
	t.Run("download", func(t *testing.T) {
		tc, err := h.tlsFrom("127.0.0.2", addr, "api.example.test")
		require.NoError(t, err)
		defer tc.Close()
		r0, w0 := procIO(t)
		_, err = io.WriteString(tc, "SEND "+strconv.Itoa(payload)+"\n")
		require.NoError(t, err)
		got, want := sha256.New(), sha256.New()
		n, err := io.Copy(got, tc)
		require.NoError(t, err)
		require.Equal(t, int64(payload), n)
		_, _ = io.Copy(want, io.LimitReader(newPRNG(), payload))
		require.Equal(t, want.Sum(nil), got.Sum(nil))
		r1, w1 := procIO(t)
		t.Logf("download %d bytes: rchar +%d wchar +%d", payload, r1-r0, w1-w0)
		require.Less(t, r1-r0, int64(payload*3/2))
		require.Less(t, w1-w0, int64(payload*3/2))
	})
	require.Equal(t, int64(2), spliced.Load())
	require.Zero(t, nonTCP.Load(), "io.Copy must get bare *net.TCPConn on both sides")
	d := h.waitDecision(func(d Decision) bool { return d.Allowed && d.Name == "api.example.test" })
	require.Equal(t, uint32(1), d.Endpoint)
	require.Equal(t, "agent1", d.Container)
	require.Equal(t, "label clawker.allow=api.example.test", d.Rule)
}

func TestSNIDecisions(t *testing.T) {
	h := newHarness(t)
	for _, n := range []string{"api.example.test", "x.pkg.example.test", "evil.example.test", "pkg.example.test"} {
		h.dns.set(n, "127.0.0.1")
	}
	pol := basicPolicy()
	pol.Denies = []policy.Denied{deny("bad.pkg.example.test")}
	h.dns.set("bad.pkg.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))

	tests := []struct {
		name   string
		port   uint16
		sni    string
		ok     bool
		reason policy.Reason
	}{
		{"exact name", 443, "api.example.test", true, policy.ReasonAllowed},
		{"non-default port", 8443, "api.example.test", true, policy.ReasonAllowed},
		{"wildcard subdomain", 443, "x.pkg.example.test", true, policy.ReasonAllowed},
		{"wildcard apex", 443, "pkg.example.test", true, policy.ReasonAllowed},
		{"upper case SNI", 443, "API.Example.Test", true, policy.ReasonAllowed},
		{"unknown name", 443, "evil.example.test", false, policy.ReasonNoRule},
		{"deny wins", 443, "bad.pkg.example.test", false, policy.ReasonDenyRule},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := h.tlsFrom("127.0.0.2", h.webAddr(tt.port), tt.sni)
			if tt.ok {
				require.NoError(t, err)
				_, err = io.WriteString(tc, "ECHO\nhello\n")
				require.NoError(t, err)
				line, err := bufio.NewReader(tc).ReadString('\n')
				require.NoError(t, err)
				require.Equal(t, "hello\n", line)
				tc.Close()
				return
			}
			require.Error(t, err)
			require.ErrorContains(t, err, "remote error: tls: access denied", "a denied TLS flow gets an access_denied alert")
			d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Name == strings.ToLower(tt.sni) })
			require.Equal(t, tt.reason, d.Reason)
		})
	}

	t.Run("8443 only for api", func(t *testing.T) {
		_, err := h.tlsFrom("127.0.0.2", h.webAddr(8443), "x.pkg.example.test")
		require.Error(t, err)
		d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Name == "x.pkg.example.test" && d.Port == 8443 })
		require.Equal(t, policy.ReasonPortNotAllow, d.Reason)
	})

	t.Run("canonical log line", func(t *testing.T) {
		require.Eventually(t, func() bool {
			for _, en := range h.hook.AllEntries() {
				if en.Message == logMessage && en.Level == logrus.WarnLevel && en.Data[fieldName] == "evil.example.test" {
					return en.Data[fieldReason] == string(policy.ReasonNoRule) && en.Data[fieldContainer] == "agent1" &&
						en.Data[fieldEndpoint] == uint32(1) && en.Data[fieldDecision] == "deny"
				}
			}
			return false
		}, 5*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool {
			for _, en := range h.hook.AllEntries() {
				if en.Message == logMessage && en.Level == logrus.InfoLevel && en.Data[fieldName] == "api.example.test" {
					return en.Data[fieldBytesUp].(uint64) > 0 && en.Data[fieldRule] == "label clawker.allow=api.example.test"
				}
			}
			return false
		}, 5*time.Second, 10*time.Millisecond)
	})
}

func TestNoSNIAndGarbageAreReset(t *testing.T) {
	h := newHarness(t)
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp4", h.webAddr(443))
	require.NoError(t, err)
	defer c.Close()
	// A ClientHello record with no extensions.
	hello := []byte{0x16, 3, 1, 0, 45, 1, 0, 0, 41, 3, 3}
	hello = append(hello, make([]byte, 32)...)
	hello = append(hello, 0, 0, 2, 0x13, 0x01, 1, 0)
	_, err = c.Write(hello)
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	dec := h.waitDecision(func(d Decision) bool { return !d.Allowed })
	require.Equal(t, ReasonNoSNI, dec.Reason)
}

func TestDedicatedTCPRange(t *testing.T) {
	h := newHarness(t)
	echo := newTCPEcho(t, "127.0.0.1")
	for p := uint16(5000); p <= 5002; p++ {
		h.mapPort(p, echo)
	}
	h.dns.set("db.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("db.example.test", policy.ProtoTCP, 5000, 5002)}}
	other := &policy.Policy{Allows: []policy.Allowed{allow("api.example.test", policy.ProtoHTTPS, 443, 443)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol), endpoint(2, "127.0.0.3", other)))
	for p := uint16(5000); p <= 5002; p++ {
		t.Run("port "+strconv.Itoa(int(p)), func(t *testing.T) {
			c := dialFrom(t, "127.0.0.2", h.dedicatedAddr(policy.ProtoTCP, "db.example.test", p))
			defer c.Close()
			_, err := io.WriteString(c, "ping\n")
			require.NoError(t, err)
			line, err := bufio.NewReader(c).ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "ping\n", line)
		})
	}
	t.Run("other endpoint denied", func(t *testing.T) {
		requireReset(t, "127.0.0.3", h.dedicatedAddr(policy.ProtoTCP, "db.example.test", 5001))
		d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Endpoint == 2 })
		require.Equal(t, policy.ReasonNoRule, d.Reason)
		require.Equal(t, "db.example.test", d.Name)
	})
}

func TestDedicatedUDP(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.UDPIdle = 300 * time.Millisecond })
	h.mapPort(5353, newUDPEcho(t))
	h.dns.set("udp.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("udp.example.test", policy.ProtoUDP, 5353, 5353)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol), endpoint(2, "127.0.0.3", &policy.Policy{})))
	l, ok := h.listenerByKey("dedicated:udp:udp.example.test:5353")
	require.True(t, ok)
	addr := h.e.Addr(l.Port, policy.L4UDP).(*net.UDPAddr)

	exchange := func(src string) (string, error) {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, addr)
		require.NoError(t, err)
		defer c.Close()
		buf := make([]byte, 100)
		var rerr error
		for i := 0; i < 3; i++ {
			_, err = c.Write([]byte("q"))
			require.NoError(t, err)
			_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			var n int
			n, rerr = c.Read(buf)
			if rerr == nil {
				return string(buf[:n]), nil
			}
		}
		return "", rerr
	}
	got, err := exchange("127.0.0.2")
	require.NoError(t, err)
	require.Equal(t, "echo:q", got)
	_, err = exchange("127.0.0.3")
	require.Error(t, err)
	d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Endpoint == 2 })
	require.Equal(t, policy.L4UDP, d.L4)
	// The allowed session ends after UDPIdle and writes its line.
	require.Eventually(t, func() bool {
		for _, en := range h.hook.AllEntries() {
			if en.Message == logMessage && en.Data[fieldMode] == "udp" && en.Data[fieldDecision] == "allow" {
				return en.Data[fieldBytesUp].(uint64) >= 1 && en.Data[fieldBytesDown].(uint64) >= 6
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond)
}

func TestInspection(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	h.dns.set("other.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{
		allow("api.example.test", policy.ProtoHTTPS, 443, 443, withPaths(policy.Deny,
			policy.PathRule{Path: "/public/secret", Action: policy.Deny},
			policy.PathRule{Path: "/public/", Action: policy.Allow},
			policy.PathRule{Path: "/api/", Methods: []string{"GET"}, Action: policy.Allow},
			policy.PathRule{Path: "~/v[0-9]+/items$", Action: policy.Allow},
		)),
		allow("other.example.test", policy.ProtoHTTPS, 443, 443, inspected),
	}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	addr := h.webAddr(443)

	for _, h2 := range []bool{false, true} {
		proto := "HTTP/1.1"
		if h2 {
			proto = "HTTP/2.0"
		}
		cl := h.httpClient("127.0.0.2", addr, h2)
		t.Run(proto, func(t *testing.T) {
			tests := []struct {
				method, url string
				host        string
				status      int
			}{
				{"GET", "https://api.example.test/public/readme", "", 200},
				{"GET", "https://api.example.test/public/secret/x", "", 403},
				{"GET", "https://api.example.test/private", "", 403},
				{"GET", "https://api.example.test/api/x", "", 200},
				{"POST", "https://api.example.test/api/x", "", 403},
				{"GET", "https://api.example.test/v2/items", "", 200},
				{"GET", "https://api.example.test/v2/items/1", "", 403},
				{"GET", "https://api.example.test/x/v2/items", "", 403},
				// Encoded tricks never escape a prefix.
				{"GET", "https://api.example.test/public/%2e%2e/private", "", 403},
				{"GET", "https://api.example.test/public/..%2Fprivate", "", 403},
				{"GET", "https://api.example.test/public%2F..%2Fprivate", "", 403},
				{"GET", "https://api.example.test/public//secret", "", 403},
				{"GET", "https://api.example.test//public/secret", "", 403},
				{"GET", "https://api.example.test/public/%73ecret", "", 403},
				{"GET", "https://api.example.test/public/./secret", "", 403},
				{"GET", "https://api.example.test/public/a/%2E%2E/%2E%2E/private", "", 403},
				{"GET", "https://api.example.test/public/a/%2e%2e/readme", "", 200},
				// Domain fronting: SNI api, Host other.
				{"GET", "https://api.example.test/public/readme", "other.example.test", 403},
				{"GET", "https://other.example.test/anything", "", 200},
			}
			for _, tt := range tests {
				req, err := http.NewRequest(tt.method, tt.url, nil)
				require.NoError(t, err)
				if tt.host != "" {
					req.Host = tt.host
				}
				resp, err := cl.Do(req)
				require.NoError(t, err, "%s %s", tt.method, tt.url)
				body := readAll(t, resp.Body)
				resp.Body.Close()
				require.Equal(t, tt.status, resp.StatusCode, "%s %s host=%s: %s", tt.method, tt.url, tt.host, body)
				require.Equal(t, proto, resp.Proto)
				if tt.status == 403 {
					require.NotEmpty(t, resp.Header.Get("X-Clawker-Denied"))
					require.Contains(t, body, "clawker-fw denied")
				} else {
					require.True(t, strings.HasPrefix(body, "https "+tt.method+" "), body)
				}
			}
		})
	}
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonDomainFronting })
	require.Equal(t, "other.example.test", d.Name)
	d = h.waitDecision(func(d Decision) bool { return d.Reason == policy.ReasonPath && d.Method == "POST" })
	require.Equal(t, "/api/x", d.Path)
}

func TestPlainHTTP(t *testing.T) {
	h := newHarness(t)
	port := newPlainUpstream(t, "127.0.0.1")
	h.mapPort(80, port)
	h.dns.set("web.example.test", "127.0.0.1")
	h.dns.set("nope.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{
		allow("web.example.test", policy.ProtoHTTP, 80, 80, withPaths(policy.Allow, policy.PathRule{Path: "/admin", Action: policy.Deny})),
	}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	cl := h.httpClient("127.0.0.2", h.webAddr(80), false)
	for _, tt := range []struct {
		url    string
		status int
	}{
		{"http://web.example.test/ok", 200},
		{"http://web.example.test/admin/x", 403},
		{"http://web.example.test/x/%2e%2e/admin", 403},
		{"http://nope.example.test/", 403},
	} {
		resp, err := cl.Get(tt.url)
		require.NoError(t, err)
		body := readAll(t, resp.Body)
		resp.Body.Close()
		require.Equal(t, tt.status, resp.StatusCode, "%s: %s", tt.url, body)
		if tt.status == 200 {
			require.Equal(t, "http GET web.example.test /ok", body)
		}
	}
	resp, err := cl.Get("http://nope.example.test/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Contains(t, resp.Header.Get("X-Clawker-Denied"), "clawker.allow=http://nope.example.test")

	// A client that half-closes after its request (printf 'GET ...' | nc)
	// still gets the upstream's answer, not an empty one.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", h.webAddr(80))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET /ok HTTP/1.0\r\nHost: web.example.test\r\n\r\n"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	raw, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Contains(t, string(raw), "http GET web.example.test /ok", "half-closed client gets the body")
}

func TestPrivateUpstream(t *testing.T) {
	for _, tt := range []struct {
		name    string
		exempt  []netip.Prefix
		cidr    bool
		deny    bool
		allowed bool
	}{
		{"refused by default", nil, false, false, false},
		{"exempted prefix", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false, false, true},
		{"explicit CIDR rule", nil, true, false, true},
		{"CIDR deny beats exemption", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AllowPrivateUpstreams = tt.exempt })
			h.dns.set("internal.example.test", "127.0.0.1")
			pol := &policy.Policy{Allows: []policy.Allowed{allow("internal.example.test", policy.ProtoHTTPS, 443, 443)}}
			if tt.cidr {
				pol.Allows = append(pol.Allows, allow("127.0.0.0/8", policy.ProtoTCP, 443, 443))
			}
			if tt.deny {
				pol.Denies = append(pol.Denies, policy.Denied{Pattern: "127.0.0.1/32", Prefix: netip.MustParsePrefix("127.0.0.1/32")})
			}
			h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
			tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "internal.example.test")
			if tt.allowed {
				require.NoError(t, err)
				tc.Close()
				return
			}
			require.Error(t, err)
			d := h.waitDecision(func(d Decision) bool { return !d.Allowed })
			require.Equal(t, ReasonPrivateUpstream, d.Reason)
		})
	}
}

func TestEndpointStates(t *testing.T) {
	t.Run("pending then policy", func(t *testing.T) {
		h := newHarness(t)
		h.dns.set("api.example.test", "127.0.0.1")
		ep := endpoint(1, "127.0.0.2", nil)
		ep.Pending = true
		h.apply(snapshot(1, ep, endpoint(2, "127.0.0.9", basicPolicy())))
		addr := h.webAddr(443)
		go func() {
			time.Sleep(300 * time.Millisecond)
			h.apply(snapshot(2, endpoint(1, "127.0.0.2", basicPolicy()), endpoint(2, "127.0.0.9", basicPolicy())))
		}()
		start := time.Now()
		tc, err := h.tlsFrom("127.0.0.2", addr, "api.example.test")
		require.NoError(t, err)
		tc.Close()
		require.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
	})
	t.Run("pending times out", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.PendingWait = 300 * time.Millisecond })
		ep := endpoint(1, "127.0.0.2", nil)
		ep.Pending = true
		h.apply(snapshot(1, ep, endpoint(2, "127.0.0.9", basicPolicy())))
		_, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
		require.Error(t, err)
		require.Equal(t, policy.ReasonPending, h.waitDecision(func(d Decision) bool { return !d.Allowed }).Reason)
	})
	t.Run("bypass allows all", func(t *testing.T) {
		h := newHarness(t)
		h.dns.set("anything.example.test", "127.0.0.1")
		ep := endpoint(1, "127.0.0.2", &policy.Policy{})
		ep.BypassUntil = time.Now().Add(time.Hour)
		h.apply(snapshot(1, ep, endpoint(2, "127.0.0.9", basicPolicy())))
		tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "anything.example.test")
		require.NoError(t, err)
		tc.Close()
		d := h.waitDecision(func(d Decision) bool { return d.Allowed })
		require.Equal(t, policy.ReasonBypass, d.Reason)
	})
	t.Run("label error denies and names the label", func(t *testing.T) {
		h := newHarness(t)
		ep := endpoint(1, "127.0.0.2", basicPolicy())
		ep.LabelError = `label clawker.allow: "bad name!" is not a host name`
		h.apply(snapshot(1, ep, endpoint(2, "127.0.0.9", basicPolicy())))
		_, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
		require.Error(t, err)
		d := h.waitDecision(func(d Decision) bool { return !d.Allowed })
		require.Equal(t, policy.ReasonBadLabel, d.Reason)
		require.Contains(t, d.Detail, "clawker.allow")
	})
	t.Run("unknown source", func(t *testing.T) {
		h := newHarness(t)
		h.apply(snapshot(1, endpoint(2, "127.0.0.9", basicPolicy())))
		_, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
		require.Error(t, err)
		require.Equal(t, policy.ReasonUnknownPeer, h.waitDecision(func(d Decision) bool { return !d.Allowed }).Reason)
	})
}

func TestCAListener(t *testing.T) {
	h := newHarness(t)
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	addr := h.e.Addr(15002, policy.L4TCP)
	require.NotNil(t, addr)
	resp, err := http.Get("http://" + addr.String() + "/ca.crt")
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, string(h.ca.pem), readAll(t, resp.Body))
	resp.Body.Close()
	resp, err = http.Get("http://" + addr.String() + "/other")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 404, resp.StatusCode)
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *Config) { c.Registry = reg })
	h.dns.set("api.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
	require.NoError(t, err)
	_, _ = io.WriteString(tc, "SEND 1000\n")
	_, _ = io.Copy(io.Discard, tc)
	tc.Close()
	_, err = h.tlsFrom("127.0.0.2", h.webAddr(443), "nope.example.test")
	require.Error(t, err)
	require.Eventually(t, func() bool {
		return counterValue(h.e.metrics.allowed.WithLabelValues("web")) == 1 &&
			counterValue(h.e.metrics.denied.WithLabelValues("web", "no-rule")) == 1 &&
			counterValue(h.e.metrics.bytes.WithLabelValues("down")) > 1000
	}, 5*time.Second, 10*time.Millisecond)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 3)
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// requireReset connects from src to addr and requires the proxy to end the
// connection without a byte (a reset can even beat connect's completion).
func requireReset(t *testing.T, src, addr string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "timeout")
}

// TestInspectedUpgrade carries an upgraded (WebSocket-style) connection
// through inspection: the hijacked stream lives until it ends.
func TestInspectedUpgrade(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("api.example.test", policy.ProtoHTTPS, 443, 443, inspected)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	tc, br := h.websocket("127.0.0.2", h.webAddr(443), "api.example.test", "/ws")
	for i := 0; i < 3; i++ {
		time.Sleep(50 * time.Millisecond)
		msg := "frame " + strconv.Itoa(i) + "\n"
		_, err := io.WriteString(tc, msg)
		require.NoError(t, err)
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, msg, line)
	}
}

// TestInspectedPrivateUpstream checks that the refusal of private upstream
// addresses also holds for re-originated (inspected and plain-HTTP)
// requests, and that an explicit CIDR rule of the endpoint lifts it.
func TestInspectedPrivateUpstream(t *testing.T) {
	for _, cidr := range []bool{false, true} {
		t.Run("cidr rule "+strconv.FormatBool(cidr), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AllowPrivateUpstreams = nil })
			h.dns.set("internal.example.test", "127.0.0.1")
			pol := &policy.Policy{Allows: []policy.Allowed{allow("internal.example.test", policy.ProtoHTTPS, 443, 443, inspected)}}
			if cidr {
				pol.Allows = append(pol.Allows, allow("127.0.0.1/32", policy.ProtoTCP, 443, 443))
			}
			h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
			resp, err := h.httpClient("127.0.0.2", h.webAddr(443), false).Get("https://internal.example.test/x")
			require.NoError(t, err)
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if cidr {
				require.Equal(t, 200, resp.StatusCode, body)
				return
			}
			require.Equal(t, 403, resp.StatusCode, body)
			require.Contains(t, resp.Header.Get("X-Clawker-Denied"), string(ReasonPrivateUpstream))
		})
	}
}

// TestPerEndpointPolicy: a name allowed for one container only is denied
// to another on the same listener.
func TestPerEndpointPolicy(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	other := &policy.Policy{Allows: []policy.Allowed{allow("else.example.test", policy.ProtoHTTPS, 443, 443)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy()), endpoint(2, "127.0.0.3", other)))
	tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
	require.NoError(t, err)
	tc.Close()
	_, err = h.tlsFrom("127.0.0.3", h.webAddr(443), "api.example.test")
	require.Error(t, err)
	d := h.waitDecision(func(d Decision) bool { return !d.Allowed })
	require.Equal(t, uint32(2), d.Endpoint)
	require.Equal(t, policy.ReasonNoRule, d.Reason)
}

// TestRecordsInsteadOfLines: with Config.Record the engine writes no
// decision line; every connection ends as one record with its bytes, in
// the shared decision schema.
func TestRecordsInsteadOfLines(t *testing.T) {
	opt, records := withRecords()
	h := newHarness(t, opt)
	h.dns.set("api.example.test", "127.0.0.1")
	h.dns.set("evil.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
	require.NoError(t, err)
	_, err = io.WriteString(tc, "ECHO\nhello\n")
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(tc, buf)
	require.NoError(t, err)
	tc.Close()
	_, err = h.tlsFrom("127.0.0.2", h.webAddr(443), "evil.example.test")
	require.Error(t, err)
	find := func(name string) *decisionlog.Record {
		recs := records()
		for i := range recs {
			if recs[i].DestName == name {
				return &recs[i]
			}
		}
		return nil
	}
	require.Eventually(t, func() bool { return find("api.example.test") != nil && find("evil.example.test") != nil }, 5*time.Second, 10*time.Millisecond)
	ok := find("api.example.test")
	require.Equal(t, decisionlog.SourceProxy, ok.Source)
	require.Equal(t, decisionlog.Allow, ok.Verdict)
	require.Equal(t, uint32(1), ok.Endpoint)
	require.Equal(t, "agent1", ok.Container)
	require.Equal(t, "https", ok.Protocol)
	require.Equal(t, uint16(443), ok.DestPort)
	require.Positive(t, ok.BytesUp)
	require.Positive(t, ok.BytesDown)
	bad := find("evil.example.test")
	require.Equal(t, decisionlog.Deny, bad.Verdict)
	require.Equal(t, string(policy.ReasonNoRule), bad.Reason)
	for _, en := range h.hook.AllEntries() {
		require.NotEqual(t, logMessage, en.Message, "no decision line of its own: %v", en.Data)
	}
}
