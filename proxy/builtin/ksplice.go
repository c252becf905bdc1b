package builtin

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/bpf"
)

// The kernel path of an allowed passthrough or tcp/ssh flow (Config.Splicer):
// after the decision the two sockets enter the splice maps and the stream
// verdict program of bpf/splice.c redirects each one's bytes to the other's
// send path. Userspace keeps:
//   - the decision and the close: one goroutine per direction waits on its
//     source socket (it wakes for a FIN or a reset), forwards the FIN only
//     once every byte before it has entered the peer's send buffer, and
//     only if the kernel's count of bytes received matches what reached
//     the peer (kdir.intact; else it resets), and propagates resets
//     (SO_LINGER 0, then close);
//   - backpressure: when the program reports that a peer fell behind (the
//     kernel's queue in front of it has no bound of its own), the source is
//     paused — taken out of the program's map, so its bytes wait in its
//     receive queue and TCP's window stops the sender — until the queue has
//     drained into the peer's send buffer, then resumed (kdir.throttle);
//   - the accounting: bytes per direction from the program's counters.
//
// Both sockets carry SO_LINGER 0 while they are in the kernel path: if the
// process dies, the kernel closes them with a reset, so neither peer takes a
// cut stream for a complete one; an orderly end clears it before closing.

// kernelSendBuffer is the send buffer (SO_SNDBUF as the kernel reports it,
// twice what is asked) of both sockets of a flow in the kernel path. The
// kernel moves a redirected skb into its target's send buffer from the
// target's psock work item; when that buffer is full the item re-queues
// itself one jiffy later (net/core/skmsg.c, sk_psock_backlog on -EAGAIN),
// and the target's write-space wake-up cannot bring it forward while that
// timer is pending. The buffer must therefore hold what the link drains in
// one jiffy (4 ms at HZ=250: 5 MB at 1.3 GB/s), or the flow idles in every
// such wait. TCP's autotuning sizes it by the congestion window instead,
// which a sub-millisecond local path keeps small. On bench/bridge a 2 MiB
// buffer held bulk flows to 0.24-0.36x of the plain bridge and autotuning
// alone to 0.35-0.55x, where 8 MiB gave 0.53-0.65x
// (bench/results/bridge-kernel-splice-sndbuf.txt, -variants.txt). Memory
// stays bounded per flow: this buffer plus the psock queue the program
// caps (bpf/splice.c, the pause).
const kernelSendBuffer = 8 << 20

// setKernelSendBuffer sizes fd's send buffer for the kernel path
// (kernelSendBuffer). SO_SNDBUFFORCE needs CAP_NET_ADMIN (the plugin has
// it); without it SO_SNDBUF, capped by net.core.wmem_max, is the best
// there is. Neither failing stops the flow: it is only slower.
func setKernelSendBuffer(fd int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, kernelSendBuffer/2) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, kernelSendBuffer/2)
	}
}

// kernelSpliceHook, when set (by tests), is told whether a flow took the
// kernel path.
var kernelSpliceHook func(kernel bool)

// kernelSplice relays up and the flow's client connection through the
// kernel. It returns false, having changed nothing, when the flow cannot
// take the kernel path (no splicer, not two TCP sockets, maps full): the
// caller then copies in userspace.
func (f *flow) kernelSplice(up net.Conn) bool {
	s := f.e.cfg.Splicer
	upTCP, ok := up.(*net.TCPConn)
	if s == nil || !ok || f.tcp == nil {
		return false
	}
	down := f.tcp
	// Where each send buffer's count starts: what was written to either
	// socket so far (nothing, or what spliceFirst relayed), as the program
	// may write to them as soon as Add returns.
	dBase, err1 := streamBytes(down)
	uBase, err2 := streamBytes(upTCP)
	// And each receive queue's: what was read before (nothing: the proxy
	// only peeks; or what spliceFirst relayed). Not in a socket map yet,
	// SIOCINQ is TCP's own.
	dIn, err3 := consumedBytes(down)
	uIn, err4 := consumedBytes(upTCP)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		f.e.log.WithError(err).Debug("kernel splice: cannot read the sockets' counters; copying in userspace")
		return false
	}
	// The client's socket enters the program's map only when uploads take
	// the kernel path too; else its bytes are relayed by splice(2) below.
	upKernel := !f.e.cfg.SpliceDownloadOnly
	var pair bpf.SplicePair
	err := withFDs(down, upTCP, func(dfd, ufd int) error {
		for _, fd := range []int{dfd, ufd} {
			if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
				return err
			}
			setKernelSendBuffer(fd)
		}
		var err error
		pair, err = s.AddDirected(dfd, ufd, upKernel, true)
		return err
	})
	if err != nil {
		f.e.metrics.kernelSplice.WithLabelValues("fallback").Inc()
		_ = withFDs(down, upTCP, func(dfd, ufd int) error {
			for _, fd := range []int{dfd, ufd} {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
			}
			return nil
		})
		f.e.log.WithError(err).Debug("kernel splice unavailable for this flow; copying in userspace")
		if kernelSpliceHook != nil {
			kernelSpliceHook(false)
		}
		return false
	}
	f.e.metrics.kernelSplice.WithLabelValues("kernel").Inc()
	if kernelSpliceHook != nil {
		kernelSpliceHook(true)
	}
	defer s.Remove(pair)

	var failed atomic.Bool
	// wake ends the pumps' waits: a reset or an abort.
	wake := make(chan struct{})
	var wakeOnce sync.Once
	abort := func() {
		if failed.CompareAndSwap(false, true) {
			down.Close() // SO_LINGER 0: both peers get a reset
			upTCP.Close()
		}
		wakeOnce.Do(func() { close(wake) })
	}
	onReset := func() { abort() }
	f.onReset.Store(&onReset)
	defer f.onReset.Store(nil)
	upDir := &kdir{s: s, src: down, dst: upTCP, cookie: pair.A, srcBase: dIn, dstBase: uBase, failed: &failed, wake: wake}
	downDir := &kdir{s: s, src: upTCP, dst: down, cookie: pair.B, srcBase: uIn, dstBase: dBase, failed: &failed, wake: wake}
	pumped := make(chan struct{})
	kdirs := []*kdir{downDir}
	if upKernel {
		kdirs = append(kdirs, upDir)
	}
	for _, d := range kdirs {
		go func() {
			if err := d.throttle(pumped); err != nil {
				f.e.log.WithError(err).Warn("kernel splice: cannot pause or resume a flow whose receiver fell behind; resetting it")
				abort()
			}
		}()
	}
	// Bytes queued before the pair entered the maps (the peeked
	// ClientHello, a server's greeting) go through the program now.
	var kerr error
	for _, d := range kdirs {
		kerr = errors.Join(kerr, kick(d.src))
	}
	if kerr != nil {
		f.e.log.WithError(kerr).Debug("kernel splice: resetting a flow whose queued bytes cannot be handed to the program")
		abort()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !upKernel {
			// The direction split: the client's bytes go up by splice(2)
			// (the upstream's socket is written only here; the kernel
			// writes only to the client's), then its FIN.
			n, err := io.Copy(upTCP, down)
			upDir.copied.Add(n)
			if err == nil {
				err = upTCP.CloseWrite()
			}
			if err != nil {
				f.e.log.WithError(err).Debug("kernel splice: client side relay ended with an error; resetting both")
				abort()
			}
			return
		}
		if err := upDir.pump(); err != nil {
			f.e.log.WithError(err).Debug("kernel splice: client side ended with an error; resetting both")
			abort()
		}
	}()
	if err := downDir.pump(); err != nil {
		f.e.log.WithError(err).Debug("kernel splice: upstream side ended with an error; resetting both")
		abort()
	}
	wg.Wait()
	close(pumped)
	stA, errA := s.Stats(pair.A)
	stB, errB := s.Stats(pair.B)
	f.up.Add(upDir.copied.Load())
	f.down.Add(downDir.copied.Load())
	if errA == nil && errB == nil {
		f.up.Add(int64(stA.Redirected))
		f.down.Add(int64(stB.Redirected))
		f.e.metrics.kernelBytes.WithLabelValues("up").Add(float64(stA.Redirected))
		f.e.metrics.kernelBytes.WithLabelValues("down").Add(float64(stB.Redirected))
		f.e.metrics.kernelPauses.WithLabelValues("up").Add(float64(stA.Pauses))
		f.e.metrics.kernelPauses.WithLabelValues("down").Add(float64(stB.Pauses))
	}
	if !failed.Load() {
		// Both FINs went through: close normally.
		_ = withFDs(down, upTCP, func(dfd, ufd int) error {
			for _, fd := range []int{dfd, ufd} {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
			}
			return nil
		})
	}
	up.Close()
	down.Close()
	return true
}

// kdir is one direction, src -> dst, of a spliced flow.
type kdir struct {
	s       *bpf.Splicer
	src     *net.TCPConn
	dst     *net.TCPConn
	cookie  uint64 // src's
	srcBase uint64 // src's consumedBytes when the pair entered the kernel path
	dstBase uint64 // dst's streamBytes when the pair entered the kernel path
	failed  *atomic.Bool
	wake    <-chan struct{}
	// mu is held while src is paused: its FIN is handled only when the
	// program runs for it again (the bytes before the FIN are queued).
	mu sync.Mutex
	// finished: the direction's FIN went through (under mu), by pump or by
	// copyRest, which relayed copied bytes itself.
	finished bool
	copied   atomic.Int64
}

// throttle pauses src each time the program reports that dst fell behind:
// src leaves splice_socks (its bytes stay in its receive queue, TCP's window
// closes, the sender waits) until the queue in front of dst has drained into
// dst's send buffer; then src is put back and its queued bytes are handed to
// the program. It returns when done is closed, or an error.
func (d *kdir) throttle(done <-chan struct{}) error {
	for {
		select {
		case <-d.s.Behind(d.cookie):
		case <-done:
			return nil
		}
		if err := d.pauseOnce(); err != nil {
			if d.failed.Load() {
				return nil
			}
			return err
		}
	}
}

func (d *kdir) pauseOnce() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return nil // the FIN went through: nothing more comes
	}
	// Quiesce first: removing a socket from the program's map while the
	// program runs over its queue makes the kernel drop the skb it is at
	// (sk_psock_verdict_recv finds no program: SK_DROP; measured: 32 KiB
	// lost in a 1 GiB run). Raising SO_RCVLOWAT takes the socket lock, so
	// a run in progress finishes first, and tcp_data_ready then calls no
	// data_ready for new bytes until that many are queued.
	if err := setRcvLowat(d.src, 1<<30); err != nil {
		return err
	}
	if err := d.s.Pause(d.cookie); err != nil {
		return err
	}
	if err := d.drained(); err != nil {
		return err
	}
	rc, err := d.src.SyscallConn()
	if err != nil {
		return err
	}
	var rerr error
	if err := rc.Control(func(fd uintptr) { rerr = d.s.Resume(d.cookie, int(fd)) }); err != nil {
		return err
	}
	if errors.Is(rerr, unix.EOPNOTSUPP) {
		// src got its FIN while paused: a socket map takes only
		// established sockets. Its queue (and FIN) is relayed here.
		return d.copyRest()
	}
	if rerr != nil {
		return rerr
	}
	return kick(d.src) // SO_RCVLOWAT back to 1, and the queue to the program
}

// errSpliceLost: bytes of a spliced flow left its source's receive queue
// without reaching the peer.
var errSpliceLost = errors.New("kernel splice lost bytes")

// spliceTestLost (tests) adds to what intact counts as having arrived: a
// lost skb, made on demand.
var spliceTestLost atomic.Uint64

// intact runs when src's FIN has come and every byte before it has left
// src's receive queue (the program took them, or copyRest read them): it
// checks that all of them reached the peer, by the kernel's count of bytes
// received (TCP_INFO bytes_received, the FIN counting one), against what was
// read before the pair entered the kernel path, what the program
// redirected, and what copyRest copied. A byte can leave the queue unseen
// when a run of the program races its socket's removal from the program's
// map (pauseOnce narrows that window but cannot close it): such a flow ends
// with a reset (the caller's abort), never a FIN after a hole.
func (d *kdir) intact() error {
	st, err := d.s.Stats(d.cookie)
	if err != nil {
		return err
	}
	got, err := countFD(d.src, func(fd int) (uint64, error) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, err
		}
		return info.Bytes_received - 1, nil // the FIN
	})
	if err != nil {
		return err
	}
	got += spliceTestLost.Load()
	if want := d.srcBase + st.Redirected + uint64(d.copied.Load()); got != want {
		return fmt.Errorf("%w: %d bytes arrived, %d reached the peer", errSpliceLost, got, want)
	}
	return nil
}

// drained waits until dst's send buffer has taken every byte the program
// redirected from src so far.
func (d *kdir) drained() error {
	st, err := d.s.Stats(d.cookie)
	if err != nil {
		return err
	}
	return waitStream(d.dst, d.dstBase, st.Redirected, d.failed)
}

// copyRest relays what src still has, after every redirected byte reached
// dst's send buffer, and forwards the FIN. src is out of the program's map
// and was never read, so read(2) sees its queue as TCP left it.
func (d *kdir) copyRest() error {
	if err := setRcvLowat(d.src, 1); err != nil {
		return err
	}
	n, err := io.Copy(onlyWriter{d.dst}, onlyReader{d.src})
	d.copied.Add(n)
	if err != nil {
		return err
	}
	if err := d.intact(); err != nil {
		return err
	}
	d.finished = true
	return d.dst.CloseWrite()
}

// onlyReader and onlyWriter hide *net.TCPConn's ReadFrom/WriteTo from
// io.Copy: copyRest reads and writes.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(b []byte) (int, error) { return o.r.Read(b) }

type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(b []byte) (int, error) { return o.w.Write(b) }

// pump serves the direction: it returns nil once src's FIN has been
// forwarded after all of src's bytes, or an error (a reset, a closed socket)
// on which the caller resets both.
//
// It never reads src: tcp_bpf's recvmsg on a socket with a verdict program
// writes back the copied_seq it sampled before running the program over
// queued bytes, so a read that redirects bytes leaves copied_seq behind the
// receive queue (measured on 6.18: the kernel then warns "TCP recvmsg seq #
// bug" and later reads stall or splice(2) drops bytes). It waits for src's
// FIN or error on an epoll set that does not wake for data (hupWatch), and
// runs the program over queued bytes with kick.
func (d *kdir) pump() error {
	hup, cancel, err := hupWatch(d.src)
	if err != nil {
		return err
	}
	defer cancel()
	select {
	case <-hup:
	case <-d.wake:
	}
	if d.failed.Load() {
		return errFlowAborted
	}
	rc, err := d.src.SyscallConn()
	if err != nil {
		return err
	}
	var revents int16
	if err := rc.Control(func(fd uintptr) {
		if r, err := pollNow(int(fd), unix.POLLRDHUP); err == nil {
			revents = r
		}
	}); err != nil {
		return err
	}
	if revents&(unix.POLLERR|unix.POLLNVAL) != 0 || revents&(unix.POLLRDHUP|unix.POLLHUP) == 0 {
		serr := errors.New("socket error")
		_ = rc.Control(func(fd uintptr) {
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
				serr = unix.Errno(v)
			}
		})
		return serr
	}
	// FIN. Not while src is paused (its bytes wait in its queue). The
	// socket lock taken by kick waits for the softirq that queued the FIN,
	// and the program runs over whatever is still queued: every byte
	// before the FIN has been redirected when Stats is read.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return nil
	}
	if err := kick(d.src); err != nil {
		return err
	}
	if err := d.intact(); err != nil {
		return err
	}
	if err := d.drained(); err != nil {
		return err
	}
	if err := d.dst.CloseWrite(); err != nil {
		return fmt.Errorf("forward FIN: %w", err)
	}
	d.finished = true
	return nil
}

// kick runs the splice program over bytes already in c's receive queue:
// setting SO_RCVLOWAT takes the socket lock and calls tcp_data_ready, which
// hands the queue to the program (bytes that arrived before the socket
// entered the maps get no data_ready of their own).
func kick(c *net.TCPConn) error {
	if err := setRcvLowat(c, 1); err != nil {
		return fmt.Errorf("kick the splice program: %w", err)
	}
	return nil
}

func setRcvLowat(c *net.TCPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, n)
	}); err != nil {
		return err
	}
	return serr
}

var errFlowAborted = errors.New("flow aborted")

// waitStream waits until want bytes (counted from base) have entered c's
// send buffer: redirected bytes wait in the kernel's queue in front of it
// until it has room, and a FIN or a userspace write must not overtake them.
//
// It sleeps on c's write space, as the kernel's worker does: the worker
// (sk_psock_backlog) moves the queue into c's send buffer until the buffer
// is full, and is woken by c's write_space callback, which also wakes
// pollers of c. So while c is full this waits in Go's poller: a poll(2) of
// c that finds it full marks it SOCK_NOSPACE, which makes TCP call
// write_space when acks free room. While c has room the missing bytes are
// with the worker, which is already scheduled (by the redirect or by the
// write_space that made the room) and has no event of its own to wait on:
// that wait yields in short steps (spliceYieldMin to spliceYieldMax).
func waitStream(c *net.TCPConn, base, want uint64, failed *atomic.Bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	yield := spliceYieldMin
	for {
		var done, full bool
		var serr error
		// A safety net only: write space is the wake.
		_ = c.SetWriteDeadline(time.Now().Add(spliceWaitMax))
		// Under Go's poller: f runs after the poller's write-ready state
		// was reset, so a write_space after f's poll(2) wakes the wait.
		err := rc.Write(func(fd uintptr) bool {
			var got uint64
			if got, serr = streamBytesFD(int(fd)); serr != nil {
				return true
			}
			if done = got-base >= want; done || failed.Load() {
				return true
			}
			var revents int16
			if revents, serr = pollNow(int(fd), unix.POLLOUT); serr != nil {
				return true
			}
			full = revents&unix.POLLOUT == 0
			if revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				serr = errors.New("socket error")
				return true
			}
			return !full // full: wait for write space
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		_ = c.SetWriteDeadline(time.Time{})
		if serr != nil {
			return serr
		}
		if done {
			return nil
		}
		if failed.Load() {
			return errFlowAborted
		}
		if err != nil || full {
			// woken by write space (or the safety deadline): the
			// worker was woken too
			yield = spliceYieldMin
			continue
		}
		time.Sleep(yield)
		if yield < spliceYieldMax {
			yield *= 2
		}
	}
}

// pollNow returns fd's poll(2) events now (no wait). A poll interrupted by
// a signal (Go's preemption sends them) is asked again, never taken for an
// empty answer: to the relay that would mean a broken socket.
func pollNow(fd int, events int16) (int16, error) {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		if _, err := unix.Poll(fds, 0); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return 0, err
		}
		return fds[0].Revents, nil
	}
}

// The steps of waitStream's wait for the kernel's worker while the send
// buffer has room.
const (
	spliceYieldMin = 20 * time.Microsecond
	spliceYieldMax = time.Millisecond
	spliceWaitMax  = 50 * time.Millisecond
)

// streamBytes is how many bytes c's send buffer has taken so far, counted
// from an arbitrary origin: acked bytes plus those still queued
// (SIOCOUTQ). Read in that order it never overstates: what is acked between
// the two reads leaves the queue after it was counted as unacked, or not at
// all.
func streamBytes(c *net.TCPConn) (uint64, error) { return countFD(c, streamBytesFD) }

// countFD runs fn with c's file descriptor.
func countFD(c *net.TCPConn, fn func(fd int) (uint64, error)) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n uint64
	var serr error
	if err := rc.Control(func(fd uintptr) { n, serr = fn(int(fd)) }); err != nil {
		return 0, err
	}
	return n, serr
}

func streamBytesFD(fd int) (uint64, error) {
	info, q, err := infoThenQueue(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, err
	}
	return info.Bytes_acked + uint64(q), nil
}

// infoThenQueue reads fd's TCP_INFO, then the queue ioctl req (SIOCOUTQ,
// SIOCINQ) answers.
func infoThenQueue(fd int, req uint) (*unix.TCPInfo, int, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, 0, err
	}
	q, err := unix.IoctlGetInt(fd, req)
	if err != nil {
		return nil, 0, err
	}
	return info, q, nil
}

// consumedBytes is how many bytes of c's incoming stream have left its
// receive queue, for a socket in no socket map (whose SIOCINQ is TCP's):
// bytes_received (TCP_INFO) less what is queued (SIOCINQ), read until
// bytes_received holds still across the reads.
func consumedBytes(c *net.TCPConn) (uint64, error) {
	return countFD(c, func(fd int) (uint64, error) {
		for {
			a, inq, err := infoThenQueue(fd, unix.SIOCINQ)
			if err != nil {
				return 0, err
			}
			b, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				return 0, err
			}
			if a.Bytes_received == b.Bytes_received {
				return b.Bytes_received - uint64(inq), nil
			}
		}
	})
}

// withFDs runs fn with the file descriptors of a and b.
func withFDs(a, b *net.TCPConn, fn func(afd, bfd int) error) error {
	ra, err := a.SyscallConn()
	if err != nil {
		return err
	}
	rb, err := b.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = ra.Control(func(afd uintptr) {
		err := rb.Control(func(bfd uintptr) { ferr = fn(int(afd), int(bfd)) })
		if ferr == nil {
			ferr = err
		}
	})
	if err == nil {
		err = ferr
	}
	return err
}

// hups is one epoll set, shared by every spliced socket, that reports a
// peer's FIN or an error and never wakes for data: Go's own poller would
// wake the relay for every batch of bytes the program moves, which cost as
// much CPU per GB as relaying them (measured with bench/proxy).
var hups struct {
	once    sync.Once
	err     error
	epfd    int
	mu      sync.Mutex
	next    int32
	waiters map[int32]chan struct{}
}

// hupWatch returns a channel closed when c gets its peer's FIN or an error
// (one-shot), and a cancel that removes c from the set. c must stay open
// until cancel (a closed socket leaves the set silently).
func hupWatch(c *net.TCPConn) (<-chan struct{}, func(), error) {
	hups.once.Do(func() {
		hups.epfd, hups.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if hups.err != nil {
			return
		}
		hups.waiters = map[int32]chan struct{}{}
		go hupLoop()
	})
	if hups.err != nil {
		return nil, nil, fmt.Errorf("create the splice epoll set: %w", hups.err)
	}
	ch := make(chan struct{})
	hups.mu.Lock()
	hups.next++
	if hups.next <= 0 {
		hups.next = 1
	}
	tok := hups.next
	hups.waiters[tok] = ch
	hups.mu.Unlock()
	rc, err := c.SyscallConn()
	if err == nil {
		var cerr error
		err = rc.Control(func(fd uintptr) {
			ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLERR | unix.EPOLLHUP | unix.EPOLLONESHOT, Fd: tok}
			cerr = unix.EpollCtl(hups.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		})
		if err == nil {
			err = cerr
		}
	}
	drop := func() {
		hups.mu.Lock()
		delete(hups.waiters, tok)
		hups.mu.Unlock()
	}
	if err != nil {
		drop()
		return nil, nil, fmt.Errorf("watch a spliced socket: %w", err)
	}
	cancel := func() {
		// Under Control the descriptor cannot be closed and reused.
		_ = rc.Control(func(fd uintptr) { _ = unix.EpollCtl(hups.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		drop()
	}
	return ch, cancel, nil
}

func hupLoop() {
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(hups.epfd, evs, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		hups.mu.Lock()
		for _, ev := range evs[:n] {
			if ch, ok := hups.waiters[ev.Fd]; ok {
				close(ch)
				delete(hups.waiters, ev.Fd)
			}
		}
		hups.mu.Unlock()
	}
}

// spliceHandoverHook, when set (by tests), is told how many bytes each
// direction had moved by splice(2) when a flow was handed to the kernel.
var spliceHandoverHook func(up, down int64)

// spliceFirst relays the flow in userspace until one direction has moved
// after bytes (Config.SpliceAfter), then stops both directions and returns
// true: the flow goes to the kernel path, every byte read so far written
// to the peer's send buffer and every other byte still in its receive
// queue. It returns false when the flow ended here (a FIN each way, a
// reset, a close); a flow half-closed before the hand-over stays here too
// (a socket map takes established sockets only).
//
// The kernel path takes a receive queue skb by skb from its head and
// ignores how much of the head skb was read already (tcp_read_skb): a
// hand-over in the middle of an skb would send its read part twice
// (measured: "oone" for "one"). So a direction stops only at an skb
// boundary: after a read(2) that returned less than its buffer (tcp_recvmsg
// stops short only when no queued skb has unread bytes; what arrives later
// forms new skbs, the queue being empty) or found nothing, or while it
// waits for bytes. The direction that reached after bytes stops there and
// stops the other with a read deadline in the past, which ends only a
// wait (nothing is read); a direction in the middle of a chunk reads on to
// a boundary first. Neither waits for the other while stopping, so a peer
// that needs one direction to move for the other to drain cannot wedge the
// hand-over. Relayed with read/write (not splice(2), which stops
// mid-skb at its pipe's size).
func (f *flow) spliceFirst(up *net.TCPConn, after int64) bool {
	down := f.tcp
	setLinger0(up, down) // as in splice: a killed process resets both peers
	var stopping atomic.Bool
	stop := func() {
		if stopping.CompareAndSwap(false, true) {
			past := time.Unix(1, 0)
			_ = down.SetReadDeadline(past)
			_ = up.SetReadDeadline(past)
		}
	}
	type result struct {
		n   int64
		fin bool // src's FIN was forwarded (dst's CloseWrite)
		err error
	}
	relay := func(dst, src *net.TCPConn) (r result) {
		defer func() {
			if r.err != nil {
				// A reset, a policy change (f.reset closed the
				// client's socket): the other direction must not
				// wait on.
				up.Close()
				down.Close()
			}
		}()
		bp := relayBufs.Get().(*[]byte)
		defer relayBufs.Put(bp)
		buf := *bp
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return result{n: r.n, err: werr}
				}
				r.n += int64(n)
				if n == len(buf) {
					// maybe mid-skb: on to a boundary, never waiting
					m, eof, err := readToBoundary(dst, src, buf)
					r.n += m
					if err != nil {
						return result{n: r.n, err: err}
					}
					if eof {
						return result{n: r.n, fin: true, err: dst.CloseWrite()}
					}
				}
				// at a boundary
				if r.n >= after {
					stop()
				}
				if stopping.Load() {
					return r
				}
				continue
			}
			switch {
			case err == io.EOF:
				return result{n: r.n, fin: true, err: dst.CloseWrite()}
			case errors.Is(err, os.ErrDeadlineExceeded) && stopping.Load():
				return r // stopped while waiting: nothing was read
			case err != nil:
				return result{n: r.n, err: err}
			}
		}
	}
	upc := make(chan result, 1)
	go func() { upc <- relay(up, down) }()
	dr := relay(down, up)
	ur := <-upc
	f.up.Add(ur.n)
	f.down.Add(dr.n)
	_ = down.SetReadDeadline(time.Time{})
	_ = up.SetReadDeadline(time.Time{})
	switch {
	case ur.err != nil || dr.err != nil:
		return false
	case ur.fin && dr.fin:
		clearLinger(up, down)
		up.Close()
		down.Close()
		return false
	case ur.fin || dr.fin:
		// Half-closed: the other direction runs to its end here.
		dst, src, count := down, up, &f.down
		if dr.fin {
			dst, src, count = up, down, &f.up
		}
		n, err := io.Copy(dst, src)
		count.Add(n)
		if err == nil {
			_ = dst.CloseWrite()
			clearLinger(up, down)
		}
		up.Close()
		down.Close()
		return false
	}
	if spliceHandoverHook != nil {
		spliceHandoverHook(ur.n, dr.n)
	}
	return true
}

// relayBufs are spliceFirst's buffers.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// readToBoundary relays what src has queued now with read(2), without
// waiting, until a read leaves no partly read skb at the head of src's
// receive queue: one that returns less than buf, or finds nothing. eof:
// src's FIN. It ignores src's read deadline (spliceFirst's stop).
func readToBoundary(dst, src *net.TCPConn, buf []byte) (int64, bool, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	var total int64
	for {
		var n int
		var rerr error
		if err := rc.Control(func(fd uintptr) {
			// A buffer larger than what is queued: the read takes it
			// all and stops short (a sender faster than the relay
			// keeps more than any fixed buffer queued).
			if q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && q >= len(buf) {
				buf = make([]byte, q+64<<10)
			}
			for {
				// the socket is non-blocking (Go's): EAGAIN, never a wait
				if n, rerr = unix.Read(int(fd), buf); rerr != unix.EINTR {
					return
				}
			}
		}); err != nil {
			return total, false, err
		}
		switch {
		case errors.Is(rerr, unix.EAGAIN):
			return total, false, nil
		case rerr != nil:
			return total, false, rerr
		case n == 0:
			return total, true, nil
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return total, false, err
		}
		total += int64(n)
		if n < len(buf) {
			return total, false, nil
		}
	}
}
