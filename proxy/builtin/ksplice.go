package builtin

import (
	"errors"
	"fmt"
	"net"
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
//     propagates resets (SO_LINGER 0, then close);
//   - backpressure: when the program reports that a peer fell behind (the
//     kernel's queue in front of it has no bound of its own), the flow
//     leaves the kernel path — the program is stopped on both sockets, the
//     queued bytes drain into the send buffers, the sockets leave the maps —
//     and the rest is relayed by the proxy (read/write, TCP's own flow
//     control);
//   - the accounting: bytes per direction from the program's counters.
//
// Both sockets carry SO_LINGER 0 while they are in the kernel path: if the
// process dies, the kernel closes them with a reset, so neither peer takes a
// cut stream for a complete one; an orderly end clears it before closing.

// kernelSpliceHook, when set (by tests), is told whether a flow took the
// kernel path.
var kernelSpliceHook func(kernel bool)

// errDemoted ends a pump when its flow leaves the kernel path.
var errDemoted = errors.New("flow left the kernel path")

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
	// Where each send buffer's count starts: nothing was written to either
	// socket yet, and the program may write to them as soon as Add returns.
	dBase, err1 := streamBytes(down)
	uBase, err2 := streamBytes(upTCP)
	if err := errors.Join(err1, err2); err != nil {
		f.e.log.WithError(err).Debug("kernel splice: cannot read the sockets' counters; copying in userspace")
		return false
	}
	var pair bpf.SplicePair
	err := withFDs(down, upTCP, func(dfd, ufd int) error {
		for _, fd := range []int{dfd, ufd} {
			if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
				return err
			}
		}
		var err error
		pair, err = s.Add(dfd, ufd)
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

	var failed, demote atomic.Bool
	// wake ends the pumps' waits: a reset, an abort or a demotion.
	wake := make(chan struct{})
	var wakeOnce sync.Once
	wakeUp := func() { wakeOnce.Do(func() { close(wake) }) }
	abort := func() {
		if failed.CompareAndSwap(false, true) {
			down.Close() // SO_LINGER 0: both peers get a reset
			upTCP.Close()
		}
		wakeUp()
	}
	onReset := func() { abort() }
	f.onReset.Store(&onReset)
	defer f.onReset.Store(nil)
	stop := make(chan struct{})
	pumped := make(chan struct{})
	go func() {
		// The program reports a peer that fell behind: leave the kernel.
		select {
		case <-s.Behind(pair.A):
		case <-s.Behind(pair.B):
		case <-pumped:
			return
		}
		demote.Store(true)
		if err := s.Stop(pair); err != nil {
			f.e.log.WithError(err).Warn("kernel splice: cannot stop the program for a flow whose peer fell behind; resetting it")
			abort()
		}
		close(stop)
		wakeUp()
	}()
	// Bytes queued before the pair entered the maps (the peeked
	// ClientHello, a server's greeting) go through the program now.
	if err := errors.Join(kick(down), kick(upTCP)); err != nil {
		f.e.log.WithError(err).Debug("kernel splice: resetting a flow whose queued bytes cannot be handed to the program")
		abort()
	}
	var upDone, downDone bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := kernelPump(s, down, upTCP, pair.A, uBase, wake, &demote, &failed)
		upDone = err == nil
		if err != nil && !errors.Is(err, errDemoted) {
			f.e.log.WithError(err).Debug("kernel splice: client side ended with an error; resetting both")
			abort()
		}
	}()
	err = kernelPump(s, upTCP, down, pair.B, dBase, wake, &demote, &failed)
	downDone = err == nil
	if err != nil && !errors.Is(err, errDemoted) {
		f.e.log.WithError(err).Debug("kernel splice: upstream side ended with an error; resetting both")
		abort()
	}
	wg.Wait()
	close(pumped)
	stA, errA := s.Stats(pair.A)
	stB, errB := s.Stats(pair.B)
	if errA == nil && errB == nil {
		f.up.Add(int64(stA.Redirected))
		f.down.Add(int64(stB.Redirected))
		f.e.metrics.kernelBytes.WithLabelValues("up").Add(float64(stA.Redirected))
		f.e.metrics.kernelBytes.WithLabelValues("down").Add(float64(stB.Redirected))
	}
	clearLinger := func() {
		_ = withFDs(down, upTCP, func(dfd, ufd int) error {
			for _, fd := range []int{dfd, ufd} {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
			}
			return nil
		})
	}
	switch {
	case failed.Load():
	case demote.Load() && !(upDone && downDone):
		<-stop
		// Every byte the program redirected must be in the send buffers
		// before the sockets leave the maps (leaving drops the queues)
		// and before userspace writes after them.
		if err := errors.Join(
			waitStream(upTCP, uBase, stA.Redirected, &failed),
			waitStream(down, dBase, stB.Redirected, &failed)); err != nil || errA != nil || errB != nil {
			abort()
			break
		}
		s.Remove(pair)
		clearLinger()
		f.e.metrics.kernelSplice.WithLabelValues("demoted").Inc()
		f.splice(up) // the rest in userspace; it closes both
		return true
	default:
		// Both FINs went through: close normally.
		clearLinger()
	}
	up.Close()
	down.Close()
	return true
}

// kernelPump serves one direction, src -> dst, of a spliced flow: it
// returns nil once src's FIN has been forwarded after all of src's bytes,
// errDemoted when the flow leaves the kernel path, or another error (a
// reset, a closed socket) on which the caller resets both. dstBase is dst's
// streamBytes when the pair entered the kernel path; wake is closed when the
// flow is reset, aborted or demoted.
//
// It never reads src: tcp_bpf's recvmsg on a socket with a verdict program
// writes back the copied_seq it sampled before running the program over
// queued bytes, so a read that redirects bytes leaves copied_seq behind the
// receive queue (measured on 6.18: the kernel then warns "TCP recvmsg seq #
// bug" and later reads stall or splice(2) drops bytes). It waits for src's
// FIN or error on an epoll set that does not wake for data (hupWatch), and
// runs the program over queued bytes with kick.
func kernelPump(s *bpf.Splicer, src, dst *net.TCPConn, cookie uint64, dstBase uint64, wake <-chan struct{}, demote, failed *atomic.Bool) error {
	hup, cancel, err := hupWatch(src)
	if err != nil {
		return err
	}
	defer cancel()
	select {
	case <-hup:
	case <-wake:
	}
	if demote.Load() {
		return errDemoted
	}
	if failed.Load() {
		return errFlowAborted
	}
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	var revents int16
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if _, err := unix.Poll(fds, 0); err == nil {
			revents = fds[0].Revents
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
	// FIN. The socket lock taken by kick waits for the softirq that queued
	// it, and the program runs over whatever is still queued: every byte
	// before the FIN has been redirected when Stats is read.
	if err := kick(src); err != nil {
		return err
	}
	st, err := s.Stats(cookie)
	if err != nil {
		return err
	}
	if err := waitStream(dst, dstBase, st.Redirected, failed, demote); err != nil {
		return err
	}
	if err := dst.CloseWrite(); err != nil {
		return fmt.Errorf("forward FIN: %w", err)
	}
	return nil
}

// kick runs the splice program over bytes already in c's receive queue:
// setting SO_RCVLOWAT takes the socket lock and calls tcp_data_ready, which
// hands the queue to the program (bytes that arrived before the socket
// entered the maps get no data_ready of their own).
func kick(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var kerr error
	if err := rc.Control(func(fd uintptr) {
		kerr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	}); err != nil {
		return err
	}
	if kerr != nil {
		return fmt.Errorf("kick the splice program: %w", kerr)
	}
	return nil
}

var errFlowAborted = errors.New("flow aborted")

// waitStream waits until want bytes (counted from base) have entered c's
// send buffer: redirected bytes wait in the kernel's queue in front of it
// until it has room, and a FIN or a userspace write must not overtake them.
func waitStream(c *net.TCPConn, base, want uint64, failed *atomic.Bool, demote ...*atomic.Bool) error {
	d := 20 * time.Microsecond
	for {
		got, err := streamBytes(c)
		if err != nil {
			return err
		}
		if got-base >= want {
			return nil
		}
		if failed.Load() {
			return errFlowAborted
		}
		for _, d := range demote {
			if d.Load() {
				return errDemoted
			}
		}
		time.Sleep(d)
		if d < 10*time.Millisecond {
			d *= 2
		}
	}
}

// streamBytes is how many bytes c's send buffer has taken so far, counted
// from an arbitrary origin: acked bytes plus those still queued
// (SIOCOUTQ). Read in that order it never overstates: what is acked between
// the two reads leaves the queue after it was counted as unacked, or not at
// all.
func streamBytes(c *net.TCPConn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n uint64
	var serr error
	err = rc.Control(func(ufd uintptr) {
		fd := int(ufd)
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			serr = err
			return
		}
		q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			serr = err
			return
		}
		n = info.Bytes_acked + uint64(q)
	})
	if err == nil {
		err = serr
	}
	return n, err
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
