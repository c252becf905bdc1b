package builtin

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// echConfigList is an ECHConfigList (RFC 9849 section 4) with one X25519 /
// HKDF-SHA256 / AES-128-GCM configuration for publicName, whose private key
// nobody keeps: a client using it sends real ECH that no server can open.
func echConfigList(t testing.TB, publicName string) []byte {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	pub := key.PublicKey().Bytes()
	var c []byte
	c = append(c, 7)          // config_id
	c = append(c, 0x00, 0x20) // kem_id DHKEM(X25519, HKDF-SHA256)
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = append(c, 0x00, 0x04, 0x00, 0x01, 0x00, 0x01) // HKDF-SHA256, AES-128-GCM
	c = append(c, 0)                                  // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = append(c, 0x00, 0x00) // extensions
	cfg := binary.BigEndian.AppendUint16([]byte{0xfe, 0x0d}, uint16(len(c)))
	cfg = append(cfg, c...)
	list := binary.BigEndian.AppendUint16(nil, uint16(len(cfg)))
	return append(list, cfg...)
}

// echHello captures the ClientHello crypto/tls sends for inner name with an
// ECH configuration whose public (outer) name is outer.
func echHello(t testing.TB, outer, inner string) []byte {
	t.Helper()
	return recordHello(t, echClientConfig(t, outer, inner))
}

func echClientConfig(t testing.TB, outer, inner string) *tls.Config {
	return &tls.Config{ServerName: inner, MinVersion: tls.VersionTLS13, EncryptedClientHelloConfigList: echConfigList(t, outer)}
}

// addExtension appends extension typ to a one-record ClientHello and fixes
// the three lengths around it.
func addExtension(t testing.TB, rec []byte, typ uint16, data []byte) []byte {
	t.Helper()
	out := append([]byte(nil), rec...)
	out = binary.BigEndian.AppendUint16(out, typ)
	out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
	out = append(out, data...)
	grow := 4 + len(data)
	binary.BigEndian.PutUint16(out[3:], binary.BigEndian.Uint16(out[3:])+uint16(grow))
	hl := int(out[6])<<16 | int(out[7])<<8 | int(out[8]) + grow
	out[6], out[7], out[8] = byte(hl>>16), byte(hl>>8), byte(hl)
	p := 9 + 2 + 32
	p += 1 + int(out[p])
	p += 2 + int(binary.BigEndian.Uint16(out[p:]))
	p += 1 + int(out[p])
	binary.BigEndian.PutUint16(out[p:], binary.BigEndian.Uint16(out[p:])+uint16(grow))
	return out
}

// TestParseHelloECH: every codepoint that hides the server name is seen,
// wherever it sits, and the server name is still read.
func TestParseHelloECH(t *testing.T) {
	plain := clientHello(t, "api.example.test")
	h, err := parseHello(plain)
	require.NoError(t, err)
	require.Equal(t, hello{sni: "api.example.test"}, h)

	h, err = parseHello(echHello(t, "api.example.test", "secret.example.test"))
	require.NoError(t, err)
	require.Equal(t, "api.example.test", h.sni, "the outer name is what the proxy sees")
	require.Equal(t, uint16(0xfe0d), h.ech)

	grease := make([]byte, 90)
	_, _ = rand.Read(grease)
	grease[0] = 0 // outer
	for _, typ := range []uint16{0xfe0d, 0xfe08, 0xfe09, 0xfe0a, 0xfe0b, 0xfe0c, 0xfd00, 0xff02, 0xff03, 0xffce} {
		h, err := parseHello(addExtension(t, plain, typ, grease))
		require.NoError(t, err)
		require.Equal(t, typ, h.ech, "%#04x", typ)
		require.Equal(t, "api.example.test", h.sni)
		h, err = parseHello(splitRecords(addExtension(t, plain, typ, nil), 64))
		require.NoError(t, err)
		require.Equal(t, typ, h.ech, "%#04x split", typ)
	}
	for _, typ := range []uint16{0x0a0a, 0xfafa, 0x0010, 0xfe10, 0xff04} {
		h, err := parseHello(addExtension(t, plain, typ, grease))
		require.NoError(t, err)
		require.Zero(t, h.ech, "%#04x", typ)
	}
	// A repeated extension (two server names) is refused.
	sni := []byte{0, 14, 0, 0, 11}
	sni = append(sni, "evil.test.x"...)
	_, err = parseHello(addExtension(t, plain, 0, sni))
	require.ErrorContains(t, err, "repeats extension")
}

// TestECHPassthroughRefused: a ClientHello with ECH whose outer name is
// allowed for passthrough is refused (reset, ech-refused) before anything
// is dialled; the same client without ECH passes.
func TestECHPassthroughRefused(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	c := dialFrom(t, "127.0.0.2", h.webAddr(443))
	tc := tls.Client(c, echClientConfig(t, "api.example.test", "secret.example.test"))
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	err := tc.Handshake()
	require.Error(t, err)
	tc.Close()
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonECH })
	require.False(t, d.Allowed)
	require.Equal(t, "api.example.test", d.Name)
	require.Contains(t, d.Detail, "0xfe0d")

	ok, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
	require.NoError(t, err)
	ok.Close()
}

// TestECHInspected: on an inspected flow the proxy terminates TLS with the
// outer hello (crypto/tls has no ECH keys and ignores the extension), so a
// real ECH client sees its ECH rejected for the outer name and stops; the
// inner name reaches nothing.
func TestECHInspected(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("api.example.test", policy.ProtoHTTPS, 443, 443, inspected)}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	c := dialFrom(t, "127.0.0.2", h.webAddr(443))
	cfg := echClientConfig(t, "api.example.test", "secret.example.test")
	cfg.RootCAs = h.ca.pool()
	tc := tls.Client(c, cfg)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	err := tc.Handshake()
	tc.Close()
	var rej *tls.ECHRejectionError
	require.True(t, errors.As(err, &rej), "want an ECH rejection after a verified outer handshake, got %v", err)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.decisions {
		require.NotEqual(t, "secret.example.test", d.Name)
		require.NotEqual(t, ReasonECH, d.Reason)
	}
}
