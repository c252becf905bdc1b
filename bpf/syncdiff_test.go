package bpf

import (
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// syncInput is one desired state of the four synced maps.
type syncInput struct {
	routes     map[uint32][]Route
	layered    []uint32
	cidrs      map[uint32][]CIDR
	baseRoutes map[netip.Addr][]Route
	baseCIDRs  map[netip.Addr][]CIDR
}

// randomInput draws a state over a few endpoints and gateways, from small
// pools of identities, ports and prefixes, so that consecutive states
// share most entries, change some listener ports and drop or add others.
func randomInput(r *rand.Rand) syncInput {
	in := syncInput{routes: map[uint32][]Route{}, cidrs: map[uint32][]CIDR{},
		baseRoutes: map[netip.Addr][]Route{}, baseCIDRs: map[netip.Addr][]CIDR{}}
	routes := func() []Route {
		seen := map[Route]bool{}
		var rs []Route
		for range r.IntN(40) {
			rt := Route{Identity: uint32(1 + r.IntN(30)), Port: uint16(440 + r.IntN(4)), L4: []uint8{6, 17}[r.IntN(2)]}
			k := rt
			if seen[k] {
				continue
			}
			seen[k] = true
			rt.ListenerPort = uint16(15100 + r.IntN(3))
			rs = append(rs, rt)
		}
		return rs
	}
	cidrs := func() []CIDR {
		seen := map[netip.Prefix]bool{}
		var cs []CIDR
		for range r.IntN(12) {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), 0}), 16+8*r.IntN(2)).Masked()
			if seen[p] {
				continue
			}
			seen[p] = true
			cs = append(cs, CIDR{Prefix: p, Identity: uint32(100 + r.IntN(3))})
		}
		return cs
	}
	for idx := uint32(1); idx <= 6; idx++ {
		if r.IntN(4) > 0 {
			in.routes[idx] = routes()
			in.cidrs[idx] = cidrs()
		}
		if r.IntN(2) == 0 {
			in.layered = append(in.layered, idx)
		}
	}
	for g := range 3 {
		if r.IntN(4) > 0 {
			gw := netip.AddrFrom4([4]byte{10, 202, byte(g), 1})
			in.baseRoutes[gw], in.baseCIDRs[gw] = routes(), cidrs()
		}
	}
	return in
}

func (in syncInput) apply(m *Manager) error {
	if err := m.SyncBase(in.baseRoutes, in.baseCIDRs); err != nil {
		return err
	}
	if err := m.SyncRoutesLayered(in.routes, in.layered); err != nil {
		return err
	}
	return m.SyncCIDRs(in.cidrs)
}

// syncedMaps is the content of the four synced maps.
type syncedMaps struct {
	routes, baseRoutes map[clawkerRouteKey]clawkerRouteVal
	cidrs, baseCIDRs   map[clawkerCidrKey]clawkerCidrVal
}

// iterate reads mp entry by entry (not readAll, whose batches the syncs
// use).
func iterate[K comparable, V any](t *testing.T, mp *ebpf.Map) map[K]V {
	t.Helper()
	out := map[K]V{}
	var (
		k K
		v V
	)
	it := mp.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	require.NoError(t, it.Err())
	return out
}

func dumpSynced(t *testing.T, m *Manager) syncedMaps {
	t.Helper()
	return syncedMaps{
		routes:     iterate[clawkerRouteKey, clawkerRouteVal](t, m.maps[MapRoutes]),
		baseRoutes: iterate[clawkerRouteKey, clawkerRouteVal](t, m.maps[MapBaseRoutes]),
		cidrs:      iterate[clawkerCidrKey, clawkerCidrVal](t, m.maps[MapCIDRs]),
		baseCIDRs:  iterate[clawkerCidrKey, clawkerCidrVal](t, m.maps[MapBaseCIDRs]),
	}
}

// expected is what the maps must hold for in, written out here from the
// map layouts (docs/SEAMS.md), not with the sync's own helpers.
func (in syncInput) expected(forgotten map[uint32]bool) syncedMaps {
	out := syncedMaps{routes: map[clawkerRouteKey]clawkerRouteVal{}, baseRoutes: map[clawkerRouteKey]clawkerRouteVal{},
		cidrs: map[clawkerCidrKey]clawkerCidrVal{}, baseCIDRs: map[clawkerCidrKey]clawkerCidrVal{}}
	u32 := func(a netip.Addr) uint32 {
		b := a.As4()
		return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	}
	routeInto := func(into map[clawkerRouteKey]clawkerRouteVal, index uint32, rs []Route) {
		for _, r := range rs {
			into[clawkerRouteKey{Index: index, Identity: r.Identity, Port: r.Port, L4: r.L4}] = clawkerRouteVal{ListenerPort: r.ListenerPort}
		}
	}
	cidrInto := func(into map[clawkerCidrKey]clawkerCidrVal, index uint32, cs []CIDR) {
		for _, c := range cs {
			into[clawkerCidrKey{Prefixlen: 32 + uint32(c.Prefix.Bits()), Index: index, Addr: u32(c.Prefix.Addr())}] = clawkerCidrVal{Identity: c.Identity}
		}
	}
	for idx, rs := range in.routes {
		if !forgotten[idx] {
			routeInto(out.routes, idx, rs)
		}
	}
	for _, idx := range in.layered {
		if !forgotten[idx] {
			out.routes[clawkerRouteKey{Index: idx, Pad: 1}] = clawkerRouteVal{}
		}
	}
	for idx, cs := range in.cidrs {
		if !forgotten[idx] {
			cidrInto(out.cidrs, be32(idx), cs)
		}
	}
	for gw, rs := range in.baseRoutes {
		routeInto(out.baseRoutes, u32(gw), rs)
	}
	for gw, cs := range in.baseCIDRs {
		cidrInto(out.baseCIDRs, u32(gw), cs)
	}
	return out
}

// TestSyncByDifference: over a random sequence of states, the syncs (which
// compare with what they last wrote instead of reading the maps back)
// leave the maps exactly as a sync from a full read does; ForgetEndpoint's
// deletions are known to the next sync (it puts the routes back); an entry
// something else changed is repaired by the next full read (after
// FullSyncEvery or ForgetWritten); a sync that fails half-way leaves no
// record behind it, so the next one reads the maps and ends exact.
func TestSyncByDifference(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 7))

	var in syncInput
	for step := range 300 {
		in = randomInput(r)
		require.NoError(t, in.apply(m), "step %d", step)
		require.Equal(t, in.expected(nil), dumpSynced(t, m), "step %d", step)

		switch r.IntN(6) {
		case 0: // an endpoint deleted, then its index reused with the same routes
			idx := uint32(1 + r.IntN(6))
			require.NoError(t, m.ForgetEndpoint(idx))
			require.Equal(t, in.expected(map[uint32]bool{idx: true}), dumpSynced(t, m), "step %d: forget %d", step, idx)
			require.NoError(t, in.apply(m))
			require.Equal(t, in.expected(nil), dumpSynced(t, m), "step %d: %d's routes put back", step, idx)
		case 1: // something else writes the maps: repaired by the next full read
			stray := clawkerRouteKey{Index: 99, Identity: 1, Port: 1, L4: 6}
			require.NoError(t, m.maps[MapRoutes].Put(stray, clawkerRouteVal{ListenerPort: 1}))
			for k := range in.expected(nil).baseRoutes {
				require.NoError(t, m.maps[MapBaseRoutes].Delete(k))
				break
			}
			if r.IntN(2) == 0 {
				m.ForgetWritten()
			} else {
				m.wRoutes.read, m.wBaseRoutes.read = time.Now().Add(-FullSyncEvery), time.Now().Add(-FullSyncEvery)
			}
			require.NoError(t, in.apply(m))
			require.Equal(t, in.expected(nil), dumpSynced(t, m), "step %d: repaired", step)
		}
	}

	// A sync that fails half-way (the CIDR trie full) leaves entries the
	// caller did not ask for; the next sync reads the trie and removes them.
	many := map[uint32][]CIDR{}
	for i := range 70000 {
		many[1] = append(many[1], CIDR{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 32), Identity: 5})
	}
	require.Error(t, m.SyncCIDRs(many))
	require.NotEmpty(t, iterate[clawkerCidrKey, clawkerCidrVal](t, m.maps[MapCIDRs]))
	require.NoError(t, in.apply(m))
	require.Equal(t, in.expected(nil), dumpSynced(t, m), "exact after a failed sync")
	require.NoError(t, (syncInput{}).apply(m))
	require.Equal(t, (syncInput{}).expected(nil), dumpSynced(t, m))
}

// BenchmarkSyncScale syncs what bench/scale's network gives the maps (a
// base of 10,000 routes and 500 CIDRs, 500 layered endpoints with 5
// routes of their own) on a rule change (a base route added, then
// removed), comparing with the maps read whole (as every sync did before
// the record: "full-read") and with the record ("diff"), side by side.
func BenchmarkSyncScale(b *testing.B) {
	testutil.RequirePrivileged(b)
	id := randID(b)
	m, err := Open(Config{PinDir: filepath.Join(testBPFFS(b, id), "pins"), CgroupPath: testCgroup(b, id)})
	require.NoError(b, err)
	b.Cleanup(func() { _ = m.Remove() })
	gw := netip.MustParseAddr("10.50.0.1")
	var base []Route
	for id := uint32(1); id <= 10000; id++ {
		base = append(base, Route{Identity: id, Port: 443, L4: 6, ListenerPort: 15100})
	}
	var cidrs []CIDR
	for i := range 500 {
		cidrs = append(cidrs, CIDR{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i/256), byte(i), 0}), 24), Identity: uint32(20000 + i)})
	}
	routes := map[uint32][]Route{}
	var layered []uint32
	for idx := uint32(1); idx <= 500; idx++ {
		for j := range uint32(5) {
			routes[idx] = append(routes[idx], Route{Identity: 30000 + 5*idx + j, Port: 443, L4: 6, ListenerPort: 15100})
		}
		layered = append(layered, idx)
	}
	inputs := [2]syncInput{
		{routes: routes, layered: layered, baseRoutes: map[netip.Addr][]Route{gw: base}, baseCIDRs: map[netip.Addr][]CIDR{gw: cidrs}},
		{routes: routes, layered: layered, baseRoutes: map[netip.Addr][]Route{gw: append(slices.Clip(base), Route{Identity: 40000, Port: 443, L4: 6, ListenerPort: 15100})}, baseCIDRs: map[netip.Addr][]CIDR{gw: cidrs}},
	}
	require.NoError(b, inputs[0].apply(m))
	for _, mode := range []string{"full-read", "diff"} {
		b.Run(mode, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if mode == "full-read" {
					m.ForgetWritten()
				}
				if err := inputs[i%2].apply(m); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
