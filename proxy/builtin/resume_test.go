package builtin

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestInspectionResumesSessions: a client that reconnects to an inspected
// name resumes the TLS session the proxy gave it (one server config per
// leaf), while a ticket of one name is never accepted for another (the
// session is then fully negotiated, and the request still decided by its
// own name).
func TestInspectionResumesSessions(t *testing.T) {
	h := newHarness(t)
	h.dns.set("a.example.test", "127.0.0.1")
	h.dns.set("b.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{
		allow("a.example.test", policy.ProtoHTTPS, 443, 443, inspected),
		allow("b.example.test", policy.ProtoHTTPS, 443, 443, inspected),
	}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	addr := h.webAddr(443)

	// get makes one request on a new connection and reports whether its
	// handshake resumed a session from cache.
	get := func(name string, cache tls.ClientSessionCache) bool {
		t.Helper()
		// The cross-name client skips its own check of the certificate
		// (a Go client never offers a session whose certificate does not
		// cover the name): the proxy's refusal is what is tested.
		_, cross := cache.(*oneSessionCache)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp4", addr)
		require.NoError(t, err)
		tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: h.ca.pool(), ClientSessionCache: cache, NextProtos: []string{"http/1.1"}, InsecureSkipVerify: cross})
		defer tc.Close()
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		require.NoError(t, tc.Handshake())
		req, err := http.NewRequest("GET", "https://"+name+"/x", nil)
		require.NoError(t, err)
		require.NoError(t, req.Write(tc))
		// Reading the answer also reads the tickets sent after the handshake.
		resp, err := http.ReadResponse(bufio.NewReader(tc), req)
		require.NoError(t, err)
		body := readAll(t, resp.Body)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		return tc.ConnectionState().DidResume
	}

	cache := tls.NewLRUClientSessionCache(8)
	require.False(t, get("a.example.test", cache))
	require.True(t, get("a.example.test", cache), "the second connection to the same name resumes")

	// a's session offered for b (a client cache that answers every name
	// with a's session) is refused: b's handshake is a full one.
	cross := &oneSessionCache{}
	require.False(t, get("a.example.test", cross))
	require.NotNil(t, cross.s)
	require.False(t, get("b.example.test", cross), "a ticket of a.example.test must not resume b.example.test")
}

// oneSessionCache keeps the last session it was given and offers it for
// every server name.
type oneSessionCache struct{ s *tls.ClientSessionState }

func (c *oneSessionCache) Get(string) (*tls.ClientSessionState, bool) { return c.s, c.s != nil }

func (c *oneSessionCache) Put(_ string, s *tls.ClientSessionState) {
	if s != nil {
		c.s = s
	}
}
