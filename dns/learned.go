package dns

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
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

// MapLearner writes the pinned BPF LRU hash `learned`.
type MapLearner struct {
	m *ebpf.Map
	// monotonic returns CLOCK_MONOTONIC in ns (bpf_ktime_get_ns' clock).
	monotonic func() (uint64, error)
}

// OpenMapLearner opens `<pinDir>/learned` and checks `<pinDir>/meta`'s
// layout_version against LayoutVersion.
func OpenMapLearner(pinDir string) (*MapLearner, error) {
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
	info, err := m.Info()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("inspect map learned: %w", err)
	}
	if info.KeySize != 8 || info.ValueSize != 16 {
		m.Close()
		return nil, fmt.Errorf("check map learned layout: key %d value %d bytes, want 8 and 16", info.KeySize, info.ValueSize)
	}
	return &MapLearner{m: m, monotonic: monotonicNow}, nil
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
	a4 := addr.As4()
	key := learnedKey{Index: index, Addr: binary.NativeEndian.Uint32(a4[:])}
	val := learnedValue{Identity: uint32(id), ExpiresNs: now + uint64(ttl.Nanoseconds())}
	if err := l.m.Update(&key, &val, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update learned %d/%s: %w", index, addr, err)
	}
	return nil
}

// Close releases the map.
func (l *MapLearner) Close() error {
	if l == nil || l.m == nil {
		return nil
	}
	return l.m.Close()
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

