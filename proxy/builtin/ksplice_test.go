package builtin

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Tests of the kernel path (Config.Splicer, bpf/splice.c) on the real
// kernel: privileged; they skip when not root and fail under CI=true.

// openSplicer opens the kernel splicer or fails (skips locally when not
// root).
func openSplicer(t testing.TB) *bpf.Splicer {
	t.Helper()
	testutil.RequirePrivileged(t)
	s, err := bpf.OpenSplicer()
	require.NoError(t, err, "this kernel must support the sockmap splice")
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func withSplicer(s *bpf.Splicer) harnessOpt { return func(c *Config) { c.Splicer = s } }

// countKernel counts flows by the path they took.
func countKernel(t *testing.T) (kernel, user *atomic.Int64) {
	kernel, user = new(atomic.Int64), new(atomic.Int64)
	kernelSpliceHook = func(k bool) {
		if k {
			kernel.Add(1)
		} else {
			user.Add(1)
		}
	}
	t.Cleanup(func() { kernelSpliceHook = nil })
	return kernel, user
}

// scriptServer is a TCP server whose connections are served by the
// function the test sets.
type scriptServer struct {
	ln    net.Listener
	port  uint16
	mu    sync.Mutex
	serve func(c *net.TCPConn)
}

func newScriptServer(t testing.TB) *scriptServer {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	s := &scriptServer{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			fn := s.serve
			s.mu.Unlock()
			go func() {
				defer c.Close()
				fn(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *scriptServer) set(fn func(c *net.TCPConn)) {
	s.mu.Lock()
	s.serve = fn
	s.mu.Unlock()
}

// tcpSpliceSetup returns a harness with a tcp://db.example.test:5432 rule
// for 127.0.0.2 whose upstream is srv, and the dedicated listener address.
func tcpSpliceSetup(t *testing.T, s *bpf.Splicer, opts ...harnessOpt) (*harness, *scriptServer, string) {
	h := newHarness(t, append([]harnessOpt{withSplicer(s)}, opts...)...)
	srv := newScriptServer(t)
	h.mapPort(5432, srv.port)
	h.dns.set("db.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", tcpPolicy())))
	return h, srv, h.dedicatedAddr(policy.ProtoTCP, "db.example.test", 5432)
}

func tcpPolicy() *policy.Policy {
	return &policy.Policy{Allows: []policy.Allowed{allow("db.example.test", policy.ProtoTCP, 5432, 5432)}}
}

// aesStream: a fast deterministic byte stream (AES-CTR); aesStream for bulk payloads.
func aesStream(seed byte) io.Reader {
	key := bytes.Repeat([]byte{seed}, 16)
	b, _ := aes.NewCipher(key)
	return cipher.StreamReader{S: cipher.NewCTR(b, make([]byte, 16)), R: zeroReader{}}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func hashOf(r io.Reader, n int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, io.LimitReader(r, n))
	return hex.EncodeToString(h.Sum(nil))
}

func TestKernelSpliceSmoke(t *testing.T) {
	s := openSplicer(t)
	kernel, user := countKernel(t)
	_, srv, addr := tcpSpliceSetup(t, s)
	srv.set(func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "hello\n") // the server speaks first
		_, _ = io.Copy(c, c)
	})
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	br := helloPing(t, c)
	require.NoError(t, c.CloseWrite())
	_, err := br.ReadByte()
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, int64(1), kernel.Load())
	require.Zero(t, user.Load())
}

// TestKernelSpliceSendBuffer: both of the proxy's sockets of a flow in the
// kernel path carry kernelSendBuffer (read back by ss from the kernel's
// socket diagnostics), so the kernel's one-jiffy re-queue of a full send
// buffer does not idle the flow (setKernelSendBuffer).
func TestKernelSpliceSendBuffer(t *testing.T) {
	s := openSplicer(t)
	kernel, _ := countKernel(t)
	_, srv, addr := tcpSpliceSetup(t, s)
	srv.set(func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "hello\n")
		_, _ = io.Copy(c, c)
	})
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	helloPing(t, c)
	require.Equal(t, int64(1), kernel.Load())
	_, lport, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	// The proxy's accepted socket (source port: the listener's) and its
	// upstream socket (destination port: the server's).
	filter := fmt.Sprintf("( sport = :%s or dport = :%d )", lport, srv.port)
	out, err := exec.Command("ss", "-tmnH", "state", "established", filter).CombinedOutput()
	require.NoError(t, err, "%s", out)
	bufs := regexp.MustCompile(`\btb(\d+)`).FindAllStringSubmatch(string(out), -1)
	require.Len(t, bufs, 2, "the proxy's two sockets of the flow: %s", out)
	for _, m := range bufs {
		tb, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		require.GreaterOrEqual(t, tb, kernelSendBuffer, "a socket in the kernel path has a small send buffer: %s", out)
	}
}

// procIOPid reads rchar and wchar of this process (see procIO).
func ioNow(t *testing.T) int64 {
	r, w := procIO(t)
	return r + w
}

// helloPing expects the server's "hello" line, then has "ping" echoed.
func helloPing(t *testing.T, c net.Conn) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(c)
	l, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "hello\n", l)
	_, err = io.WriteString(c, "ping\n")
	require.NoError(t, err)
	l, err = br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ping\n", l)
	return br
}

// TestKernelSpliceIntegrity moves 1 GiB each way through a spliced tcp flow
// and checks it on the receiving end (upload: byte for byte at the server;
// download: SHA-256 at the client). The splice program moves every byte
// (pausing the sender whenever the receiver falls behind), the proxy's
// process copies nothing, and its log line counts every byte.
func TestKernelSpliceIntegrity(t *testing.T) {
	s := openSplicer(t)
	kernel, user := countKernel(t)
	h, srv, addr := tcpSpliceSetup(t, s)
	const n = 1 << 30
	srv.set(sinkSend(n, 1, 2, 0))
	t.Run("upload", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		io0 := ioNow(t)
		_, err := io.WriteString(c, "SINK\n")
		require.NoError(t, err)
		_, err = io.Copy(c, io.LimitReader(aesStream(1), n))
		require.NoError(t, err)
		require.NoError(t, c.CloseWrite())
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("%d -1\n", n), string(got), "bytes received, first difference")
		requireKernelCopied(t, io0, 2*n)
		k := kernelBytes(t, h, "up")
		t.Logf("upload: the splice program moved %d of %d MiB", k>>20, n>>20)
		// A sender paused when its FIN comes cannot re-enter the socket map
		// (established sockets only): the proxy relays that tail.
		require.Greater(t, k, int64(n/2), "the splice program moved little of the upload")
	})
	t.Run("download", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		io0 := ioNow(t)
		_, err := io.WriteString(c, "SEND\n")
		require.NoError(t, err)
		hs := sha256.New()
		m, err := io.Copy(hs, c)
		require.NoError(t, err)
		require.Equal(t, int64(n), m)
		require.Equal(t, hashOf(aesStream(2), n), hex.EncodeToString(hs.Sum(nil)))
		requireKernelCopied(t, io0, 2*n)
		require.NoError(t, c.CloseWrite())
		k := kernelBytes(t, h, "down")
		t.Logf("download: the splice program moved %d of %d MiB", k>>20, n>>20)
		require.Greater(t, k, int64(n/2), "the splice program moved little of the download")
	})
	require.Equal(t, int64(2), kernel.Load())
	require.Zero(t, user.Load())
	// The canonical lines count the bytes the kernel moved.
	require.Eventually(t, func() bool {
		var ups, downs []uint64
		for _, e := range h.hook.AllEntries() {
			if e.Message != logMessage || e.Data[fieldDecision] != "allow" {
				continue
			}
			ups = append(ups, e.Data[fieldBytesUp].(uint64))
			downs = append(downs, e.Data[fieldBytesDown].(uint64))
		}
		answer := uint64(len(fmt.Sprintf("%d -1\n", n)))
		return len(ups) == 2 && ups[0] == n+5 && downs[0] == answer && ups[1] == 5 && downs[1] == n
	}, 5*time.Second, 20*time.Millisecond)
}

// requireKernelCopied checks that this process read and wrote only the
// test's own endpoint bytes (base): the proxy moved its share in the kernel
// (the program; read/write only for a tail after a FIN during a pause).
func requireKernelCopied(t *testing.T, io0, base int64) {
	t.Helper()
	moved := ioNow(t) - io0
	require.Less(t, moved, base+base/4, "the proxy copied the flow through userspace")
}

// kernelPauses and kernelBytes wait until the flows of h have ended and
// return how often direction dir was paused, and how many of its bytes the
// splice program moved.
func kernelPauses(t *testing.T, h *harness, dir string) int64 {
	return flowCounter(t, h, h.e.metrics.kernelPauses, dir)
}

func kernelBytes(t *testing.T, h *harness, dir string) int64 {
	return flowCounter(t, h, h.e.metrics.kernelBytes, dir)
}

func flowCounter(t *testing.T, h *harness, v *prometheus.CounterVec, dir string) int64 {
	t.Helper()
	require.Eventually(t, func() bool { return h.e.Health().Conns == 0 }, 10*time.Second, 10*time.Millisecond)
	var m dto.Metric
	require.NoError(t, v.WithLabelValues(dir).Write(&m))
	return int64(m.GetCounter().GetValue())
}

// sinkSend serves "SINK\n" (it reads to EOF after delay, comparing with
// aesStream(sink), and answers "<bytes> <first difference or -1>") and
// "SEND\n" (n bytes of aesStream(send), then FIN).
func sinkSend(n int64, sink, send byte, delay time.Duration) func(c *net.TCPConn) {
	serve := sinkSendLine(n, sink, send, delay)
	return func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		serve(c, br, line)
	}
}

// sinkSendLine is sinkSend for a connection whose first line was read.
func sinkSendLine(n int64, sink, send byte, delay time.Duration) func(c *net.TCPConn, br *bufio.Reader, line string) {
	return func(c *net.TCPConn, br *bufio.Reader, line string) {
		switch line {
		case "SINK\n":
			time.Sleep(delay) // a receiver that falls behind
			v := &verifier{want: aesStream(sink), bad: -1}
			m, _ := io.Copy(v, br)
			fmt.Fprintf(c, "%d %d\n", m, v.bad)
		case "SEND\n":
			_, _ = io.Copy(c, io.LimitReader(aesStream(send), n))
		}
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, br)
	}
}

// TestKernelSpliceHalfClose: small payloads that end just before a FIN,
// 100 times each way: every byte arrives, then the FIN, and the other
// direction keeps working after the half-close.
func TestKernelSpliceHalfClose(t *testing.T) {
	s := openSplicer(t)
	kernel, _ := countKernel(t)
	halfClose(t, s)
	require.Equal(t, int64(200), kernel.Load())
}

// halfClose runs TestKernelSpliceHalfClose's flows through a harness with
// opts.
func halfClose(t *testing.T, s *bpf.Splicer, opts ...harnessOpt) {
	h, srv, addr := tcpSpliceSetup(t, s, opts...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range h.hook.AllEntries() {
				if e.Message != logMessage {
					t.Logf("log: %s %v", e.Message, e.Data)
				}
			}
		}
	})
	payload := func(i int) []byte {
		b := make([]byte, 1+(i*337)%4000)
		_, _ = io.ReadFull(aesStream(byte(i)), b)
		return b
	}
	var next atomic.Int64
	srv.set(func(c *net.TCPConn) {
		// "R" first: once the client has it, the flow is in the kernel
		// path (a socket that already got its FIN cannot enter it).
		_, _ = io.WriteString(c, "R")
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		i, _ := strconv.Atoi(strings.TrimSpace(line[2:]))
		switch line[:1] {
		case "U": // upload: read to EOF, then answer on the still open half
			got, err := io.ReadAll(br)
			if err != nil {
				return
			}
			ok := "bad"
			if bytes.Equal(got, payload(i)) {
				ok = "ok"
			}
			_, _ = io.WriteString(c, ok)
			_ = c.CloseWrite()
		case "D": // download: the payload, FIN at once; then read the client's answer
			_, _ = c.Write(payload(i))
			_ = c.CloseWrite()
			got, _ := io.ReadAll(br)
			if string(got) == "ok" {
				next.Add(1)
			}
		}
	})
	for i := 0; i < 100; i++ {
		c := dialFrom(t, "127.0.0.2", addr)
		ready(t, c)
		fmt.Fprintf(c, "U %d\n", i)
		_, err := c.Write(payload(i))
		require.NoError(t, err)
		require.NoError(t, c.CloseWrite())
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, "ok", string(got), "upload %d", i)
		c.Close()
	}
	for i := 0; i < 100; i++ {
		c := dialFrom(t, "127.0.0.2", addr)
		ready(t, c)
		fmt.Fprintf(c, "D %d\n", i)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, payload(i), got, "download %d", i)
		_, err = io.WriteString(c, "ok")
		require.NoError(t, err)
		require.NoError(t, c.CloseWrite())
		c.Close()
	}
	require.Eventually(t, func() bool { return next.Load() == 100 }, 10*time.Second, 10*time.Millisecond)
}

func ready(t *testing.T, c net.Conn) {
	t.Helper()
	b := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	require.Equal(t, "R", string(b))
}

// TestKernelSpliceServerFirst: bytes the server sends before the client
// sends anything (an ssh or SMTP greeting) reach the client, and the
// passthrough ClientHello the proxy peeked reaches the server once.
func TestKernelSpliceServerFirst(t *testing.T) {
	s := openSplicer(t)
	kernel, _ := countKernel(t)
	t.Run("tcp greeting", func(t *testing.T) {
		_, srv, addr := tcpSpliceSetup(t, s)
		srv.set(func(c *net.TCPConn) {
			_, _ = io.WriteString(c, "SSH-2.0-test\r\n")
			time.Sleep(50 * time.Millisecond) // the greeting waits in the queue
			_, _ = io.Copy(c, c)
		})
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		time.Sleep(100 * time.Millisecond) // in the kernel path before the client reads
		br := bufio.NewReader(c)
		l, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "SSH-2.0-test\r\n", l)
		_, err = io.WriteString(c, "SSH-2.0-client\r\n")
		require.NoError(t, err)
		l, err = br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "SSH-2.0-client\r\n", l)
	})
	t.Run("passthrough hello", func(t *testing.T) {
		h := newHarness(t, withSplicer(s))
		h.dns.set("api.example.test", "127.0.0.1")
		h.apply(snapshot(1, endpoint(1, "127.0.0.2", basicPolicy())))
		const n = 64 << 20
		tc, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test")
		require.NoError(t, err)
		defer tc.Close()
		_, err = io.WriteString(tc, "SEND "+strconv.Itoa(n)+"\n")
		require.NoError(t, err)
		got, want := sha256.New(), sha256.New()
		m, err := io.Copy(got, tc)
		require.NoError(t, err)
		require.Equal(t, int64(n), m)
		_, _ = io.Copy(want, io.LimitReader(newPRNG(), n))
		require.Equal(t, want.Sum(nil), got.Sum(nil))
	})
	require.Equal(t, int64(2), kernel.Load())
}

// TestKernelSpliceReset: a reset from either peer reaches the other.
func TestKernelSpliceReset(t *testing.T) {
	s := openSplicer(t)
	_, srv, addr := tcpSpliceSetup(t, s)
	t.Run("server resets", func(t *testing.T) {
		srv.set(func(c *net.TCPConn) {
			_, _ = io.WriteString(c, "bye\n")
			time.Sleep(100 * time.Millisecond)
			_ = c.SetLinger(0)
		})
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		require.Equal(t, "bye\n", string(got))
		require.ErrorIs(t, err, syscall.ECONNRESET)
	})
	t.Run("client resets", func(t *testing.T) {
		res := make(chan error, 1)
		srv.set(func(c *net.TCPConn) {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, c)
			res <- err
		})
		c := dialFrom(t, "127.0.0.2", addr)
		_, err := io.WriteString(c, "some bytes")
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, c.SetLinger(0))
		require.NoError(t, c.Close())
		select {
		case err := <-res:
			require.ErrorIs(t, err, syscall.ECONNRESET)
		case <-time.After(5 * time.Second):
			t.Fatal("the server never saw the reset")
		}
	})
}

// sockstatTCPMem is the kernel's TCP memory in bytes (/proc/net/sockstat).
func sockstatTCPMem(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/net/sockstat")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "TCP:") {
			continue
		}
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "mem" {
				p, _ := strconv.ParseInt(f[i+1], 10, 64)
				return p * int64(os.Getpagesize())
			}
		}
	}
	t.Fatal("no TCP mem in /proc/net/sockstat")
	return 0
}

// TestKernelSpliceSlowReader: a fast server and a client that reads slowly.
// The server is held back by TCP (its writes stall), the kernel's TCP
// memory and the proxy's heap stay bounded, and every byte arrives in
// order once the client speeds up.
func TestKernelSpliceSlowReader(t *testing.T) {
	s := openSplicer(t)
	h, srv, addr := tcpSpliceSetup(t, s)
	const n = 512 << 20
	var sent atomic.Int64
	srv.set(func(c *net.TCPConn) {
		w := &countWriter{w: c, n: &sent}
		_, _ = io.Copy(w, io.LimitReader(aesStream(3), n))
		_ = c.CloseWrite()
	})
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	mem0 := sockstatTCPMem(t)
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	require.NoError(t, c.SetReadBuffer(64<<10))
	hs := &verifier{want: aesStream(3), bad: -1}
	var read int64
	var peakMem, peakHeap int64
	buf := make([]byte, 16<<10)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) { // ~1.6 MB/s for 3 s
		m, err := c.Read(buf)
		require.NoError(t, err)
		hs.Write(buf[:m])
		read += int64(m)
		time.Sleep(10 * time.Millisecond)
		if v := sockstatTCPMem(t) - mem0; v > peakMem {
			peakMem = v
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if v := int64(ms.HeapInuse) - int64(ms0.HeapInuse); v > peakHeap {
			peakHeap = v
		}
	}
	t.Logf("slow reader: read %d MiB, server sent %d MiB, peak TCP mem +%d MiB, peak heap +%d MiB",
		read>>20, sent.Load()>>20, peakMem>>20, peakHeap>>20)
	require.Less(t, sent.Load(), int64(96<<20), "the server was never held back")
	require.Less(t, peakMem, int64(96<<20), "kernel memory grew with the backlog")
	require.Less(t, peakHeap, int64(32<<20), "the proxy's heap grew with the backlog")
	m, err := io.Copy(hs, c)
	require.NoError(t, err)
	if read+m != int64(n) || hs.bad >= 0 {
		t.Logf("first difference at %d", hs.bad)
	}
	require.Equal(t, int64(n), read+m)
	require.Equal(t, int64(-1), hs.bad, "the stream differs")
	// The server was held back by pausing its socket.
	require.NoError(t, c.CloseWrite())
	require.GreaterOrEqual(t, kernelPauses(t, h, "down"), int64(1))
}

// verifier compares a stream with want as it is written, byte for byte;
// bad is the offset of the first difference (start it at -1).
type verifier struct {
	want io.Reader
	off  int64
	bad  int64
	buf  []byte
}

func (v *verifier) Write(p []byte) (int, error) {
	if len(v.buf) < len(p) {
		v.buf = make([]byte, len(p))
	}
	w := v.buf[:len(p)]
	_, _ = io.ReadFull(v.want, w)
	if v.bad < 0 && !bytes.Equal(w, p) {
		for i := range p {
			if p[i] != w[i] {
				v.bad = v.off + int64(i)
				break
			}
		}
	}
	v.off += int64(len(p))
	return len(p), nil
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	m, err := c.w.Write(p)
	c.n.Add(int64(m))
	return m, err
}

// TestKernelSpliceRevoked: a rule removed while its flow runs in the kernel
// closes the flow (both peers see it) at the next snapshot.
func TestKernelSpliceRevoked(t *testing.T) { revoked(t, openSplicer(t)) }

// revoked runs TestKernelSpliceRevoked's flow through a harness with opts.
func revoked(t *testing.T, s *bpf.Splicer, opts ...harnessOpt) {
	h, srv, addr := tcpSpliceSetup(t, s, opts...)
	closed := make(chan error, 1)
	srv.set(func(c *net.TCPConn) {
		_, err := io.Copy(c, c)
		closed <- err
	})
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	br := bufio.NewReader(c)
	_, err := io.WriteString(c, "one\n")
	require.NoError(t, err)
	l, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "one\n", l)
	h.apply(snapshot(2, endpoint(1, "127.0.0.2", &policy.Policy{})))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "two\n")
	_, err = br.ReadString('\n')
	require.Error(t, err)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never saw the close")
	}
	requireNoEntries(t, s)
}

// TestKernelSpliceFallback: where the kernel refuses the pair (here: a
// closed splicer), the flow is copied in userspace, same semantics.
func TestKernelSpliceFallback(t *testing.T) {
	s := openSplicer(t)
	require.NoError(t, s.Close())
	kernel, user := countKernel(t)
	_, srv, addr := tcpSpliceSetup(t, s)
	srv.set(func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "hello\n")
		got, _ := io.ReadAll(c)
		_, _ = c.Write(got)
		_ = c.CloseWrite()
	})
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	br := bufio.NewReader(c)
	l, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "hello\n", l)
	_, err = io.WriteString(c, "payload before FIN")
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	got, err := io.ReadAll(br)
	require.NoError(t, err)
	require.Equal(t, "payload before FIN", string(got))
	require.Zero(t, kernel.Load())
	require.Equal(t, int64(1), user.Load())
}

// TestKernelSpliceProcessKilled runs the proxy in a child process, puts a
// flow in the kernel path and kills the child with SIGKILL: both peers see
// the connection end, and the child's splice maps are gone with it.
func TestKernelSpliceProcessKilled(t *testing.T) { processKilled(t, "kernel") }

// TestSpliceProcessKilled: the same with the proxy's splice(2) relay (no
// splicer: CLAWKER_PROXY_KERNEL_SPLICE=false): both peers get a reset, not
// a FIN that would pass a cut stream for a complete one.
func TestSpliceProcessKilled(t *testing.T) { processKilled(t, "userspace") }

// processKilled runs TestKernelSpliceChild's proxy in a child (mode kernel:
// with the splicer; userspace: without), kills it with a flow relayed, and
// checks what both peers see.
func processKilled(t *testing.T, mode string) {
	testutil.RequirePrivileged(t)
	srv := newScriptServer(t)
	srvDone := make(chan error, 1)
	srv.set(func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "hello\n")
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(c, c)
		srvDone <- err
	})
	cmd := exec.Command(os.Args[0], "-test.run=^TestKernelSpliceChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CLAWKER_SPLICE_CHILD="+strconv.Itoa(int(srv.port)), "CLAWKER_SPLICE_CHILD_MODE="+mode)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var addr string
	var ids []ebpf.MapID
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		l := sc.Text()
		if a, ok := strings.CutPrefix(l, "CHILD-ADDR "); ok {
			addr = a
		}
		if v, ok := strings.CutPrefix(l, "CHILD-MAPS"); ok {
			for _, f := range strings.Fields(v) {
				id, _ := strconv.ParseUint(f, 10, 32)
				ids = append(ids, ebpf.MapID(id))
			}
			break
		}
	}
	require.NotEmpty(t, addr, "the child printed no address")
	if mode == "kernel" {
		require.Len(t, ids, 5)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()

	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	br := helloPing(t, c)

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = br.ReadByte()
	require.ErrorIs(t, err, syscall.ECONNRESET, "the client saw no reset")
	select {
	case err := <-srvDone:
		require.ErrorIs(t, err, syscall.ECONNRESET, "the server saw no reset")
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the close")
	}
	for _, id := range ids {
		require.Eventually(t, func() bool {
			m, err := ebpf.NewMapFromID(id)
			if err == nil {
				m.Close()
			}
			return errors.Is(err, os.ErrNotExist)
		}, 5*time.Second, 20*time.Millisecond, "map %d outlived the process", id)
	}
}

// TestKernelSpliceChild is the child of TestKernelSpliceProcessKilled.
func TestKernelSpliceChild(t *testing.T) {
	port := os.Getenv("CLAWKER_SPLICE_CHILD")
	if port == "" {
		t.Skip("child of TestKernelSpliceProcessKilled only")
	}
	up, _ := strconv.Atoi(port)
	var opts []harnessOpt
	var s *bpf.Splicer
	if os.Getenv("CLAWKER_SPLICE_CHILD_MODE") == "kernel" {
		s = openSplicer(t)
		opts = append(opts, withSplicer(s))
	}
	h := newHarness(t, opts...)
	h.mapPort(5432, uint16(up))
	h.dns.set("db.example.test", "127.0.0.1")
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", tcpPolicy())))
	var ids []ebpf.MapID
	if s != nil {
		var err error
		ids, err = s.MapIDs()
		require.NoError(t, err)
	}
	fmt.Printf("CHILD-ADDR %s\n", h.dedicatedAddr(policy.ProtoTCP, "db.example.test", 5432))
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, " %d", id)
	}
	fmt.Printf("CHILD-MAPS%s\n", b.String())
	time.Sleep(time.Minute) // killed by the parent
}

// TestKernelSpliceBackpressure: with a small bound, flows whose receiver
// falls behind are paused and resumed many times, in either direction,
// without losing, repeating or reordering a byte, and with their FIN after
// the last byte (a sender whose FIN comes while it is paused has its tail
// relayed by the proxy).
func TestKernelSpliceBackpressure(t *testing.T) {
	testutil.RequirePrivileged(t)
	s, err := bpf.OpenSplicerWith(bpf.SpliceOptions{HoldBytes: 256 << 10})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	h, srv, addr := tcpSpliceSetup(t, s)
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range h.hook.AllEntries() {
				if e.Message != logMessage {
					t.Logf("log: %s %v", e.Message, e.Data)
				}
			}
		}
	})
	const n = 64 << 20
	srv.set(sinkSend(n, 5, 6, 300*time.Millisecond))
	t.Run("upload", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		_, err := io.WriteString(c, "SINK\n")
		require.NoError(t, err)
		_, err = io.Copy(c, io.LimitReader(aesStream(5), n))
		require.NoError(t, err)
		require.NoError(t, c.CloseWrite())
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("%d -1\n", n), string(got))
	})
	t.Run("download", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		_, err := io.WriteString(c, "SEND\n")
		require.NoError(t, err)
		// Fall behind twice: the pauses must resume, and pause again (a
		// reader that keeps up after one stall may never be 256 KiB
		// behind again, now that a resume wakes on write space).
		time.Sleep(300 * time.Millisecond)
		v := &verifier{want: aesStream(6), bad: -1}
		m1, err := io.Copy(v, io.LimitReader(c, n/2))
		require.NoError(t, err)
		time.Sleep(300 * time.Millisecond)
		m2, err := io.Copy(v, c)
		require.NoError(t, err)
		require.Equal(t, int64(n), m1+m2)
		require.Equal(t, int64(-1), v.bad)
		require.NoError(t, c.CloseWrite())
	})
	for _, dir := range []string{"up", "down"} {
		require.Greater(t, kernelBytes(t, h, dir), int64(n/2), dir)
		require.GreaterOrEqual(t, kernelPauses(t, h, dir), int64(2), dir)
	}
}

// TestKernelSpliceLostEndsWithReset: when the kernel's count of bytes that
// arrived on a socket exceeds what reached its peer (an skb lost between a
// run of the program and the socket's removal from the program's map, made
// here on demand by spliceTestLost), the flow ends with a reset on both
// sides, never with a FIN after the hole; with the counts equal (the
// control, same flow) the FIN goes through.
func TestKernelSpliceLostEndsWithReset(t *testing.T) {
	s := openSplicer(t)
	_, srv, addr := tcpSpliceSetup(t, s)
	flow := func(t *testing.T) (client, server error) {
		res := make(chan error, 1)
		srv.set(func(c *net.TCPConn) {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if err == nil && string(got) != "payload" {
				err = fmt.Errorf("server got %q", got)
			}
			res <- err
		})
		c := dialFrom(t, "127.0.0.2", addr)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		time.Sleep(100 * time.Millisecond) // in the kernel path
		_, err := io.WriteString(c, "payload")
		require.NoError(t, err)
		require.NoError(t, c.CloseWrite())
		select {
		case server = <-res:
		case <-time.After(10 * time.Second):
			t.Fatal("the server saw neither a FIN nor a reset")
		}
		_, client = io.ReadAll(c)
		return client, server
	}
	t.Run("counts equal", func(t *testing.T) {
		client, server := flow(t)
		require.NoError(t, server)
		require.NoError(t, client) // the server's close, as a FIN
	})
	t.Run("one byte lost", func(t *testing.T) {
		spliceTestLost.Store(1)
		t.Cleanup(func() { spliceTestLost.Store(0) })
		client, server := flow(t)
		require.ErrorIs(t, server, syscall.ECONNRESET, "the server took a stream with a hole for a complete one")
		require.ErrorIs(t, client, syscall.ECONNRESET)
	})
}
