package builtin

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestInspectedRequestRevoked: every request is decided on the policy of
// the moment, and a running request stays tracked with the facts it was
// allowed on (its own method and path, not only its connection's name):
//   - a path rule revoked closes the WebSocket stream that its handshake's
//     path opened, while the connection's name stays allowed;
//   - the next request on a kept-alive connection (HTTP/1.1 and HTTP/2) is
//     denied at once when its path is revoked, and allowed again when the
//     rule comes back: nothing decided earlier is reused (a denial closes
//     its connection: the request after one opens a new connection).
func TestInspectedRequestRevoked(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	gen := uint64(0)
	apply := func(paths ...string) {
		var rules []policy.PathRule
		for _, p := range paths {
			rules = append(rules, policy.PathRule{Path: p, Action: policy.Allow})
		}
		gen++
		pol := &policy.Policy{Allows: []policy.Allowed{
			allow("api.example.test", policy.ProtoHTTPS, 443, 443, inspected, withPaths(policy.Deny, rules...)),
		}}
		h.apply(snapshot(gen, endpoint(1, "127.0.0.2", pol)))
	}
	apply("/ws", "/ok")
	addr := h.webAddr(443)

	// A WebSocket stream opened on /ws.
	tc, br := h.websocket("127.0.0.2", addr, "api.example.test", "/ws")
	_, err := io.WriteString(tc, "frame\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "frame\n", line)

	// Kept-alive clients, one connection each.
	clients := map[string]*http.Client{"HTTP/1.1": h.httpClient("127.0.0.2", addr, false), "HTTP/2.0": h.httpClient("127.0.0.2", addr, true)}
	get := func(proto, path string, wantReused bool) int {
		t.Helper()
		reused := false
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.example.test"+path, nil)
		require.NoError(t, err)
		resp, err := clients[proto].Do(req)
		require.NoError(t, err, "%s %s", proto, path)
		body := readAll(t, resp.Body)
		resp.Body.Close()
		require.Equal(t, proto, resp.Proto)
		require.Equal(t, wantReused, reused, "%s %s: connection reuse", proto, path)
		if resp.StatusCode == http.StatusForbidden {
			require.Contains(t, resp.Header.Get("X-Clawker-Denied"), string(policy.ReasonPath), body)
		}
		return resp.StatusCode
	}
	for proto := range clients {
		require.Equal(t, 200, get(proto, "/ok", false))
		require.Equal(t, 200, get(proto, "/ws", true))
	}

	// /ws revoked: the stream ends, the connections of the clients stay.
	apply("/ok")
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(tc, "after\n")
	if err == nil {
		_, err = br.ReadString('\n')
	}
	require.Error(t, err, "the WebSocket stream of a revoked path is still open")
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	for proto := range clients {
		require.Equal(t, 403, get(proto, "/ws", true), proto)
		require.Equal(t, 200, get(proto, "/ok", false), proto) // a denial closes its connection
	}

	// Every path revoked, then /ws allowed again: each next request on the
	// same connections follows.
	apply()
	for proto := range clients {
		require.Equal(t, 403, get(proto, "/ok", true), proto)
	}
	apply("/ws")
	for proto := range clients {
		require.Equal(t, 200, get(proto, "/ws", false), proto)
		require.Equal(t, 403, get(proto, "/ok", true), proto)
	}
}

// websocket opens a WebSocket stream to name's path through the proxy
// listener addr from src (HTTP/1.1 under inspection) and returns it after
// the 101; the test's upstream then echoes lines. It is closed with the test.
func (h *harness) websocket(src, addr, name, path string) (*tls.Conn, *bufio.Reader) {
	h.t.Helper()
	tc, err := h.tlsFrom(src, addr, name, "http/1.1")
	require.NoError(h.t, err)
	h.t.Cleanup(func() { tc.Close() })
	_, err = io.WriteString(tc, "GET "+path+" HTTP/1.1\r\nHost: "+name+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	require.NoError(h.t, err)
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(h.t, err)
	require.Equal(h.t, 101, resp.StatusCode)
	return tc, br
}
