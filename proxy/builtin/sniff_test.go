package builtin

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// clientHello captures the ClientHello crypto/tls sends for name (Go 1.26
// offers X25519MLKEM768 by default: a ~1.8 KB post-quantum hello).
func clientHello(t testing.TB, name string) []byte {
	t.Helper()
	return recordHello(t, &tls.Config{ServerName: name})
}

// recordHello returns the first TLS record (the ClientHello) a crypto/tls
// client with cfg sends.
func recordHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		_ = tls.Client(a, cfg).Handshake()
		a.Close()
	}()
	buf := make([]byte, 5)
	_, err := io.ReadFull(b, buf)
	require.NoError(t, err)
	body := make([]byte, binary.BigEndian.Uint16(buf[3:]))
	_, err = io.ReadFull(b, body)
	require.NoError(t, err)
	b.Close()
	return append(buf, body...)
}

// splitRecords re-frames one handshake record into records of at most n
// payload bytes each (legal TLS; rare but seen in the wild).
func splitRecords(rec []byte, n int) []byte {
	var out []byte
	payload := rec[5:]
	for len(payload) > 0 {
		k := min(n, len(payload))
		out = append(out, 0x16, rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, payload[:k]...)
		payload = payload[k:]
	}
	return out
}

func TestParseSNI(t *testing.T) {
	hello := clientHello(t, "api.example.test")
	t.Logf("ClientHello: %d bytes", len(hello))
	require.Greater(t, len(hello), 1200, "expected a post-quantum sized hello")
	tests := []struct {
		name string
		in   []byte
		want string
		err  bool
	}{
		{"one record", hello, "api.example.test", false},
		{"many records", splitRecords(hello, 100), "api.example.test", false},
		{"truncated", hello[:len(hello)-10], "", true},
		{"not tls", []byte("GET / HTTP/1.1\r\n\r\n"), "", true},
		{"empty", nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHello(tt.in)
			got := h.sni
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, 0, helloNeed(tt.in))
		})
	}
	for i := 0; i < len(hello); i += 7 {
		require.NotEqual(t, 0, helloNeed(hello[:i]), "prefix %d", i)
	}
}

func FuzzParseSNI(f *testing.F) {
	f.Add(clientHello(f, "a.example.test"))
	f.Add(splitRecords(clientHello(f, "b.example.test"), 50))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseHello(b)
		_ = helloNeed(b)
	})
}

// TestPeekSegmentedHello sends a post-quantum ClientHello in pieces, with
// pauses, as several TCP segments: the proxy must peek until it is whole and
// still splice the untouched bytes.
func TestPeekSegmentedHello(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
	for _, framing := range []string{"one record", "many records"} {
		t.Run(framing, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.2", h.webAddr(443))
			require.NoError(t, c.SetNoDelay(true))
			pr, pw := net.Pipe()
			// A real TLS client on a pipe; we forward its bytes in pieces.
			tc := tls.Client(pr, &tls.Config{ServerName: "api.example.test", RootCAs: h.ca.pool()})
			go func() {
				first := true
				buf := make([]byte, 64<<10)
				for {
					n, err := pw.Read(buf)
					if err != nil {
						c.CloseWrite()
						return
					}
					data := buf[:n]
					if first {
						first = false
						if framing == "many records" {
							data = splitRecords(data, 300)
						}
						for len(data) > 0 {
							k := min(200, len(data))
							_, _ = c.Write(data[:k])
							data = data[k:]
							time.Sleep(20 * time.Millisecond)
						}
						continue
					}
					if _, err := c.Write(data); err != nil {
						return
					}
				}
			}()
			go func() { _, _ = io.Copy(pw, c); pw.Close() }()
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			require.NoError(t, tc.Handshake())
			_, err := io.WriteString(tc, "ECHO\nsegmented\n")
			require.NoError(t, err)
			buf := make([]byte, 10)
			_, err = io.ReadFull(tc, buf)
			require.NoError(t, err)
			require.Equal(t, "segmented\n", string(buf))
			tc.Close()
			c.Close()
		})
	}
	d := h.waitDecision(func(d Decision) bool { return d.Allowed })
	require.Equal(t, policy.ReasonAllowed, d.Reason)
}
