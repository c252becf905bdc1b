package e2e

// Hardening tests of the proxy's edges (issue 11, classes 2 and 8b, proxy
// side): upgrades and tunnels on flows decided per request, Encrypted
// ClientHello on passthrough, and upstreams that are the host itself. Each
// attempt is made from a firewalled Debian container with a real client
// (curl, or python3 writing the bytes an attacker would), next to a control
// that shows the legitimate neighbour still works.

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// pyUpgrade sends one HTTP/1.1 request head (argv[1], "\n" for line ends)
// to allowed.example.test:80, prints the status line and X-Clawker-Denied
// of the answer and, if the proxy switched protocols, what an attacker sends
// next: the HTTP/2 preface and a request for denied.example.test on stream
// 3 (HPACK literals). It then prints how many more bytes came back.
const pyUpgrade = `
import socket, struct, sys
def lit(n, v):
    return b"\x00" + bytes([len(n)]) + n.encode() + bytes([len(v)]) + v.encode()
def frame(t, flags, sid, p):
    return struct.pack("!I", len(p))[1:] + bytes([t, flags]) + struct.pack("!I", sid) + p
hb = lit(":method", "GET") + lit(":scheme", "http") + lit(":authority", "denied.example.test") + lit(":path", "/pe-smuggled")
h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 5, 3, hb)
head = sys.argv[1].replace("\\n", "\r\n").encode()
if head.startswith(b"PRI"):
    head = h2
s = socket.create_connection(("allowed.example.test", 80), timeout=10)
s.sendall(head)
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        break
    buf += d
lines = buf.split(b"\r\n")
print("STATUS", lines[0].decode())
for l in lines:
    if l.lower().startswith(b"x-clawker-denied:"):
        print("DENIED", l.decode())
cl = 0
for l in lines:
    if l.lower().startswith(b"content-length:"):
        cl = int(l.split(b":")[1])
rest = buf.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in buf else b""
s.settimeout(2)
try:
    s.sendall(h2)
    while True:
        d = s.recv(4096)
        if not d:
            break
        rest += d
except OSError:
    pass
print("MORE", len(rest) - cl)
`

// pyWebSocket does a WebSocket handshake with allowed.example.test/ws on
// port 80 and sends one masked text frame (argv[1]); it prints the status
// line and the echoed text.
const pyWebSocket = `
import socket, sys, os, struct
s = socket.create_connection(("allowed.example.test", 80), timeout=10)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: allowed.example.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        sys.exit("connection closed: %r" % buf)
    buf += d
head, rest = buf.split(b"\r\n\r\n", 1)
print("STATUS", head.split(b"\r\n")[0].decode())
msg = sys.argv[1].encode()
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
while len(rest) < 2 + len(msg):
    d = s.recv(4096)
    if not d:
        sys.exit("connection closed after %r" % rest)
    rest += d
print("ECHO", rest[2:2 + rest[1]].decode())
`

// pyHello sends a hand-made TLS 1.3 ClientHello for allowed.example.test:443
// (SNI argv[1]), with an encrypted_client_hello extension (0xfe0d, an outer
// ECH payload as Chrome's GREASE or a real ECH client sends) when argv[2] is
// "ech", and prints the first byte the far end answers with ("0x16" is a
// ServerHello) or what ended the connection.
const pyHello = `
import os, socket, struct, sys
def ext(t, d):
    return struct.pack("!HH", t, len(d)) + d
name = sys.argv[1].encode()
exts = ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
exts += ext(10, struct.pack("!HH", 2, 0x001d))
exts += ext(13, struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401))
exts += ext(43, bytes([2, 3, 4]))
exts += ext(51, struct.pack("!HHH", 36, 0x001d, 32) + os.urandom(32))
if sys.argv[2] == "ech":
    exts += ext(0xfe0d, b"\x00" + struct.pack("!HHB", 1, 1, 0x42) + struct.pack("!H", 32) + os.urandom(32) + struct.pack("!H", 144) + os.urandom(144))
body = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + struct.pack("!HH", 2, 0x1301) + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
s = socket.create_connection(("allowed.example.test", 443), timeout=10)
s.sendall(b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs)
try:
    d = s.recv(1)
    print("FIRST", "0x%02x" % d[0] if d else "eof")
except OSError as e:
    print("FIRST", type(e).__name__)
`

// fakenetSaw returns the fake internet's log entries that match.
func fakenetSaw(t *testing.T, e *harness.Env, match func(fakenet.Entry) bool) []fakenet.Entry {
	t.Helper()
	log, err := e.FakenetLog()
	require.NoError(t, err)
	var out []fakenet.Entry
	for _, en := range log {
		if match(en) {
			out = append(out, en)
		}
	}
	return out
}

// TestHardeningProxyedgeUpgrades: on a plain-HTTP flow (decided per request
// by Host) every upgrade but WebSocket, CONNECT and the h2c preface get a
// 403 that says why, and a request for a denied host sent in the would-be
// tunnel never reaches the fake internet (whose HTTP servers do switch to
// h2c). Controls: a WebSocket handshake (echo through the opaque stream) and
// a normal request to the same host.
func TestHardeningProxyedgeUpgrades(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pe-up", 171, "clawker.allow=http://allowed.example.test")
	c := f.detached(t, "--network", n.Name, f.debian, "sleep", "600")
	off := len(f.dockerdLog(t))

	for _, tt := range []struct{ name, head string }{
		{"h2c upgrade", `GET / HTTP/1.1\nHost: allowed.example.test\nConnection: Upgrade\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\n\n`},
		{"h2c upgrade, settings in Connection", `GET / HTTP/1.1\nHost: allowed.example.test\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\n\n`},
		{"upgrade list and case", `GET / HTTP/1.1\nHost: allowed.example.test\nConnection: upgrade\nUpgrade: H2C, websocket\n\n`},
		{"CONNECT", `CONNECT denied.example.test:80 HTTP/1.1\nHost: denied.example.test:80\n\n`},
		{"h2c prior knowledge", "PRI"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := f.exec(c, "python3", "-c", pyUpgrade, tt.head)
			require.NoError(t, err, out)
			require.Contains(t, out, "STATUS HTTP/1.1 403", out)
			require.Contains(t, out, "upgrade-refused", out)
			require.Contains(t, out, "MORE 0", "bytes after a refused upgrade: %s", out)
		})
	}
	// A real client's h2c upgrade (curl --http2 over cleartext).
	out, err := f.exec(c, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--http2", "http://allowed.example.test/pe-curl-h2c")
	require.NoError(t, err, out)
	require.Equal(t, "403", strings.TrimSpace(out))

	time.Sleep(500 * time.Millisecond)
	smuggled := fakenetSaw(t, f.e, func(en fakenet.Entry) bool {
		return en.Kind == fakenet.KindHTTP && (en.Name == harness.DeniedHost || strings.Contains(en.Path, "pe-smuggled") || strings.Contains(en.Path, "pe-curl"))
	})
	require.Empty(t, smuggled, "requests of refused upgrades reached the fake internet")
	require.Contains(t, f.logTail(t, off), "upgrade-refused", "no denial line for the refused upgrades")

	// Controls: WebSocket through the proxy, and a normal request.
	out, err = f.exec(c, "python3", "-c", pyWebSocket, "GET / HTTP/1.1 Host: denied.example.test")
	require.NoError(t, err, out)
	require.Contains(t, out, "STATUS HTTP/1.1 101", out)
	require.Contains(t, out, "ECHO GET / HTTP/1.1 Host: denied.example.test", out)
	out, err = f.exec(c, "curl", "-sS", "--max-time", "10", "http://allowed.example.test/pe-normal")
	require.NoError(t, err, out)
	require.Contains(t, out, "fakenet host=allowed.example.test path=/pe-normal")
	require.Empty(t, fakenetSaw(t, f.e, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindHTTP && en.Name == harness.DeniedHost }))
	f.requireNoLeaks(t)
}

// TestHardeningProxyedgeECH: a ClientHello carrying Encrypted ClientHello
// with an allowed outer name is refused on passthrough (a TLS access_denied
// alert) before anything is
// dialled (ech-refused); the same hello without ECH reaches the upstream,
// which answers with a ServerHello.
func TestHardeningProxyedgeECH(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pe-ech", 172, "clawker.allow=allowed.example.test")
	c := f.detached(t, "--network", n.Name, f.debian, "sleep", "600")
	off := len(f.dockerdLog(t))
	tlsConns := func() int {
		return len(fakenetSaw(t, f.e, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindConn && en.Service == "https" }))
	}

	out, err := f.exec(c, "python3", "-c", pyHello, harness.AllowedHost, "ech")
	require.NoError(t, err, out)
	require.NotContains(t, out, "FIRST 0x16", "an ECH ClientHello got an answer from the upstream: %s", out)
	require.Contains(t, f.logTail(t, off), "ech-refused")
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, tlsConns(), "the ECH hello reached the fake internet")

	out, err = f.exec(c, "python3", "-c", pyHello, harness.AllowedHost, "plain")
	require.NoError(t, err, out)
	require.Contains(t, out, "FIRST 0x16", out)
	require.Equal(t, 1, tlsConns())
	out, err = f.exec(c, "curl", "-sS", "--max-time", "10", "https://allowed.example.test/pe-ech-control")
	require.NoError(t, err, out)
	require.Contains(t, out, "fakenet host=allowed.example.test path=/pe-ech-control")
	f.requireNoLeaks(t)
}

// hostListener listens on addr in the host's namespace (where the proxy
// dials from), answers "host-ok" and counts connections.
func hostListener(t *testing.T, addr string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_, _ = c.Write([]byte("host-ok\n"))
			c.Close()
		}
	}()
	return &n
}

// TestHardeningProxyedgeHostLocal: a name under an allowed wildcard that
// resolves to the host itself (host-local.wild.example.test -> 10.220.0.1,
// inside CLAWKER_ALLOW_PRIVATE_UPSTREAMS in these tests) is refused at dial:
// a listener of the host on that address sees nothing. Controls: another
// name under the same wildcard, and the explicit way to the host, an exact
// tcp://host.docker.internal:PORT rule (the network's gateway).
func TestHardeningProxyedgeHostLocal(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	const hostPort = 18080
	n := f.createNet(t, "cfw-pe-host", 173, "clawker.allow=.wild.example.test,tcp://host.docker.internal:"+fmt.Sprint(hostPort))
	onHostIP := hostListener(t, harness.HostIP+":443")
	onGateway := hostListener(t, fmt.Sprintf("%s:%d", n.Gateway, hostPort))
	c := f.detached(t, "--network", n.Name, f.debian, "sleep", "600")
	off := len(f.dockerdLog(t))

	out, err := f.exec(c, "curl", "-sS", "--max-time", "10", "https://"+harness.HostLocalHost+"/pe-host")
	require.Error(t, err, out)
	require.Contains(t, f.logTail(t, off), "host-local")
	require.Zero(t, onHostIP.Load(), "the proxy dialled the host's own address")

	out, err = f.exec(c, "curl", "-sS", "--max-time", "10", "https://ok."+harness.WildcardSuffix+"/pe-wild")
	require.NoError(t, err, out)
	require.Contains(t, out, "fakenet host=ok.wild.example.test path=/pe-wild")

	out, err = f.exec(c, "python3", "-c", fmt.Sprintf(
		`import socket; print(socket.create_connection(("host.docker.internal", %d), timeout=10).recv(64).decode().strip())`, hostPort))
	require.NoError(t, err, out)
	require.Contains(t, out, "host-ok")
	require.Equal(t, int64(1), onGateway.Load())
	require.Zero(t, onHostIP.Load())
	f.requireNoLeaks(t)
}
