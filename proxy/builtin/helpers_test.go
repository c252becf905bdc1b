package builtin

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// testCA is a tiny CA for the tests: it signs the upstream servers' and the
// inspection leaves.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
	mu   sync.Mutex
	leaf map[string]*tls.Certificate
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "clawker-fw builtin test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{key: key, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), leaf: map[string]*tls.Certificate{}}
}

func (c *testCA) Leaf(name string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaf[name]; ok {
		return l, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, err
	}
	l := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	c.leaf[name] = l
	return l, nil
}

func (c *testCA) CACertPEM() []byte { return c.pem }

func (c *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// fakeDNS is an authoritative server for the test names on 127.0.0.1:0.
type fakeDNS struct {
	mu      sync.Mutex
	records map[string][]netip.Addr
	asked   map[string]int // questions per lower-case FQDN
	addr    string
	ttl     uint32 // of the answers (seconds); 1 unless setTTL changes it
}

func (f *fakeDNS) setTTL(ttl uint32) {
	f.mu.Lock()
	f.ttl = ttl
	f.mu.Unlock()
}

func newFakeDNS(t testing.TB) *fakeDNS { return newFakeDNSAt(t, "127.0.0.1") }

// newFakeDNSAt starts a fakeDNS on ip:0 (UDP).
func newFakeDNSAt(t testing.TB, ip string) *fakeDNS {
	t.Helper()
	f := &fakeDNS{records: map[string][]netip.Addr{}, asked: map[string]int{}, ttl: 1}
	pc, err := net.ListenPacket("udp4", ip+":0")
	require.NoError(t, err)
	f.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: f}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return f
}

func (f *fakeDNS) set(name string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	f.records[dns.Fqdn(name)] = as
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range r.Question {
		f.asked[strings.ToLower(q.Name)]++
		addrs, ok := f.records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		for _, a := range addrs {
			if q.Qtype == dns.TypeA && a.Is4() {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: f.ttl}, A: a.AsSlice()})
			}
		}
	}
	_ = w.WriteMsg(m)
}

// questions returns how many questions for name the server got.
func (f *fakeDNS) questions(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[dns.Fqdn(strings.ToLower(name))]
}

func (f *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", f.addr)
	}}
}

// upstream is a TLS server for every *.example.test name (leaves from the
// test CA). It speaks HTTP (h2 and HTTP/1.1) unless the first line is a
// raw-stream command:
//
//	"SINK\n"  read to EOF, answer the hex SHA-256 of what was read;
//	"ECHO\n"  echo every line back until EOF;
//	"SEND n\n" send n pseudo-random bytes then close.
type upstream struct {
	ln   net.Listener
	port uint16
}

func newUpstream(t testing.TB, ca *testCA, ip string) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	require.NoError(t, err)
	u := &upstream{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	cfg := &tls.Config{
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return ca.Leaf(h.ServerName) },
		NextProtos:     []string{"h2", "http/1.1", "raw"},
	}
	h2s := &http2.Server{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(tls.Server(c, cfg), h2s)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return u
}

func upstreamHandler(scheme string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			// Not real WebSocket framing: after the 101 it echoes lines.
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Accept: "+websocketAccept(r.Header.Get("Sec-WebSocket-Key"))+"\r\n\r\n")
			for {
				l, err := brw.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := io.WriteString(c, l); err != nil {
					return
				}
			}
		}
		w.Header().Set("X-Upstream-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s %s %s", scheme, r.Method, r.Host, r.RequestURI)
	})
}

func (u *upstream) serve(c *tls.Conn, h2s *http2.Server) {
	if err := c.Handshake(); err != nil {
		c.Close()
		return
	}
	if c.ConnectionState().NegotiatedProtocol == "h2" {
		h2s.ServeConn(c, &http2.ServeConnOpts{Handler: upstreamHandler("https")})
		c.Close()
		return
	}
	br := bufio.NewReader(c)
	peek, err := br.Peek(4)
	if err != nil {
		c.Close()
		return
	}
	switch string(peek) {
	case "SINK", "ECHO", "SEND":
		rawServe(c, br)
		c.Close()
	default:
		// The HTTP server closes the connection, unless a handler
		// hijacked it (and then owns it).
		serveOne(&bufConn{Conn: c, r: br}, upstreamHandler("https"), 5*time.Second)
	}
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func rawServe(c net.Conn, br *bufio.Reader) {
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	switch {
	case line == "SINK\n":
		h := sha256.New()
		_, _ = io.Copy(h, br)
		_, _ = io.WriteString(c, hex.EncodeToString(h.Sum(nil))+"\n")
	case line == "ECHO\n":
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, l); err != nil {
				return
			}
		}
	case strings.HasPrefix(line, "SEND "):
		n, _ := strconv.Atoi(strings.TrimSpace(line[5:]))
		_, _ = io.Copy(c, io.LimitReader(newPRNG(), int64(n)))
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, br)
}

// prng is a cheap deterministic byte stream for bulk payloads.
type prng struct{ x uint64 }

func newPRNG() *prng { return &prng{x: 0x9e3779b97f4a7c15} }

func (p *prng) Read(b []byte) (int, error) {
	for i := range b {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		b[i] = byte(p.x)
	}
	return len(b), nil
}

// plainUpstream is a plain-HTTP server for the plain-HTTP tests.
func newPlainUpstream(t testing.TB, ip string) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	require.NoError(t, err)
	srv := &http.Server{Handler: upstreamHandler("http")}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// newTCPEcho is a plain TCP echo server.
func newTCPEcho(t testing.TB, ip string) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	require.NoError(t, err)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// --- policy helpers ---

var nextID policy.Identity = 100

// allow builds one Allowed entry for pattern with one port range.
func allow(pattern string, proto policy.Proto, lo, hi uint16, mods ...func(*policy.Allowed)) policy.Allowed {
	nextID++
	rule := policy.EgressRule{Dst: pattern, Proto: proto, Port: lo, PortEnd: hi, Action: policy.Allow,
		Source: policy.Provenance{Kind: policy.SourceLabel, Key: "clawker.allow", Item: pattern}}
	a := policy.Allowed{Identity: nextID, Pattern: pattern, Ports: []policy.PortRange{{Proto: proto, Lo: lo, Hi: hi}}, Rules: []policy.EgressRule{rule}}
	if p, err := netip.ParsePrefix(pattern); err == nil {
		a.Prefix = p
	}
	for _, m := range mods {
		m(&a)
	}
	return a
}

func withPorts(proto policy.Proto, lo, hi uint16) func(*policy.Allowed) {
	return func(a *policy.Allowed) { a.Ports = append(a.Ports, policy.PortRange{Proto: proto, Lo: lo, Hi: hi}) }
}

func inspected(a *policy.Allowed) { a.Inspect = true }

func withPaths(def policy.Action, rules ...policy.PathRule) func(*policy.Allowed) {
	return func(a *policy.Allowed) {
		a.Paths, a.PathDefault, a.Inspect = rules, def, true
	}
}

func deny(pattern string) policy.Denied {
	d := policy.Denied{Pattern: pattern, Rule: policy.EgressRule{Dst: pattern, Action: policy.Deny,
		Source: policy.Provenance{Kind: policy.SourceOption, Key: "clawker.deny", Item: pattern}}}
	if p, err := netip.ParsePrefix(pattern); err == nil {
		d.Prefix = p
	}
	return d
}

// snapshot builds an indexed snapshot with one endpoint per source IP.
func snapshot(gen uint64, eps ...*policy.Endpoint) *policy.Snapshot {
	s := &policy.Snapshot{Generation: gen, Networks: map[string]*policy.Network{}, Endpoints: map[uint32]*policy.Endpoint{}}
	for _, ep := range eps {
		if ep.Policy != nil {
			ep.Policy.Generation = gen
		}
		s.Endpoints[ep.Index] = ep
	}
	return s.Index()
}

func endpoint(index uint32, ip string, pol *policy.Policy) *policy.Endpoint {
	return &policy.Endpoint{Index: index, ID: fmt.Sprintf("ep%d", index), NetworkID: "net1", IP: netip.MustParseAddr(ip),
		ContainerID: fmt.Sprintf("c%d", index), ContainerName: fmt.Sprintf("agent%d", index), Policy: pol}
}

// --- the harness ---

// testUpstreamIP is where the tests' upstreams listen: the tests' internet,
// which the host-local refusal must leave alone. Every other address is
// decided by the kernel's routes (127.0.0.5 is host-local, for instance).
var testUpstreamIP = netip.MustParseAddr("127.0.0.1")

func testHostLocal(a netip.Addr) (bool, error) {
	if a == testUpstreamIP {
		return false, nil
	}
	return kernelHostLocal(a)
}

type harness struct {
	t      *testing.T
	ca     *testCA
	dns    *fakeDNS
	up     *upstream
	e      *Engine
	alloc  *model.PortAllocator
	model  *model.Model
	hook   *test.Hook
	portOf map[uint16]uint16 // original port -> upstream port

	mu        sync.Mutex
	decisions []Decision
}

type harnessOpt func(*Config)

func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, ca: newTestCA(t), dns: newFakeDNS(t), alloc: model.NewPortAllocator(), portOf: map[uint16]uint16{}}
	h.up = newUpstream(t, h.ca, "127.0.0.1")
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	h.hook = hook
	cfg := Config{
		Log:                   logger.WithField("component", "proxy"),
		Certs:                 h.ca,
		Resolver:              h.dns.resolver(),
		UpstreamCAs:           []*x509.Certificate{h.ca.cert},
		AllowPrivateUpstreams: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		HostLocal:             testHostLocal,
		BindAddr:              "127.0.0.1",
		ListenPort:            func(uint16) uint16 { return 0 },
		UpstreamPort: func(p uint16) uint16 {
			h.mu.Lock()
			defer h.mu.Unlock()
			if up, ok := h.portOf[p]; ok {
				return up
			}
			return h.up.port
		},
		SniffTimeout: 3 * time.Second,
		DialTimeout:  3 * time.Second,
		DrainTimeout: 500 * time.Millisecond,
		OnDecision: func(d Decision) {
			h.mu.Lock()
			h.decisions = append(h.decisions, d)
			h.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	e, err := New(cfg)
	require.NoError(t, err)
	h.e = e
	t.Cleanup(func() { _ = e.Close() })
	return h
}

func (h *harness) mapPort(orig, up uint16) {
	h.mu.Lock()
	h.portOf[orig] = up
	h.mu.Unlock()
}

// apply builds the model for snap and applies it.
func (h *harness) apply(snap *policy.Snapshot) {
	h.t.Helper()
	m, err := model.Build(snap, h.alloc)
	require.NoError(h.t, err)
	h.model = m
	require.NoError(h.t, h.e.Apply(snap, m))
}

// webAddr returns the bound address of the web listener for origPort.
func (h *harness) webAddr(origPort uint16) string {
	h.t.Helper()
	for _, l := range h.model.Listeners {
		if l.Kind == model.KindWeb && l.OrigPort == origPort {
			a := h.e.Addr(l.Port, l.L4)
			require.NotNil(h.t, a)
			return a.String()
		}
	}
	h.t.Fatalf("no web listener for port %d", origPort)
	return ""
}

func (h *harness) dedicatedAddr(proto policy.Proto, dst string, port uint16) string {
	h.t.Helper()
	l, ok := h.listenerByKey(model.DedicatedKey(proto, dst, port))
	require.True(h.t, ok, "dedicated listener %s:%s:%d", proto, dst, port)
	a := h.e.Addr(l.Port, l.L4)
	require.NotNil(h.t, a)
	return a.String()
}

func (h *harness) listenerByKey(key string) (model.Listener, bool) {
	for _, l := range h.model.Listeners {
		if l.Key == key {
			return l, true
		}
	}
	return model.Listener{}, false
}

func (h *harness) lastDecision() Decision {
	h.mu.Lock()
	defer h.mu.Unlock()
	require.NotEmpty(h.t, h.decisions)
	return h.decisions[len(h.decisions)-1]
}

func (h *harness) waitDecision(pred func(Decision) bool) Decision {
	h.t.Helper()
	var found Decision
	require.Eventually(h.t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, d := range h.decisions {
			if pred(d) {
				found = d
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)
	return found
}

// dialFrom opens a TCP connection to addr from source IP src.
func dialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", addr)
	require.NoError(t, err)
	return c.(*net.TCPConn)
}

// tlsFrom opens a TLS connection to name through the proxy listener addr.
func (h *harness) tlsFrom(src, addr, name string, alpn ...string) (*tls.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		// A reset can beat connect(2)'s own completion on loopback.
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: h.ca.pool(), NextProtos: alpn})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

// httpClient returns a client whose connections go to the proxy listener
// addr from src, whatever the URL says.
func (h *harness) httpClient(src, addr string, h2 bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: h.ca.pool()},
		ForceAttemptHTTP2: h2,
		DisableKeepAlives: false,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func readAll(t testing.TB, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(b)
}

func modelBuild(snap *policy.Snapshot, h *harness) (*model.Model, error) {
	return model.Build(snap, h.alloc)
}
