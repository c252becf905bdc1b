package builtin

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestRefusedTLSGetsAccessDenied: a passthrough ClientHello whose server
// name is refused (no rule, a deny, a rule of another protocol) is answered
// with a TLS access_denied alert that real clients report; an allowed one
// still works, and a connection without a ClientHello is still reset.
func TestRefusedTLSGetsAccessDenied(t *testing.T) {
	h := newHarness(t)
	for _, n := range []string{"api.example.test", "evil.example.test", "bad.pkg.example.test", "plain.example.test"} {
		h.dns.set(n, "127.0.0.1")
	}
	pol := basicPolicy()
	pol.Denies = []policy.Denied{deny("bad.pkg.example.test")}
	pol.Allows = append(pol.Allows, allow("plain.example.test", policy.ProtoHTTP, 443, 443))
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	addr := h.webAddr(443)

	for _, tc := range []struct{ sni, reason string }{
		{"evil.example.test", string(policy.ReasonNoRule)},
		{"bad.pkg.example.test", string(policy.ReasonDenyRule)},
		{"plain.example.test", string(ReasonProtoMismatch)},
	} {
		t.Run("Go crypto/tls "+tc.sni, func(t *testing.T) {
			_, err := h.tlsFrom("127.0.0.2", addr, tc.sni)
			require.Error(t, err)
			// crypto/tls reports a received alert by its description
			// (its alert type is unexported).
			require.ErrorContains(t, err, "remote error: tls: access denied")
			d := h.waitDecision(func(d Decision) bool { return !d.Allowed && d.Name == tc.sni })
			require.Equal(t, tc.reason, string(d.Reason))
		})
	}

	t.Run("raw alert record", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: "evil.example.test"})
		go func() { _ = tc.Handshake() }()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var got bytes.Buffer
		_, _ = got.ReadFrom(c)
		require.Equal(t, []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49}, got.Bytes(), "one fatal access_denied alert, then a clean close")
	})

	t.Run("openssl s_client", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("no openssl on PATH")
		}
		// openssl cannot bind a source address: 127.0.0.1 is endpoint 1
		// in a second snapshot.
		h.apply(snapshot(2, endpoint(1, "127.0.0.1", pol)))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "openssl", "s_client", "-connect", addr, "-servername", "evil.example.test").CombinedOutput()
		require.Contains(t, string(out), "alert access denied", "%s", out)
	})

	t.Run("curl", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("no curl on PATH")
		}
		h.apply(snapshot(3, endpoint(1, "127.0.0.1", pol)))
		_, port, _ := net.SplitHostPort(addr)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "curl", "-sS", "--resolve", "evil.example.test:"+port+":127.0.0.1",
			"https://evil.example.test:"+port+"/").CombinedOutput()
		require.Error(t, err)
		require.Contains(t, string(out), "alert access denied", "%s", out)
	})

	t.Run("an allowed name still works", func(t *testing.T) {
		h.apply(snapshot(4, endpoint(1, "127.0.0.2", pol)))
		tc, err := h.tlsFrom("127.0.0.2", addr, "api.example.test")
		require.NoError(t, err)
		tc.Close()
	})
}
