package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrLayoutVersion means the pinned maps were made by a different layout
// version than this binary's: the writer must not touch them.
var ErrLayoutVersion = errors.New("pinned BPF maps have a different layout version")

// LearnedPerEndpoint is the quota of one endpoint: how many destination
// addresses its own learned map holds (LEARNED_PER_ENDPOINT in clawker.c).
const LearnedPerEndpoint = 4096

// reclaimShare: when an endpoint's map is full and none of its entries has
// expired, the writer evicts the 1/reclaimShare of them that expire first,
// so a full endpoint pays for one scan per LearnedPerEndpoint/reclaimShare
// answers rather than for every one.
const reclaimShare = 16

// The learned map (docs/SEAMS.md) is a hash of maps: endpoint index -> that
// endpoint's own hash (address -> clawkerLearnedVal). One endpoint can only
// ever fill, and evict from, its own inner map: endpoints never crowd each
// other out, whatever one of them resolves.
//
// LearnedWriter is the one writer of that layout, used by the plugin process
// (Manager.Learn) and by the DNS sidecar (OpenLearned). It creates an
// endpoint's inner map on the endpoint's first answer. When the inner map
// is full (the kernel refuses the insert with E2BIG) the writer reclaims
// from that map only:
//  1. entries of the endpoint that have expired are deleted;
//  2. if none had, the endpoint's entries closest to expiry (its oldest
//     answers, as every answer lives between the same TTL floor and
//     ceiling) are evicted, 1/16 of the quota at a time, and Learn reports
//     how many so the caller logs and counts it;
//  3. the new answer is written. An evicted address is denied at connect
//     (reason "unknown destination") until the endpoint resolves it again.
//
// Safe for concurrent use; writes are serialized (each is two syscalls).
type LearnedWriter struct {
	// pinDir is where the writer reopens the pins when the plugin rebuilt
	// them; empty for the Manager's own writer, whose map is never replaced
	// under it.
	pinDir    string
	innerSpec *ebpf.MapSpec

	mu      sync.Mutex
	outer   *ebpf.Map
	id      ebpf.MapID
	inner   map[uint32]*innerMap
	checked uint64 // CLOCK_MONOTONIC ns of the last pin check
}

type innerMap struct {
	m  *ebpf.Map
	id uint32
}

// learnedInnerSpec is the inner map's spec as compiled into clawker.c.
func learnedInnerSpec(spec *ebpf.CollectionSpec) (*ebpf.MapSpec, error) {
	ms := spec.Maps[MapLearned]
	if ms == nil || ms.InnerMap == nil {
		return nil, errors.New("clawker spec has no learned inner map")
	}
	return ms.InnerMap.Copy(), nil
}

func newLearnedWriter(pinDir string, spec *ebpf.CollectionSpec, outer *ebpf.Map) (*LearnedWriter, error) {
	inner, err := learnedInnerSpec(spec)
	if err != nil {
		return nil, err
	}
	info, err := outer.Info()
	if err != nil {
		return nil, fmt.Errorf("inspect learned map: %w", err)
	}
	id, _ := info.ID()
	return &LearnedWriter{pinDir: pinDir, innerSpec: inner, outer: outer, id: id, inner: map[uint32]*innerMap{}, checked: monoNow()}, nil
}

// OpenLearned opens pinDir/learned after checking that pinDir/meta carries
// LayoutVersion (else the error wraps ErrLayoutVersion). The writer reopens
// the pins by itself when the plugin process has rebuilt them (checked at
// most once a second, and after a failed write).
func OpenLearned(pinDir string) (*LearnedWriter, error) {
	if err := CheckHostBPFFS(filepath.Dir(pinDir)); err != nil {
		return nil, err
	}
	outer, err := openPinnedLearned(pinDir)
	if err != nil {
		return nil, err
	}
	spec, err := loadClawker()
	if err != nil {
		outer.Close()
		return nil, fmt.Errorf("load clawker spec: %w", err)
	}
	w, err := newLearnedWriter(pinDir, spec, outer)
	if err != nil {
		outer.Close()
		return nil, err
	}
	return w, nil
}

func openPinnedLearned(pinDir string) (*ebpf.Map, error) {
	meta, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapMeta), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned meta in %s: %w", pinDir, err)
	}
	defer meta.Close()
	var v clawkerMetaVal
	if err := meta.Lookup(uint32(0), &v); err != nil {
		return nil, fmt.Errorf("read layout version in %s: %w", pinDir, err)
	}
	if v.LayoutVersion != LayoutVersion {
		return nil, fmt.Errorf("open learned in %s: pinned layout %d, this binary %d: %w", pinDir, v.LayoutVersion, LayoutVersion, ErrLayoutVersion)
	}
	l, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapLearned), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned learned in %s: %w", pinDir, err)
	}
	if l.Type() != ebpf.HashOfMaps || l.KeySize() != 4 || l.ValueSize() != 4 {
		l.Close()
		return nil, fmt.Errorf("open learned in %s: %s with key/value size %d/%d, want a hash of maps with 4/4: %w", pinDir, l.Type(), l.KeySize(), l.ValueSize(), ErrLayoutVersion)
	}
	return l, nil
}

func learnedEntry(index uint32, addr netip.Addr, identity uint32, ttl time.Duration, now uint64) (uint32, clawkerLearnedVal, error) {
	a, err := ip4(addr)
	if err != nil {
		return 0, clawkerLearnedVal{}, fmt.Errorf("learn for endpoint %d: %w", index, err)
	}
	if ttl <= 0 {
		return 0, clawkerLearnedVal{}, fmt.Errorf("learn %s for endpoint %d: ttl %s must be positive", addr, index, ttl)
	}
	return a, clawkerLearnedVal{Identity: identity, ExpiresNs: now + uint64(ttl)}, nil
}

// Learn records that addr, answered to endpoint index for a name of this
// identity, is valid for ttl (CLOCK_MONOTONIC, the clock the hooks compare
// with). A later answer for the same (index, addr) replaces it. evicted is
// how many unexpired entries of this endpoint had to go to make room (see
// LearnedWriter).
func (w *LearnedWriter) Learn(index uint32, addr netip.Addr, identity uint32, ttl time.Duration) (evicted int, err error) {
	now := monoNow()
	k, v, err := learnedEntry(index, addr, identity, ttl, now)
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.outer == nil {
		return 0, ErrClosed
	}
	if w.pinDir != "" && now-w.checked > uint64(time.Second) {
		w.checked = now
		w.refresh()
	}
	evicted, err = w.put(index, k, v, now)
	if err != nil && w.pinDir != "" && w.refresh() {
		evicted, err = w.put(index, k, v, now)
	}
	if err != nil {
		return evicted, fmt.Errorf("learn %s for endpoint %d: %w", addr, index, err)
	}
	return evicted, nil
}

func (w *LearnedWriter) put(index, addr uint32, v clawkerLearnedVal, now uint64) (int, error) {
	in, err := w.innerFor(index)
	if err != nil {
		return 0, err
	}
	err = in.m.Update(addr, v, ebpf.UpdateAny)
	if !errors.Is(err, unix.E2BIG) {
		return 0, err
	}
	evicted, err := reclaim(in.m, now)
	if err != nil {
		return evicted, fmt.Errorf("reclaim endpoint %d's full learned map: %w", index, err)
	}
	return evicted, in.m.Update(addr, v, ebpf.UpdateAny)
}

// innerFor returns endpoint index's inner map, creating it on first use.
// The outer entry is looked up on every call: ForgetEndpoint may have
// dropped it, and then a new one is made.
func (w *LearnedWriter) innerFor(index uint32) (*innerMap, error) {
	for range 3 {
		var id uint32
		err := w.outer.Lookup(index, &id)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			m, err := ebpf.NewMap(w.innerSpec)
			if err != nil {
				return nil, fmt.Errorf("create learned map of endpoint %d: %w", index, err)
			}
			err = w.outer.Update(index, m, ebpf.UpdateNoExist)
			if errors.Is(err, ebpf.ErrKeyExist) {
				m.Close() // another writer made it first: use theirs
				continue
			}
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("insert learned map of endpoint %d: %w", index, err)
			}
			info, err := m.Info()
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("inspect learned map of endpoint %d: %w", index, err)
			}
			mid, _ := info.ID()
			w.setInner(index, &innerMap{m: m, id: uint32(mid)})
			return w.inner[index], nil
		}
		if err != nil {
			return nil, fmt.Errorf("look up learned map of endpoint %d: %w", index, err)
		}
		if in := w.inner[index]; in != nil && in.id == id {
			return in, nil
		}
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if errors.Is(err, unix.ENOENT) {
			continue // dropped between the lookup and the open
		}
		if err != nil {
			return nil, fmt.Errorf("open learned map of endpoint %d: %w", index, err)
		}
		w.setInner(index, &innerMap{m: m, id: id})
		return w.inner[index], nil
	}
	return nil, fmt.Errorf("learned map of endpoint %d keeps changing", index)
}

func (w *LearnedWriter) setInner(index uint32, in *innerMap) {
	if old := w.inner[index]; old != nil {
		old.m.Close()
	}
	w.inner[index] = in
}

// reclaim makes room in one endpoint's full inner map (see LearnedWriter)
// and returns how many unexpired entries it evicted.
func reclaim(m *ebpf.Map, now uint64) (int, error) {
	type entry struct {
		addr    uint32
		expires uint64
	}
	var (
		k    uint32
		v    clawkerLearnedVal
		live []entry
		dead []uint32
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if v.ExpiresNs <= now {
			dead = append(dead, k)
		} else {
			live = append(live, entry{k, v.ExpiresNs})
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	if len(dead) > 0 {
		for _, k := range dead {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return 0, err
			}
		}
		return 0, nil
	}
	slices.SortFunc(live, func(a, b entry) int { return compareU64(a.expires, b.expires) })
	n := max(1, len(live)/reclaimShare)
	evicted := 0
	for _, e := range live[:min(n, len(live))] {
		if err := m.Delete(e.addr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return evicted, err
		}
		evicted++
	}
	return evicted, nil
}

func compareU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// refresh reopens the pins when they no longer hold the map in use and
// reports whether it swapped. Called with w.mu held.
func (w *LearnedWriter) refresh() bool {
	l, err := openPinnedLearned(w.pinDir)
	if err != nil {
		return false
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return false
	}
	id, _ := info.ID()
	if id == w.id {
		l.Close()
		return false
	}
	w.closeInner()
	w.outer.Close()
	w.outer, w.id = l, id
	return true
}

func (w *LearnedWriter) closeInner() {
	for i, in := range w.inner {
		in.m.Close()
		delete(w.inner, i)
	}
}

// Current reports whether the map this writer holds is still the pinned
// one. After the plugin rebuilt the maps (layout change) it is not until
// the writer's next Learn reopens them.
func (w *LearnedWriter) Current() bool {
	w.mu.Lock()
	id := w.id
	w.mu.Unlock()
	p, err := ebpf.LoadPinnedMap(filepath.Join(w.pinDir, MapLearned), nil)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false
	}
	pid, _ := info.ID()
	return pid == id
}

// Close closes the writer's file descriptors.
func (w *LearnedWriter) Close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.outer == nil {
		return nil
	}
	w.closeInner()
	err := w.outer.Close()
	w.outer = nil
	return err
}

// release drops the writer's inner map descriptors and its reference to
// the outer map without closing it (the Manager owns that descriptor).
func (w *LearnedWriter) release() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closeInner()
	w.outer = nil
}

// learnedInner calls fn with each endpoint's inner map (opened by id, closed
// after fn) until fn fails.
func learnedInner(outer *ebpf.Map, fn func(index uint32, m *ebpf.Map) error) error {
	var (
		index uint32
		id    uint32
		all   = map[uint32]uint32{}
	)
	it := outer.Iterate()
	for it.Next(&index, &id) {
		all[index] = id
	}
	if err := it.Err(); err != nil {
		return err
	}
	for index, id := range all {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if errors.Is(err, unix.ENOENT) {
			continue // dropped meanwhile
		}
		if err != nil {
			return fmt.Errorf("open learned map of endpoint %d: %w", index, err)
		}
		err = fn(index, m)
		m.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// PinMaps creates this layout's maps, without programs, pinned in pinDir
// (which must exist on a bpffs), with `meta` holding LayoutVersion. It is
// for tests and benchmarks of a writer (the DNS sidecar) that need the real
// pins without attaching anything; remove them with os.RemoveAll(pinDir).
func PinMaps(pinDir string) error {
	spec, err := loadClawker()
	if err != nil {
		return fmt.Errorf("load clawker spec: %w", err)
	}
	for _, name := range mapNames {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			return fmt.Errorf("create map %s: %w", name, err)
		}
		if name == MapMeta {
			err = m.Put(uint32(0), clawkerMetaVal{LayoutVersion: LayoutVersion})
		}
		if err == nil {
			err = m.Pin(filepath.Join(pinDir, name))
		}
		m.Close()
		if err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	return nil
}

// LearnedEntry is one learned address of an endpoint.
type LearnedEntry struct {
	Index    uint32
	Addr     netip.Addr
	Identity uint32
	// Expires is the entry's CLOCK_MONOTONIC deadline as wall-clock time.
	Expires time.Time
}

// ReadLearned lists every learned entry pinned under pinDir.
func ReadLearned(pinDir string) ([]LearnedEntry, error) {
	outer, err := openPinnedLearned(pinDir)
	if err != nil {
		return nil, err
	}
	defer outer.Close()
	var out []LearnedEntry
	err = learnedInner(outer, func(index uint32, m *ebpf.Map) error {
		var (
			k uint32
			v clawkerLearnedVal
		)
		it := m.Iterate()
		for it.Next(&k, &v) {
			out = append(out, LearnedEntry{Index: index, Addr: addrOf(k), Identity: v.Identity, Expires: fromMono(v.ExpiresNs)})
		}
		return it.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read learned in %s: %w", pinDir, err)
	}
	return out, nil
}
