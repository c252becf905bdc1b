package dns

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Learner records that endpoint index may reach addr as destination
// identity id for ttl. The plugin calls it for every A record (and HTTPS/SVCB
// ipv4hint) of an allowed answer before the answer is returned to the client,
// so the endpoint's first connect to that address already finds the entry.
//
// The production implementation is the pinned BPF map `learned`
// (see docs/SEAMS.md); tests use a fake at this boundary.
type Learner interface {
	Learn(index uint32, addr netip.Addr, id policy.Identity, ttl time.Duration) error
}

// LayoutVersion is the BPF map layout this package writes (docs/SEAMS.md,
// map `meta`). Opening pins with another layout fails.
const LayoutVersion = 1

// learnedKey and learnedValue mirror the BPF structs of the `learned` map:
// little-endian host structs, the address in network byte order.
type learnedKey struct {
	Index uint32
	Addr  uint32
}

type learnedValue struct {
	Identity  uint32
	Pad       uint32
	ExpiresNs uint64
}

// MapLearner writes the pinned BPF LRU hash `learned`. Safe for concurrent
// use.
//
// The plugin process may rebuild the maps (a layout change, a reinstall): at
// most once per second, and after a failed write, Learn checks whether the
// pinned map is still the one it holds and reopens it if not.
type MapLearner struct {
	pinDir string
	mu     sync.Mutex // serializes reopening
	cur    atomic.Pointer[pinnedMap]
	// checked is the CLOCK_MONOTONIC ns of the last pin check.
	checked atomic.Uint64
	// monotonic returns CLOCK_MONOTONIC in ns (bpf_ktime_get_ns' clock).
	monotonic func() (uint64, error)
}

type pinnedMap struct {
	m  *ebpf.Map
	id ebpf.MapID
}

// OpenMapLearner opens `<pinDir>/learned` after checking that
// `<pinDir>/meta` holds LayoutVersion.
func OpenMapLearner(pinDir string) (*MapLearner, error) {
	pm, err := openLearned(pinDir)
	if err != nil {
		return nil, err
	}
	l := &MapLearner{pinDir: pinDir, monotonic: monotonicNow}
	l.cur.Store(pm)
	return l, nil
}

func openLearned(pinDir string) (*pinnedMap, error) {
	meta, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "meta"), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map meta in %s: %w", pinDir, err)
	}
	defer meta.Close()
	var version uint32
	if err := meta.Lookup(uint32(0), &version); err != nil {
		return nil, fmt.Errorf("read layout_version from %s/meta: %w", pinDir, err)
	}
	if version != LayoutVersion {
		return nil, fmt.Errorf("check layout_version in %s/meta: got %d, want %d", pinDir, version, LayoutVersion)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "learned"), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map learned in %s: %w", pinDir, err)
	}
	if m.KeySize() != 8 || m.ValueSize() != 16 {
		m.Close()
		return nil, fmt.Errorf("check map learned layout: key %d value %d bytes, want 8 and 16", m.KeySize(), m.ValueSize())
	}
	info, err := m.Info()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("inspect map learned: %w", err)
	}
	id, _ := info.ID()
	return &pinnedMap{m: m, id: id}, nil
}

// Learn implements Learner. IPv6 addresses are ignored (the firewall answers
// no AAAA records and the map holds IPv4 only).
func (l *MapLearner) Learn(index uint32, addr netip.Addr, id policy.Identity, ttl time.Duration) error {
	addr = addr.Unmap()
	if !addr.Is4() {
		return nil
	}
	now, err := l.monotonic()
	if err != nil {
		return err
	}
	if now-l.checked.Load() > uint64(time.Second) {
		l.checked.Store(now)
		l.refresh()
	}
	a4 := addr.As4()
	key := learnedKey{Index: index, Addr: binary.NativeEndian.Uint32(a4[:])}
	val := learnedValue{Identity: uint32(id), ExpiresNs: now + uint64(ttl.Nanoseconds())}
	err = l.cur.Load().m.Update(&key, &val, ebpf.UpdateAny)
	if err != nil && l.refresh() {
		err = l.cur.Load().m.Update(&key, &val, ebpf.UpdateAny)
	}
	if err != nil {
		return fmt.Errorf("update learned %d/%s: %w", index, addr, err)
	}
	return nil
}

// refresh reopens the pins when they no longer hold the map in use and
// reports whether it swapped.
func (l *MapLearner) refresh() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	pm, err := openLearned(l.pinDir)
	if err != nil {
		return false
	}
	old := l.cur.Load()
	if pm.id == old.id {
		pm.m.Close()
		return false
	}
	l.cur.Store(pm)
	// A concurrent Learn may still hold old; closing only drops this
	// process's fd, the kernel keeps the map while in use.
	old.m.Close()
	return true
}

// Close releases the map.
func (l *MapLearner) Close() error {
	if l == nil {
		return nil
	}
	return l.cur.Load().m.Close()
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// nopLearner is used when no pin directory is configured: nothing is
// recorded (setup logs a warning once).
type nopLearner struct{}

func (nopLearner) Learn(uint32, netip.Addr, policy.Identity, time.Duration) error { return nil }
