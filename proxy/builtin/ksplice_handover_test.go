package builtin

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bpf"
)

// Tests of the kernel path's variants: the direction split
// (Config.SpliceDownloadOnly: uploads by splice(2), downloads in the
// kernel) and the deferred hand-over (Config.SpliceAfter: a flow moves
// that many bytes through the proxy (read/write) first, then enters the kernel path mid-flow).

func withSpliceUpload(on bool) harnessOpt { return func(c *Config) { c.SpliceDownloadOnly = !on } }

func withSpliceAfter(n int64) harnessOpt { return func(c *Config) { c.SpliceAfter = n } }

// countHandovers counts flows handed from splice(2) to the kernel.
func countHandovers(t *testing.T) *atomic.Int64 {
	n := new(atomic.Int64)
	spliceHandoverHook = func(up, down int64) { n.Add(1) }
	t.Cleanup(func() { spliceHandoverHook = nil })
	return n
}

// requireNoEntries waits until the splice maps are empty.
func requireNoEntries(t *testing.T, s *bpf.Splicer) {
	t.Helper()
	require.Eventually(t, func() bool {
		entries, err := s.Entries()
		require.NoError(t, err)
		for _, n := range entries {
			if n != 0 {
				return false
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond, "the maps keep entries of a closed flow")
}

// spliceModes are the kernel path's variants: both directions or
// downloads only, handed over at once or after some bytes (1: at the
// first byte; odd sizes: mid-segment, mid-record).
var spliceModes = []struct {
	name   string
	upload bool
	after  int64
}{
	{"both/at once", true, 0},
	{"download/at once", false, 0},
	{"both/after 1", true, 1},
	{"both/after 4097", true, 4097},
	{"download/after 4097", false, 4097},
	{"both/after 1MiB+13", true, 1<<20 + 13},
	{"download/after 1MiB+13", false, 1<<20 + 13},
}

// TestKernelSpliceHandover moves bytes both ways at once (an echo), then a
// download and an upload, through every variant, and checks every byte at
// the receiving end by SHA-256 (the upload byte for byte at the server):
// the hand-over from splice(2) to the kernel mid-flow loses, duplicates
// and reorders nothing, in either direction, and leaves no map entry.
func TestKernelSpliceHandover(t *testing.T) {
	s := openSplicer(t)
	const echoN, n = 16 << 20, 32 << 20
	for _, m := range spliceModes {
		t.Run(m.name, func(t *testing.T) {
			kernel, user := countKernel(t)
			handovers := countHandovers(t)
			h, srv, addr := tcpSpliceSetup(t, s, withSpliceUpload(m.upload), withSpliceAfter(m.after))
			srv.set(func(c *net.TCPConn) {
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if line == "ECHO\n" {
					_, _ = io.Copy(c, br)
					_ = c.CloseWrite()
					return
				}
				sinkSendLine(n, 1, 2, 0)(c, br, line)
			})

			// echo: both directions move at the hand-over
			c := dialFrom(t, "127.0.0.2", addr)
			_, err := io.WriteString(c, "ECHO\n")
			require.NoError(t, err)
			werr := make(chan error, 1)
			go func() {
				_, err := io.Copy(c, io.LimitReader(aesStream(3), echoN))
				if err == nil {
					err = c.CloseWrite()
				}
				werr <- err
			}()
			hs := sha256.New()
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
			got, err := io.Copy(hs, c)
			require.NoError(t, err)
			require.NoError(t, <-werr)
			require.Equal(t, int64(echoN), got)
			require.Equal(t, hashOf(aesStream(3), echoN), hex.EncodeToString(hs.Sum(nil)), "echo")
			c.Close()

			// download
			c = dialFrom(t, "127.0.0.2", addr)
			_, err = io.WriteString(c, "SEND\n")
			require.NoError(t, err)
			hs = sha256.New()
			got, err = io.Copy(hs, c)
			require.NoError(t, err)
			require.Equal(t, int64(n), got)
			require.Equal(t, hashOf(aesStream(2), n), hex.EncodeToString(hs.Sum(nil)), "download")
			require.NoError(t, c.CloseWrite())
			c.Close()

			sinkUpload(t, addr, n)

			require.Equal(t, int64(3), kernel.Load(), "flows in the kernel path")
			require.Zero(t, user.Load())
			if m.after > 0 {
				require.Equal(t, int64(3), handovers.Load(), "flows handed over mid-flow")
			} else {
				require.Zero(t, handovers.Load())
			}
			up, down := kernelBytes(t, h, "up"), kernelBytes(t, h, "down")
			t.Logf("the program moved %d MiB up, %d MiB down", up>>20, down>>20)
			require.Greater(t, down, int64(n/2), "the program moved little of the downloads")
			if m.upload {
				require.Greater(t, up, int64(n/2), "the program moved little of the uploads")
			} else {
				require.Zero(t, up, "uploads took the kernel path in the direction split")
			}
			requireNoEntries(t, s)
		})
	}
}

// sinkUpload sends n bytes of aesStream(1) to sinkSend's SINK and checks
// its answer: every byte arrived, in order.
func sinkUpload(t *testing.T, addr string, n int64) {
	t.Helper()
	c := dialFrom(t, "127.0.0.2", addr)
	defer c.Close()
	_, err := io.WriteString(c, "SINK\n")
	require.NoError(t, err)
	_, err = io.Copy(c, io.LimitReader(aesStream(1), n))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	ans, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%d -1\n", n), string(ans), "upload: bytes received, first difference")
}

// TestKernelSpliceShortFlows: a flow that moves fewer bytes than
// Config.SpliceAfter never enters the kernel path (FIN and answer after it
// intact); one that moves more is handed over once.
func TestKernelSpliceShortFlows(t *testing.T) {
	s := openSplicer(t)
	kernel, user := countKernel(t)
	handovers := countHandovers(t)
	_, srv, addr := tcpSpliceSetup(t, s, withSpliceUpload(true), withSpliceAfter(1<<20))
	srv.set(sinkSend(4<<20, 1, 2, 0))
	for _, size := range []int64{0, 1, 100 << 10, 1<<20 - 6} { // SINK\n counts
		sinkUpload(t, addr, size)
	}
	require.Zero(t, kernel.Load()+user.Load(), "a short flow reached the kernel path")
	require.Zero(t, handovers.Load())
	// A longer one: 4 MiB down, the server's FIN only after the client's
	// (else the whole flow may sit in the sockets' buffers, FIN included,
	// when the proxy reaches 1 MiB: such a flow ends on splice(2)).
	srv.set(func(c *net.TCPConn) {
		_, _ = io.Copy(c, io.LimitReader(aesStream(2), 4<<20))
		_, _ = io.Copy(io.Discard, c)
		_ = c.CloseWrite()
	})
	c := dialFrom(t, "127.0.0.2", addr)
	hs := sha256.New()
	got, err := io.Copy(hs, io.LimitReader(c, 4<<20))
	require.NoError(t, err)
	require.Equal(t, int64(4<<20), got)
	require.Equal(t, hashOf(aesStream(2), 4<<20), hex.EncodeToString(hs.Sum(nil)))
	require.NoError(t, c.CloseWrite())
	rest, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Empty(t, rest)
	c.Close()
	require.Equal(t, int64(1), handovers.Load())
	require.Equal(t, int64(1), kernel.Load())
	requireNoEntries(t, s)
}

// TestKernelSpliceHalfCloseModes: TestKernelSpliceHalfClose's 100 payloads
// each way (1 to 4000 bytes, then a FIN) in the direction split and with a
// hand-over after 1000 bytes, so that many flows switch paths next to
// their FIN.
func TestKernelSpliceHalfCloseModes(t *testing.T) {
	s := openSplicer(t)
	for _, m := range []struct {
		name   string
		upload bool
		after  int64
	}{{"download", false, 0}, {"both/after 1000", true, 1000}, {"download/after 1000", false, 1000}} {
		t.Run(m.name, func(t *testing.T) {
			halfClose(t, s, withSpliceUpload(m.upload), withSpliceAfter(m.after))
			requireNoEntries(t, s)
		})
	}
}

// TestKernelSpliceRevokedModes: a rule revoked closes the flow in every
// variant, before the hand-over (on splice(2)) and after it.
func TestKernelSpliceRevokedModes(t *testing.T) {
	s := openSplicer(t)
	for _, m := range spliceModes {
		t.Run(m.name, func(t *testing.T) {
			revoked(t, s, withSpliceUpload(m.upload), withSpliceAfter(m.after))
		})
	}
}
