package builtin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
)

// TestPassthroughHelloThenRest: the relay sends the peeked ClientHello
// upstream on its own before relaying the rest; the upstream receives
// exactly the client's bytes, once and in order, whether the hello comes in
// one record, in several, or in two writes, and whether the client's next
// bytes arrive together with it or after it; the flow's record counts every
// byte.
func TestPassthroughHelloThenRest(t *testing.T) {
	var spliced atomic.Int64
	spliceHook = func(_, _ net.Conn) { spliced.Add(1) }
	t.Cleanup(func() { spliceHook = nil })
	opt, records := withRecords()
	h := newHarness(t, opt)
	srv := newScriptServer(t)
	// The server reads everything, then answers with the count and hash.
	srv.set(func(c *net.TCPConn) {
		sum := sha256.New()
		n, _ := io.Copy(sum, c)
		fmt.Fprintf(c, "%d %s\n", n, hex.EncodeToString(sum.Sum(nil)))
	})
	h.mapPort(443, srv.port)
	h.dns.set("api.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	hello := clientHello(t, "api.example.test")
	tail := make([]byte, 256<<10)
	_, _ = newPRNG().Read(tail)

	for i, tc := range []struct {
		name   string
		writes [][]byte
	}{
		{"hello and the rest in one write", [][]byte{append(append([]byte{}, hello...), tail...)}},
		{"hello, then the rest", [][]byte{hello, tail}},
		{"hello in two writes, the rest with its second half", [][]byte{hello[:100], append(append([]byte{}, hello[100:]...), tail...)}},
		{"hello in three records", [][]byte{splitRecords(hello, 300), tail}},
		{"hello alone", [][]byte{hello}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.2", h.webAddr(443))
			defer c.Close()
			want := sha256.New()
			total := 0
			for _, w := range tc.writes {
				_, err := c.Write(w)
				require.NoError(t, err)
				want.Write(w)
				total += len(w)
				time.Sleep(5 * time.Millisecond) // separate segments
			}
			require.NoError(t, c.CloseWrite())
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			answer := fmt.Sprintf("%d %s\n", total, hex.EncodeToString(want.Sum(nil)))
			require.Equal(t, answer, string(got), "the upstream got exactly the client's bytes")
			require.Equal(t, int64(i+1), spliced.Load())
			var rec *decisionlog.Record
			require.Eventually(t, func() bool {
				if recs := records(); len(recs) == i+1 {
					rec = &recs[i]
				}
				return rec != nil
			}, 5*time.Second, 5*time.Millisecond)
			require.Equal(t, decisionlog.Allow, rec.Verdict)
			require.Equal(t, uint64(total), rec.BytesUp, "the hello and the rest counted once")
			require.Equal(t, uint64(len(answer)), rec.BytesDown)
		})
	}
}

// withRecords has the engine hand its decision records to the returned
// getter (Config.Record) instead of logging them.
func withRecords() (harnessOpt, func() []decisionlog.Record) {
	var mu sync.Mutex
	var recs []decisionlog.Record
	return func(c *Config) {
			c.Record = func(r decisionlog.Record) {
				mu.Lock()
				recs = append(recs, r)
				mu.Unlock()
			}
		}, func() []decisionlog.Record {
			mu.Lock()
			defer mu.Unlock()
			return append([]decisionlog.Record(nil), recs...)
		}
}

// TestLookupCacheKeepsTTL: the proxy keeps its own resolution of a name no
// longer than the answer's TTL (and not at all at TTL 0), even when
// ResolveCacheTTL is longer; a rule revoked while the name's answer is
// cached refuses the next connection before anything is resolved or
// dialled.
func TestLookupCacheKeepsTTL(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ResolveCacheTTL = time.Hour })
	const name = "api.example.test"
	h.dns.set(name, "127.0.0.1")
	// The plugin's resolver, on the harness's DNS (before any listener runs).
	h.e.cfg.Resolver = UpstreamResolver([]string{h.dns.addr})
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	lookup := func() netip.Addr {
		t.Helper()
		addrs, err := h.e.lookup(t.Context(), 1, name)
		require.NoError(t, err)
		require.Len(t, addrs, 1)
		return addrs[0]
	}

	h.dns.setTTL(2)
	start := time.Now()
	require.Equal(t, "127.0.0.1", lookup().String())
	asked := h.dns.questions(name)
	h.dns.set(name, "127.0.0.3")
	require.Equal(t, "127.0.0.1", lookup().String(), "within the TTL: from the cache")
	require.Equal(t, asked, h.dns.questions(name))
	time.Sleep(time.Until(start.Add(2*time.Second + 50*time.Millisecond)))
	require.Equal(t, "127.0.0.3", lookup().String(), "after the TTL: asked again")
	require.Equal(t, asked+1, h.dns.questions(name))

	h.dns.setTTL(0)
	h.e.dnsCache.Clear()
	lookup()
	lookup()
	require.Equal(t, asked+3, h.dns.questions(name), "TTL 0: never kept")

	// Revocation with the name's answer cached for a while.
	h.dns.set(name, "127.0.0.1")
	h.dns.setTTL(60)
	h.e.dnsCache.Clear()
	tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), name)
	require.NoError(t, err)
	tc.Close()
	asked = h.dns.questions(name)
	h.apply(snapshot(2, endpoint(1, "127.0.0.2", &policy.Policy{Allows: []policy.Allowed{
		allow(".pkg.example.test", policy.ProtoHTTPS, 443, 443)}})))
	_, err = h.tlsFrom("127.0.0.2", h.webAddr(443), name)
	require.Error(t, err, "the revoked name is refused")
	d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Name == name })
	require.Equal(t, policy.ReasonNoRule, d.Reason)
	require.Equal(t, asked, h.dns.questions(name), "nothing resolved for a refused flow")
}

// TestParseHelloManyExtensions: a hello with more extensions than the
// short list holds is read as before: its server name found, a repeated
// extension refused whether the first copy sits in the list or past it,
// and the bytes it was read from left untouched (one record is read in
// place; several are copied together).
func TestParseHelloManyExtensions(t *testing.T) {
	many := clientHello(t, "api.example.test")
	for i := 0; i < 60; i++ {
		many = addExtension(t, many, uint16(0x7000+i), []byte{byte(i)})
	}
	for _, in := range [][]byte{many, splitRecords(many, 100)} {
		orig := append([]byte(nil), in...)
		h, err := parseHello(in)
		require.NoError(t, err)
		require.Equal(t, "api.example.test", h.sni)
		require.Zero(t, helloNeed(in))
		require.Equal(t, orig, in, "parsing wrote to the peeked bytes")
	}
	for _, typ := range []uint16{0x7000, 0x7030, 0x703b, 0} {
		_, err := parseHello(addExtension(t, many, typ, nil))
		require.ErrorContains(t, err, "repeats extension", "%#04x", typ)
		_, err = parseHello(splitRecords(addExtension(t, many, typ, nil), 64))
		require.ErrorContains(t, err, "repeats extension", "%#04x split", typ)
	}
}
