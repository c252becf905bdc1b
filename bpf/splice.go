package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// spliceLayoutVersion is SPLICE_LAYOUT_VERSION in splice.c.
const spliceLayoutVersion = 3

// Splicer hands decided TCP flows to the kernel: the stream verdict program
// of splice.c redirects each socket's bytes to its peer's send path, so the
// proxy's process copies nothing while the flow runs (see splice.c for the
// maps and the backpressure hold).
//
// The maps and the program are owned by the process that opened the
// Splicer and are deliberately not pinned, unlike the socket hooks: the
// sockets in them are that process's, and when it dies its sockets close,
// the kernel drops them from the socket maps, and the per-flow state goes
// with the last file descriptor of its map. Nothing of a dead process's
// flows outlives it (a pinned flow map would keep stale entries).
type Splicer struct {
	mu     sync.Mutex
	objs   spliceObjects
	closed bool
	// behind: a channel per socket in the maps, signalled when the program
	// reports that its peer fell behind (the socket must be paused).
	behind map[uint64]chan struct{}
	rd     *ringbuf.Reader
	done   chan struct{}
}

// SplicePair names the two sockets of one spliced flow by socket cookie.
type SplicePair struct{ A, B uint64 }

// SpliceStats is what the program did with one socket's incoming bytes.
type SpliceStats struct {
	// Redirected bytes went to the peer in the kernel.
	Redirected uint64
	// Pauses counts how often the bytes waiting in front of the peer's
	// send buffer went over SpliceOptions.HoldBytes.
	Pauses uint32
}

// OpenSplicer loads splice.c and attaches its verdict program to the
// socket map. An error means the kernel cannot splice (no sockhash, no
// stream verdict, no BTF for tcp_sock): callers fall back to copying.
func OpenSplicer() (*Splicer, error) { return OpenSplicerWith(SpliceOptions{}) }

// SpliceOptions tune the kernel splice; zero values take the defaults.
type SpliceOptions struct {
	// HoldBytes is how many bytes may wait in the kernel in front of a
	// socket's send buffer before its source is held (default 4 MiB).
	HoldBytes uint64
}

// DefaultHoldBytes is SpliceOptions.HoldBytes's default.
const DefaultHoldBytes = 4 << 20

// OpenSplicerWith is OpenSplicer with options.
func OpenSplicerWith(o SpliceOptions) (*Splicer, error) {
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	spec, err := loadSplice()
	if err != nil {
		return nil, fmt.Errorf("load splice spec: %w", err)
	}
	var compiled uint32
	if err := spec.Variables["splice_layout_version"].Get(&compiled); err != nil {
		return nil, fmt.Errorf("read compiled splice layout version: %w", err)
	}
	if compiled != spliceLayoutVersion {
		return nil, fmt.Errorf("splice.c has SPLICE_LAYOUT_VERSION %d but package bpf has %d: regenerate", compiled, spliceLayoutVersion)
	}
	if o.HoldBytes != 0 {
		if err := spec.Variables["hold_bytes"].Set(o.HoldBytes); err != nil {
			return nil, fmt.Errorf("set splice hold bytes: %w", err)
		}
	}
	s := &Splicer{behind: map[uint64]chan struct{}{}, done: make(chan struct{})}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load splice program: %w", err)
	}
	rd, err := ringbuf.NewReader(s.objs.SpliceEvents)
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("open splice events: %w", err)
	}
	s.rd = rd
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  s.objs.SpliceSocks.FD(),
		Program: s.objs.ClawkerSpliceVerdict,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	}); err != nil {
		rd.Close()
		s.objs.Close()
		return nil, fmt.Errorf("attach splice verdict to its socket map: %w", err)
	}
	go s.readEvents()
	return s, nil
}

// readEvents signals the Behind channel of each socket the program reports.
func (s *Splicer) readEvents() {
	defer close(s.done)
	for {
		rec, err := s.rd.Read()
		if err != nil {
			return // closed
		}
		if len(rec.RawSample) < 8 {
			continue
		}
		c := binary.LittleEndian.Uint64(rec.RawSample)
		s.mu.Lock()
		if ch, ok := s.behind[c]; ok {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
	}
}

// Behind returns a channel that receives when the program reports that the
// peer of socket c fell behind (see splice.c): the caller must then Pause c,
// wait until the peer's send buffer has taken SpliceStats.Redirected bytes,
// and Resume it. Valid between Add and Remove.
func (s *Splicer) Behind(c uint64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.behind[c] // nil (never ready) when c is not spliced
}

// SocketCookie returns the kernel's cookie of the socket fd.
func SocketCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read socket cookie: %w", err)
	}
	return c, nil
}

// Add splices the established TCP sockets a and b (file descriptors):
//  1. each socket's flow entry names its peer;
//  2. both enter splice_peers (no program there: nothing runs yet);
//  3. both enter splice_socks, which starts the verdict program on bytes
//     that arrive from now on.
//
// Bytes already queued (a peeked ClientHello, a server's greeting) stay in
// the receive queues untouched until the next data_ready: the caller must
// then read each socket once (tcp_bpf's recvmsg runs the program over a
// non-empty receive queue), which its relay loop does anyway. On error
// nothing of the pair is left in the maps.
func (s *Splicer) Add(a, b int) (SplicePair, error) { return s.AddDirected(a, b, true, true) }

// AddDirected is Add for a flow of which only some directions take the
// kernel path: a socket enters splice_socks (the program runs over its
// incoming bytes) only when its flag is set; both stay redirect targets
// (splice_peers). A socket left out is read by its owner as usual: with no
// program of its own its receive queue is TCP's (recv, splice(2)), and the
// kernel only writes to it, so it must not be written by its owner while
// its peer is in the kernel path.
func (s *Splicer) AddDirected(a, b int, fromA, fromB bool) (SplicePair, error) {
	var p SplicePair
	var err error
	if p.A, err = SocketCookie(a); err != nil {
		return p, err
	}
	if p.B, err = SocketCookie(b); err != nil {
		return p, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return p, ErrClosed
	}
	fail := func(err error) (SplicePair, error) {
		s.removeLocked(p)
		return p, err
	}
	for _, e := range []struct{ c, peer uint64 }{{p.A, p.B}, {p.B, p.A}} {
		// the flow entry first: the program drops bytes of a socket it
		// has no entry for
		if err := s.objs.SpliceFlows.Update(e.c, spliceSpliceFlow{Peer: e.peer}, ebpf.UpdateNoExist); err != nil {
			return fail(fmt.Errorf("add splice flow: %w", err))
		}
		s.behind[e.c] = make(chan struct{}, 1)
	}
	for _, m := range []*ebpf.Map{s.objs.SplicePeers, s.objs.SpliceSocks} {
		for _, e := range []struct {
			c    uint64
			fd   int
			from bool
		}{{p.A, a, fromA}, {p.B, b, fromB}} {
			if m == s.objs.SpliceSocks && !e.from {
				continue
			}
			if err := m.Update(e.c, uint64(e.fd), ebpf.UpdateNoExist); err != nil {
				return fail(fmt.Errorf("add socket to %s: %w", m, err))
			}
		}
	}
	return p, nil
}

// Stats reads what the program did with the bytes arriving on socket c.
func (s *Splicer) Stats(c uint64) (SpliceStats, error) {
	var f spliceSpliceFlow
	if err := s.objs.SpliceFlows.Lookup(c, &f); err != nil {
		return SpliceStats{}, fmt.Errorf("read splice flow: %w", err)
	}
	return SpliceStats{Redirected: f.Redirected, Pauses: f.Pauses}, nil
}

// Pause takes socket c out of splice_socks: the program no longer runs for
// it, so bytes arriving on it stay in its receive queue (TCP's window
// closes). It stays a redirect target for its peer.
func (s *Splicer) Pause(c uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.objs.SpliceSocks.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("pause splice of socket %d: %w", c, err)
	}
	return nil
}

// Resume puts socket c (file descriptor fd) back into splice_socks and
// re-arms its report. Bytes queued meanwhile go through the program at its
// next data_ready: the caller kicks it.
func (s *Splicer) Resume(c uint64, fd int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.objs.SpliceSocks.Update(c, uint64(fd), ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("resume splice of socket %d: %w", c, err)
	}
	_ = s.objs.SpliceOver.Delete(c)
	return nil
}

// Remove takes the pair out of every map. Closing a socket also removes it
// from the socket maps (the kernel does that); the flow entries go only
// here.
func (s *Splicer) Remove(p SplicePair) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(p)
}

func (s *Splicer) removeLocked(p SplicePair) {
	if s.closed {
		return
	}
	for _, c := range []uint64{p.A, p.B} {
		if c == 0 {
			continue
		}
		delete(s.behind, c)
		for _, m := range []*ebpf.Map{s.objs.SpliceSocks, s.objs.SplicePeers, s.objs.SpliceFlows, s.objs.SpliceOver} {
			// A closed socket has left the socket maps already.
			_ = m.Delete(c)
		}
	}
}

// Entries counts the entries of each map (tests: nothing stale).
func (s *Splicer) Entries() (map[string]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for name, m := range s.maps() {
		if m.Type() == ebpf.RingBuf {
			continue
		}
		n, err := countEntries(m)
		if err != nil {
			return nil, err
		}
		out[name] = n
	}
	return out, nil
}

// MapIDs returns the kernel ids of the splice maps (tests: they go away
// with the process).
func (s *Splicer) MapIDs() ([]ebpf.MapID, error) {
	var ids []ebpf.MapID
	for _, m := range s.maps() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("read splice map info: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("kernel does not report map ids")
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func (s *Splicer) maps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"splice_socks": s.objs.SpliceSocks, "splice_peers": s.objs.SplicePeers,
		"splice_flows": s.objs.SpliceFlows, "splice_events": s.objs.SpliceEvents, "splice_over": s.objs.SpliceOver,
	}
}

func countEntries(m *ebpf.Map) (int, error) {
	var k uint64
	n := 0
	it := m.Iterate()
	var v []byte
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate %s: %w", m, err)
	}
	return n, nil
}

// Close releases the program and the maps. Sockets still in them leave the
// kernel path (their bytes stay in their receive queues).
func (s *Splicer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.rd.Close()
	<-s.done
	return s.objs.Close()
}
