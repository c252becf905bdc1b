package builtin

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"golang.org/x/net/http2/hpack"

	"github.com/clawker-fw/clawker-fw/policy"
)

const wsHeaders = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

// TestUpgradeRefusal reads raw request heads as Go's server does and checks
// which may change the connection's protocol: only a correct WebSocket
// handshake, whatever the spelling of the others.
func TestUpgradeRefusal(t *testing.T) {
	for _, tt := range []struct {
		name, head string
		ok         bool
	}{
		{"plain GET", "GET / HTTP/1.1\r\nHost: a\r\n", true},
		{"websocket", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + wsHeaders, true},
		{"websocket case", "GET / HTTP/1.1\r\nHost: a\r\nconnection: keep-alive, UPGRADE\r\nupgrade: WebSocket\r\n" + wsHeaders, true},
		{"websocket split connection", "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" + wsHeaders, true},
		{"h2c", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", false},
		{"h2c without settings", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n", false},
		{"H2C case", "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: H2C\r\n", false},
		{"h2c then websocket", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n" + wsHeaders, false},
		{"websocket then h2c", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n" + wsHeaders, false},
		{"two upgrade lines", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n" + wsHeaders, false},
		{"websocket with HTTP2-Settings", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABk\r\n" + wsHeaders, false},
		{"HTTP2-Settings alone", "GET / HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: AAMAAABk\r\n", false},
		{"upgrade without connection", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n", false},
		{"websocket without connection", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n" + wsHeaders, false},
		{"connection upgrade alone", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n", false},
		{"empty upgrade", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: \r\n", false},
		{"versioned websocket", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket/13\r\n" + wsHeaders, false},
		{"TLS upgrade", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: TLS/1.0\r\n", false},
		{"POST websocket", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + wsHeaders, false},
		{"HTTP/1.0 websocket", "GET / HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + wsHeaders, false},
		{"websocket no key", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n", false},
		{"websocket short key", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: YWJj\r\n", false},
		{"websocket version 8", "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", false},
		{"CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n", false},
		{"CONNECT no host", "CONNECT a:443 HTTP/1.1\r\n", false},
		{"PRI", "PRI * HTTP/2.0\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tt.head + "\r\n")))
			require.NoError(t, err)
			_, why := upgradeRefusal(r)
			if tt.ok {
				require.Empty(t, why)
			} else {
				require.NotEmpty(t, why)
			}
		})
	}
	// HTTP/2 extended CONNECT as x/net's server hands it over.
	r := &http.Request{Method: "CONNECT", Proto: "HTTP/2.0", ProtoMajor: 2, Header: http.Header{":protocol": {"websocket"}}}
	_, why := upgradeRefusal(r)
	require.Contains(t, why, "extended CONNECT")
}

// h2cUpstream is a plain-HTTP upstream that speaks h2c (upgrade and prior
// knowledge) and WebSocket, and records every request it serves.
type h2cUpstream struct {
	port uint16
	mu   sync.Mutex
	seen []string
}

func newH2CUpstream(t *testing.T) *h2cUpstream {
	t.Helper()
	u := &h2cUpstream{}
	inner := upstreamHandler("http")
	hf := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Proto+" "+r.Host+" "+r.URL.Path)
		u.mu.Unlock()
		inner.ServeHTTP(w, r)
	})
	prior := h2c.NewHandler(hf, &http2.Server{})
	lenient := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Like fronts that upgrade to h2c without an HTTP2-Settings header
		// (which Go's reverse proxy drops as hop-by-hop).
		if !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), "h2c") {
			prior.ServeHTTP(w, r)
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		(&http2.Server{}).ServeConn(&bufConn{Conn: c, r: rw.Reader}, &http2.ServeConnOpts{Handler: hf, UpgradeRequest: r})
	})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: lenient}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	u.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	return u
}

func (u *h2cUpstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.seen...)
}

// h2Frames returns a client's HTTP/2 opening (SETTINGS) and one HEADERS
// frame on stream id with the given fields, in order.
func h2Frames(t *testing.T, id uint32, fields ...string) []byte {
	t.Helper()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := 0; i+1 < len(fields); i += 2 {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}))
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	require.NoError(t, fr.WriteSettings())
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}))
	return out.Bytes()
}

// TestPlainHTTPUpgradeRefused is h2c smuggling through a plain-HTTP flow
// (decided per request by Host): the upgrade request is refused with a 403
// that says why, the connection is closed after it, and nothing sent with
// or after it reaches the upstream; the WebSocket handshake and a normal
// request are the controls.
func TestPlainHTTPUpgradeRefused(t *testing.T) {
	h := newHarness(t)
	up := newH2CUpstream(t)
	h.mapPort(80, up.port)
	h.dns.set("web.example.test", "127.0.0.1")
	h.dns.set("nope.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("web.example.test", policy.ProtoHTTP, 80, 80)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	smuggled := string(h2Frames(t, 3, ":method", "GET", ":scheme", "http", ":authority", "nope.example.test", ":path", "/smuggled"))
	preface := http2.ClientPreface

	// Each attempt sends head, reads the answer and, should the proxy have
	// switched protocols, sends after: what a client does once it sees the
	// 101.
	h2cAfter := preface + smuggled
	for _, tt := range []struct{ name, head, after string }{
		{"h2c upgrade", "GET / HTTP/1.1\r\nHost: web.example.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" +
			"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", h2cAfter},
		{"h2c upgrade, no settings", "GET / HTTP/1.1\r\nHost: web.example.test\r\nConnection: upgrade\r\nUpgrade: H2C\r\n\r\n", h2cAfter},
		{"upgrade list", "GET / HTTP/1.1\r\nHost: web.example.test\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n" + wsHeaders + "\r\n", h2cAfter},
		{"prior knowledge", preface + smuggled, ""},
		{"CONNECT", "CONNECT nope.example.test:80 HTTP/1.1\r\nHost: nope.example.test:80\r\n\r\n", "GET /smuggled HTTP/1.1\r\nHost: nope.example.test\r\n\r\n"},
		{"CONNECT allowed host", "CONNECT web.example.test:80 HTTP/1.1\r\nHost: web.example.test:80\r\n\r\n", "GET /smuggled HTTP/1.1\r\nHost: nope.example.test\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.2", h.webAddr(80))
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err := io.WriteString(c, tt.head)
			require.NoError(t, err)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			if resp.StatusCode == http.StatusSwitchingProtocols || resp.StatusCode == http.StatusOK {
				_, _ = io.WriteString(c, tt.after)
				time.Sleep(300 * time.Millisecond)
			}
			for _, r := range up.requests() {
				require.NotContains(t, r, "smuggled", "a request inside the tunnel reached the upstream")
			}
			body := readAll(t, resp.Body)
			require.Equal(t, http.StatusForbidden, resp.StatusCode, body)
			require.Contains(t, resp.Header.Get("X-Clawker-Denied"), string(ReasonUpgrade))
			require.Contains(t, body, "refused")
			// The connection ends after the refusal: nothing sent after it
			// is served or piped.
			_, _ = io.WriteString(c, tt.after)
			rest, _ := io.ReadAll(br)
			require.Empty(t, rest)
			require.Empty(t, up.requests())
		})
	}
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonUpgrade })
	require.False(t, d.Allowed)
	require.Equal(t, "web.example.test", d.Name)
	require.NotEmpty(t, d.Detail)

	// Controls: a normal request, then a WebSocket handshake whose stream
	// is piped (opaque) once the upstream accepted it.
	cl := h.httpClient("127.0.0.2", h.webAddr(80), false)
	resp, err := cl.Get("http://web.example.test/ok")
	require.NoError(t, err)
	require.Equal(t, "http GET web.example.test /ok", readAll(t, resp.Body))
	resp.Body.Close()
	c := dialFrom(t, "127.0.0.2", h.webAddr(80))
	defer c.Close()
	_, err = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+wsHeaders+"\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err = http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	require.Equal(t, websocketAccept("dGhlIHNhbXBsZSBub25jZQ=="), resp.Header.Get("Sec-WebSocket-Accept"))
	msg := "GET /inside HTTP/1.1 Host: nope.example.test\n"
	_, err = io.WriteString(c, msg)
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, msg, line)
	require.Equal(t, []string{"HTTP/1.1 web.example.test /ok", "HTTP/1.1 web.example.test /ws"}, up.requests())
}

// TestInspectedUpgradeRefused: the same refusals on inspected TLS, over
// HTTP/1.1 and HTTP/2 (CONNECT and extended CONNECT).
func TestInspectedUpgradeRefused(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("api.example.test", policy.ProtoHTTPS, 443, 443, inspected)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))

	t.Run("h1 h2c", func(t *testing.T) {
		tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test", "http/1.1")
		require.NoError(t, err)
		defer tc.Close()
		_, err = io.WriteString(tc, "GET / HTTP/1.1\r\nHost: api.example.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Contains(t, resp.Header.Get("X-Clawker-Denied"), string(ReasonUpgrade))
	})
	for _, tt := range []struct {
		name   string
		fields []string
	}{
		{"h2 CONNECT", []string{":method", "CONNECT", ":authority", "api.example.test:443"}},
		{"h2 extended CONNECT", []string{":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/ws", ":authority", "api.example.test",
			"sec-websocket-version", "13"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test", "h2")
			require.NoError(t, err)
			defer tc.Close()
			require.Equal(t, "h2", tc.ConnectionState().NegotiatedProtocol)
			_, err = io.WriteString(tc, http2.ClientPreface+string(h2Frames(t, 1, tt.fields...)))
			require.NoError(t, err)
			status, hdr, rst := h2Response(t, tc, 1)
			if rst != nil {
				// x/net's server does not offer extended CONNECT (unless
				// GODEBUG=http2xconnect=1) and resets the stream before any
				// handler runs; with it on, the handler refuses (403).
				require.Equal(t, "h2 extended CONNECT", tt.name)
				require.Equal(t, http2.ErrCodeProtocol, *rst)
				return
			}
			require.Equal(t, "403", status)
			require.Contains(t, hdr["x-clawker-denied"], string(ReasonUpgrade))
		})
	}
}

// h2Response reads frames until the response HEADERS of stream id and
// returns its :status and fields, or the error code of a reset of it.
func h2Response(t *testing.T, c *tls.Conn, id uint32) (string, map[string]string, *http2.ErrCode) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(io.Discard, c)
	fields := map[string]string{}
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { fields[f.Name] = f.Value })
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err)
		if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == id {
			_, err := dec.Write(hf.HeaderBlockFragment())
			require.NoError(t, err)
			return fields[":status"], fields, nil
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			return "", nil, &rst.ErrCode
		}
	}
}

// TestCheckSwitch: a 101 is passed on (and the connection piped) only for
// a checked WebSocket handshake that the upstream answered correctly.
func TestCheckSwitch(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	mk := func(status int, withKey bool, hdr ...string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, "http://a/", nil)
		if withKey {
			req = req.WithContext(&request{Context: req.Context(), wsKey: key})
		}
		res := &http.Response{StatusCode: status, Header: http.Header{}, Request: req}
		for i := 0; i+1 < len(hdr); i += 2 {
			res.Header.Add(hdr[i], hdr[i+1])
		}
		return res
	}
	good := websocketAccept(key)
	require.Equal(t, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", good) // RFC 6455 section 1.3
	require.NoError(t, checkSwitch(mk(200, false)))
	require.NoError(t, checkSwitch(mk(101, true, "Upgrade", "websocket", "Sec-WebSocket-Accept", good)))
	require.Error(t, checkSwitch(mk(101, false, "Upgrade", "websocket", "Sec-WebSocket-Accept", good)))
	require.Error(t, checkSwitch(mk(101, true, "Upgrade", "h2c", "Sec-WebSocket-Accept", good)))
	require.Error(t, checkSwitch(mk(101, true, "Upgrade", "websocket", "Upgrade", "h2c", "Sec-WebSocket-Accept", good)))
	require.Error(t, checkSwitch(mk(101, true, "Upgrade", "websocket", "Sec-WebSocket-Accept", "x")))
	require.Error(t, checkSwitch(mk(101, true)))
}
