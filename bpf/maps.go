package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// Endpoint is one enrolled endpoint (a container's network namespace).
type Endpoint struct {
	// Index is the endpoint's stable index (policy.Endpoint.Index).
	Index uint32
	// IP is the endpoint's address, Gateway its network's gateway (where
	// the DNS, CA and proxy listeners are reached), Subnet its network.
	IP, Gateway netip.Addr
	Subnet      netip.Prefix
	// ICC lets the endpoint reach peers on its own subnet.
	ICC bool
	// DNSPort and CAPort are the gateway ports DNS (53) and http://gateway/
	// are steered to (15053 and 15002).
	DNSPort, CAPort uint16
	// BypassUntil, when in the future, takes the endpoint out of the hooks'
	// decisions (its flows go untouched to the closed network, which
	// redirects them to the proxy).
	BypassUntil time.Time
}

// Route is one allowed (identity, port, L4) of an endpoint and the gateway
// listener that carries it; ListenerPort 0 leaves the destination alone
// (IP/CIDR rules: the closed network redirects to the transparent listener).
type Route struct {
	Identity     uint32
	Port         uint16
	L4           uint8
	ListenerPort uint16
}

// CIDR maps a destination prefix of an endpoint to an identity.
type CIDR struct {
	Prefix   netip.Prefix
	Identity uint32
}

// Counters are an endpoint's per-hook-decision totals.
type Counters struct {
	Allowed, Denied, DNS uint64
}

// ip4 returns a as the network-byte-order u32 the kernel uses.
func ip4(a netip.Addr) (uint32, error) {
	a = a.Unmap()
	if !a.Is4() {
		return 0, fmt.Errorf("address %s is not IPv4", a)
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:]), nil
}

func addrOf(u uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// be32 is v stored big-endian in a native u32 (cidr_key.index).
func be32(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

func endpointValue(ep Endpoint) (clawkerEndpoint, error) {
	var v clawkerEndpoint
	var err error
	if v.Ip, err = ip4(ep.IP); err != nil {
		return v, fmt.Errorf("endpoint %d ip: %w", ep.Index, err)
	}
	if v.Gateway, err = ip4(ep.Gateway); err != nil {
		return v, fmt.Errorf("endpoint %d gateway: %w", ep.Index, err)
	}
	if !ep.Subnet.IsValid() || !ep.Subnet.Addr().Unmap().Is4() {
		return v, fmt.Errorf("endpoint %d subnet %s is not an IPv4 prefix", ep.Index, ep.Subnet)
	}
	sub := ep.Subnet.Masked()
	if v.Subnet, err = ip4(sub.Addr()); err != nil {
		return v, err
	}
	if ep.DNSPort == 0 || ep.CAPort == 0 {
		return v, fmt.Errorf("endpoint %d: DNSPort and CAPort must be set", ep.Index)
	}
	v.Index = ep.Index
	v.Prefixlen = uint8(sub.Bits())
	if ep.ICC {
		v.Flags |= 1
	}
	v.DnsPort = ep.DNSPort
	v.CaPort = ep.CAPort
	v.BypassUntilNs = toMono(ep.BypassUntil)
	return v, nil
}

// Enroll puts the endpoint whose network namespace has this cookie (see
// NetnsCookie) under the hooks, replacing an earlier enrollment.
func (m *Manager) Enroll(cookie uint64, ep Endpoint) error {
	if m.closed.Load() {
		return ErrClosed
	}
	v, err := endpointValue(ep)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.maps[MapEndpoints].Put(cookie, v); err != nil {
		return fmt.Errorf("enroll endpoint %d (netns cookie %d): %w", ep.Index, cookie, err)
	}
	return nil
}

// Unenroll takes the namespace out of the hooks. Unknown cookies are fine.
func (m *Manager) Unenroll(cookie uint64) error {
	if m.closed.Load() {
		return ErrClosed
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.maps[MapEndpoints].Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unenroll netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Enrolled returns the enrollment of a cookie, if any (IP, Gateway, Subnet,
// flags and ports as stored; BypassUntil converted back to wall time).
func (m *Manager) Enrolled(cookie uint64) (Endpoint, bool, error) {
	if m.closed.Load() {
		return Endpoint{}, false, ErrClosed
	}
	var v clawkerEndpoint
	if err := m.maps[MapEndpoints].Lookup(cookie, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Endpoint{}, false, nil
		}
		return Endpoint{}, false, fmt.Errorf("look up netns cookie %d: %w", cookie, err)
	}
	ep := Endpoint{
		Index:   v.Index,
		IP:      addrOf(v.Ip),
		Gateway: addrOf(v.Gateway),
		Subnet:  netip.PrefixFrom(addrOf(v.Subnet), int(v.Prefixlen)),
		ICC:     v.Flags&1 != 0,
		DNSPort: v.DnsPort,
		CAPort:  v.CaPort,
	}
	if v.BypassUntilNs != 0 {
		ep.BypassUntil = fromMono(v.BypassUntilNs)
	}
	return ep, true, nil
}

// SetBypass sets (or, with the zero time, clears) the bypass deadline of an
// enrolled namespace. The wall-clock deadline is converted to the kernel's
// monotonic clock now; the plugin re-applies it after restarts.
func (m *Manager) SetBypass(cookie uint64, until time.Time) error {
	if m.closed.Load() {
		return ErrClosed
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var v clawkerEndpoint
	if err := m.maps[MapEndpoints].Lookup(cookie, &v); err != nil {
		return fmt.Errorf("set bypass of netns cookie %d: %w", cookie, err)
	}
	v.BypassUntilNs = toMono(until)
	if err := m.maps[MapEndpoints].Update(cookie, v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("set bypass of netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Learn records that addr, answered to endpoint index for a name of this
// identity, is valid for ttl, through the one writer of the learned map
// (LearnedWriter; the DNS sidecar uses OpenLearned). A later answer for the
// same (index, addr) replaces it.
func (m *Manager) Learn(index uint32, addr netip.Addr, identity uint32, ttl time.Duration) error {
	if m.closed.Load() {
		return ErrClosed
	}
	_, err := m.learned.Learn(index, addr, identity, ttl)
	return err
}

// GC deletes learned entries that expired at now and returns how many. The
// kernel ignores expired entries anyway; this frees their slots (and a full
// endpoint's writer reclaims expired entries by itself). Inner maps stay:
// ForgetEndpoint drops an endpoint's map.
func (m *Manager) GC(now time.Time) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	cut := toMono(now)
	n := 0
	err := learnedInner(m.maps[MapLearned], func(index uint32, inner *ebpf.Map) error {
		d, err := deleteWhere(inner, func(_ uint32, v clawkerLearnedVal) bool { return v.ExpiresNs <= cut })
		n += d
		if err != nil {
			return fmt.Errorf("endpoint %d: %w", index, err)
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("gc learned: %w", err)
	}
	return n, nil
}

// deleteWhere deletes the entries of mp for which match is true and
// returns how many it deleted.
func deleteWhere[K comparable, V any](mp *ebpf.Map, match func(K, V) bool) (int, error) {
	var (
		k    K
		v    V
		keys []K
	)
	it := mp.Iterate()
	for it.Next(&k, &v) {
		if match(k, v) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		err := mp.Delete(k)
		if err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}

// forgetWhere deletes from w's record what deleteWhere deleted from its
// map with match, or drops the record when that failed (err).
func forgetWhere[K comparable, V comparable](w *written[K, V], match func(K, V) bool, err error) {
	if err != nil {
		w.entries = nil
		return
	}
	maps.DeleteFunc(w.entries, match)
}

// ForgetEndpoint drops everything kept for endpoint index: learned
// addresses, routes, CIDRs and counters (call it when the endpoint is
// deleted, after Unenroll).
func (m *Manager) ForgetEndpoint(index uint32) error {
	if m.closed.Load() {
		return ErrClosed
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.maps[MapLearned].Delete(index); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget endpoint %d learned: %w", index, err)
	}
	ofRoute := func(k clawkerRouteKey, _ clawkerRouteVal) bool { return k.Index == index }
	ofCIDR := func(k clawkerCidrKey, _ clawkerCidrVal) bool { return k.Index == be32(index) }
	// The records lose what the map loses (or, on a failure, are dropped).
	_, err := deleteWhere(m.maps[MapRoutes], ofRoute)
	forgetWhere(&m.wRoutes, ofRoute, err)
	if err != nil {
		return fmt.Errorf("forget endpoint %d routes: %w", index, err)
	}
	_, err = deleteWhere(m.maps[MapCIDRs], ofCIDR)
	forgetWhere(&m.wCIDRs, ofCIDR, err)
	if err != nil {
		return fmt.Errorf("forget endpoint %d cidrs: %w", index, err)
	}
	if err := m.maps[MapCounters].Delete(index); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget endpoint %d counters: %w", index, err)
	}
	return nil
}

// Counters returns the totals of endpoint index summed over CPUs.
func (m *Manager) Counters(index uint32) (Counters, error) {
	if m.closed.Load() {
		return Counters{}, ErrClosed
	}
	var per []clawkerCountersVal
	if err := m.maps[MapCounters].Lookup(index, &per); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Counters{}, nil
		}
		return Counters{}, fmt.Errorf("read counters of endpoint %d: %w", index, err)
	}
	var c Counters
	for _, p := range per {
		c.Allowed += p.Allowed
		c.Denied += p.Denied
		c.DNS += p.Dns
	}
	return c, nil
}

// LearnedFill returns, per endpoint that has learned addresses, how many
// entries its learned map holds (expired ones not yet collected included;
// the quota is LearnedPerEndpoint). A scrape costs one procfs read per
// endpoint, whatever the endpoints learned: the kernel accounts a
// BPF_F_NO_PREALLOC hash map's memory per element it holds (fdinfo's
// memlock: a fixed part plus one element's size per entry, since Linux
// 6.4), so the count is read from there; a kernel that accounts a fixed
// size walks the entries instead (see fillGauge).
func (m *Manager) LearnedFill() (map[uint32]int, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	m.fillOnce.Do(func() { m.fill = calibrateFill(m.learned.innerSpec) })
	out := map[uint32]int{}
	err := learnedInner(m.maps[MapLearned], func(index uint32, in *ebpf.Map) error {
		n, err := m.fill.count(in)
		out[index] = n
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("count learned entries: %w", err)
	}
	return out, nil
}

// fillGauge counts a hash map's entries from its memory accounting:
// memlock = empty + per * entries. per is 0 where the kernel accounts a
// fixed size (before 6.4) or calibration failed: count then walks.
type fillGauge struct {
	empty, per uint64
}

// calibrateFill measures, on a scratch map of spec, the memlock of no
// entry and of one.
func calibrateFill(spec *ebpf.MapSpec) fillGauge {
	scratch, err := ebpf.NewMap(spec.Copy())
	if err != nil {
		return fillGauge{}
	}
	defer scratch.Close()
	empty, err := memlock(scratch)
	if err != nil {
		return fillGauge{}
	}
	if err := scratch.Put(uint32(1), make([]byte, spec.ValueSize)); err != nil {
		return fillGauge{}
	}
	one, err := memlock(scratch)
	if err != nil || one <= empty {
		return fillGauge{}
	}
	return fillGauge{empty: empty, per: one - empty}
}

func (g fillGauge) count(mp *ebpf.Map) (int, error) {
	if g.per != 0 {
		if ml, err := memlock(mp); err == nil && ml >= g.empty && (ml-g.empty)%g.per == 0 {
			return int((ml - g.empty) / g.per), nil
		}
	}
	var (
		k uint32
		v clawkerLearnedVal
	)
	n := 0
	it := mp.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// memlock reads the kernel's memory accounting of mp (fdinfo "memlock:").
func memlock(mp *ebpf.Map) (uint64, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(mp.FD()))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("no memlock in fdinfo")
}

// FullSyncEvery is how often a sync reads a map whole instead of trusting
// what it last wrote there (see written).
const FullSyncEvery = time.Minute

// written is what the syncs last wrote to one map, so that a sync compares
// the wanted entries with it instead of reading the map back: a rule change
// then costs the entries it changes (reading a network's 10,000 base
// routes and the CIDR trie entry by entry took most of a sync). The map is
// read whole (and every difference written) when nothing is recorded: after
// Open (the pins carry what an earlier process wrote), after any failed
// write, after ForgetWritten, and by the first sync FullSyncEvery after the
// last full read, so that an entry something else changed (root on the
// host with bpftool) is still put back, no longer by every sync. The maps'
// only writers in the plugin are the syncs and ForgetEndpoint, which keep
// the record current.
type written[K comparable, V comparable] struct {
	entries map[K]V // nil: unknown
	read    time.Time
}

// syncMap makes mp hold exactly want: it first adds or updates every
// desired entry, then deletes the stale ones, so a key that is desired
// before and after is never missing in between. It compares want with
// w's record, or with the map read whole (see written); a write that fails
// after a comparison with the record is retried once from a full read.
// w keeps want.
func syncMap[K comparable, V comparable](mp *ebpf.Map, want map[K]V, w *written[K, V]) error {
	full := w.entries == nil || time.Since(w.read) >= FullSyncEvery
	var err error
	if !full {
		if err = writeDiff(mp, w.entries, want); err != nil {
			full = true // the record was wrong or the map refused: from a full read
		}
	}
	if full {
		var cur map[K]V
		if cur, err = readAll[K, V](mp); err != nil {
			err = fmt.Errorf("read current entries: %w", err)
		} else {
			err = writeDiff(mp, cur, want)
		}
	}
	if err != nil {
		w.entries = nil
		return err
	}
	w.entries = want
	if full {
		w.read = time.Now()
	}
	return nil
}

// writeDiff writes what differs between cur and want: puts first, then
// deletes.
func writeDiff[K comparable, V comparable](mp *ebpf.Map, cur, want map[K]V) error {
	for k, v := range want {
		if c, ok := cur[k]; ok && c == v {
			continue
		}
		if err := mp.Put(k, v); err != nil {
			return fmt.Errorf("put %+v: %w", k, err)
		}
	}
	for k := range cur {
		if _, ok := want[k]; ok {
			continue
		}
		if err := mp.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %+v: %w", k, err)
		}
	}
	return nil
}

// ForgetWritten makes the next sync of every map read it whole (the
// plugin's break-glass reload).
func (m *Manager) ForgetWritten() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.wRoutes.entries, m.wCIDRs.entries, m.wBaseRoutes.entries, m.wBaseCIDRs.entries = nil, nil, nil, nil
}

// readBatch is how many entries readAll asks the kernel for per call.
const readBatch = 4096

// readAll reads every entry of mp. Hash maps are read in batches: a
// network's 10,000 base routes in a few system calls, where iterating
// takes two per entry (next key, lookup), which made the route sync half
// of a rule change's time in bench/effective. Other map types (LPM tries
// have no batch lookup) and kernels without batch operations iterate.
func readAll[K comparable, V comparable](mp *ebpf.Map) (map[K]V, error) {
	cur := map[K]V{}
	if mp.Type() == ebpf.Hash {
		keys, vals := make([]K, readBatch), make([]V, readBatch)
		var cursor ebpf.MapBatchCursor
		for {
			n, err := mp.BatchLookup(&cursor, keys, vals, nil)
			for i := range n {
				cur[keys[i]] = vals[i]
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return cur, nil
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				clear(cur)
				break
			}
			if err != nil {
				return nil, err
			}
		}
	}
	var (
		k K
		v V
	)
	it := mp.Iterate()
	for it.Next(&k, &v) {
		cur[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	return cur, nil
}

// SyncRoutes makes the routes map hold exactly routes (every endpoint's full
// desired set, keyed by endpoint index). New and changed entries are written
// before stale ones are deleted, so a connect that is allowed before and
// after the change never fails during it.
func (m *Manager) SyncRoutes(routes map[uint32][]Route) error {
	return m.SyncRoutesLayered(routes, nil)
}

// SyncRoutesLayered is SyncRoutes where the endpoints listed in layered
// also get the layered mark: the hooks then fall back, for what an
// endpoint's own routes and CIDRs miss, to its network's base (SyncBase,
// keyed by the gateway the endpoint is enrolled with). An endpoint without
// the mark (pending, bad labels, or not layered) never reaches a base.
func (m *Manager) SyncRoutesLayered(routes map[uint32][]Route, layered []uint32) error {
	if m.closed.Load() {
		return ErrClosed
	}
	want := map[clawkerRouteKey]clawkerRouteVal{}
	for index, rs := range routes {
		if err := addRoutes(want, index, rs, fmt.Sprintf("endpoint %d", index)); err != nil {
			return fmt.Errorf("sync routes: %w", err)
		}
	}
	for _, index := range layered {
		want[clawkerRouteKey{Index: index, Pad: 1}] = clawkerRouteVal{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := syncMap(m.maps[MapRoutes], want, &m.wRoutes); err != nil {
		return fmt.Errorf("sync routes: %w", err)
	}
	return nil
}

func addRoutes(want map[clawkerRouteKey]clawkerRouteVal, index uint32, rs []Route, whose string) error {
	for _, r := range rs {
		if r.L4 != 6 && r.L4 != 17 {
			return fmt.Errorf("%s identity %d port %d: l4 %d is neither tcp (6) nor udp (17)", whose, r.Identity, r.Port, r.L4)
		}
		k := clawkerRouteKey{Index: index, Identity: r.Identity, Port: r.Port, L4: r.L4}
		v := clawkerRouteVal{ListenerPort: r.ListenerPort}
		if old, ok := want[k]; ok && old != v {
			return fmt.Errorf("%s identity %d port %d/%d has listeners %d and %d", whose, r.Identity, r.Port, r.L4, old.ListenerPort, r.ListenerPort)
		}
		want[k] = v
	}
	return nil
}

// SyncCIDRs makes the cidrs trie hold exactly cidrs (every endpoint's IP/CIDR
// rules), with the same add-first discipline as SyncRoutes.
func (m *Manager) SyncCIDRs(cidrs map[uint32][]CIDR) error {
	if m.closed.Load() {
		return ErrClosed
	}
	want := map[clawkerCidrKey]clawkerCidrVal{}
	for index, cs := range cidrs {
		if err := addCIDRs(want, be32(index), cs, fmt.Sprintf("endpoint %d", index)); err != nil {
			return fmt.Errorf("sync cidrs: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := syncMap(m.maps[MapCIDRs], want, &m.wCIDRs); err != nil {
		return fmt.Errorf("sync cidrs: %w", err)
	}
	return nil
}

func addCIDRs(want map[clawkerCidrKey]clawkerCidrVal, index uint32, cs []CIDR, whose string) error {
	for _, c := range cs {
		p := c.Prefix.Masked()
		a, err := ip4(p.Addr())
		if err != nil || !p.IsValid() {
			return fmt.Errorf("%s: prefix %s is not IPv4", whose, c.Prefix)
		}
		k := clawkerCidrKey{Prefixlen: 32 + uint32(p.Bits()), Index: index, Addr: a}
		v := clawkerCidrVal{Identity: c.Identity}
		if old, ok := want[k]; ok && old != v {
			return fmt.Errorf("%s prefix %s has identities %d and %d", whose, p, old.Identity, c.Identity)
		}
		want[k] = v
	}
	return nil
}

// SyncBase makes base_routes and base_cidrs hold exactly each network's
// base routes and CIDRs, keyed by the network's gateway (the endpoints'
// enrolled gateway), with the same add-first discipline as SyncRoutes.
// Call it before SyncRoutesLayered so a newly layered endpoint finds its
// base in place.
func (m *Manager) SyncBase(routes map[netip.Addr][]Route, cidrs map[netip.Addr][]CIDR) error {
	if m.closed.Load() {
		return ErrClosed
	}
	wantR := map[clawkerRouteKey]clawkerRouteVal{}
	for gw, rs := range routes {
		g, err := ip4(gw)
		if err != nil {
			return fmt.Errorf("sync base routes: gateway %s: %w", gw, err)
		}
		if err := addRoutes(wantR, g, rs, "network "+gw.String()); err != nil {
			return fmt.Errorf("sync base routes: %w", err)
		}
	}
	wantC := map[clawkerCidrKey]clawkerCidrVal{}
	for gw, cs := range cidrs {
		g, err := ip4(gw)
		if err != nil {
			return fmt.Errorf("sync base cidrs: gateway %s: %w", gw, err)
		}
		if err := addCIDRs(wantC, g, cs, "network "+gw.String()); err != nil {
			return fmt.Errorf("sync base cidrs: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := syncMap(m.maps[MapBaseRoutes], wantR, &m.wBaseRoutes); err != nil {
		return fmt.Errorf("sync base routes: %w", err)
	}
	if err := syncMap(m.maps[MapBaseCIDRs], wantC, &m.wBaseCIDRs); err != nil {
		return fmt.Errorf("sync base cidrs: %w", err)
	}
	return nil
}
