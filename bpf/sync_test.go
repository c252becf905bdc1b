package bpf

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSyncBaseMany syncs a network's 10,000 base routes (more than three
// of readAll's batches), then a change that drops half of them, changes
// one and adds one: the map holds exactly the wanted routes each time, as
// the connect hook reads them (BaseRoute) and as an entry-by-entry
// iteration of the map sees them.
func TestSyncBaseMany(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	gw := netip.MustParseAddr("10.201.9.1")
	routes := func(from, to int) []Route {
		var rs []Route
		for id := from; id < to; id++ {
			rs = append(rs, Route{Identity: uint32(id), Port: 443, L4: 6, ListenerPort: 15100})
		}
		return rs
	}
	iterated := func() int {
		n := 0
		var (
			k clawkerRouteKey
			v clawkerRouteVal
		)
		it := m.maps[MapBaseRoutes].Iterate()
		for it.Next(&k, &v) {
			n++
		}
		require.NoError(t, it.Err())
		return n
	}
	require.NoError(t, m.SyncBase(map[netip.Addr][]Route{gw: routes(1, 10001)}, nil))
	require.Equal(t, 10000, iterated())
	cur, err := readAll[clawkerRouteKey, clawkerRouteVal](m.maps[MapBaseRoutes])
	require.NoError(t, err)
	require.Len(t, cur, 10000)
	for _, id := range []uint32{1, 4096, 4097, 8192, 10000} {
		l, ok, err := m.BaseRoute(gw, id, 443, 6)
		require.NoError(t, err)
		require.True(t, ok, "identity %d", id)
		require.Equal(t, uint16(15100), l)
	}

	next := append(routes(5001, 10001), Route{Identity: 20000, Port: 443, L4: 6, ListenerPort: 15100})
	next[0].ListenerPort = 15101 // identity 5001 moves to another listener
	require.NoError(t, m.SyncBase(map[netip.Addr][]Route{gw: next}, nil))
	require.Equal(t, 5001, iterated())
	for id, want := range map[uint32]uint16{1: 0, 5000: 0, 5001: 15101, 5002: 15100, 10000: 15100, 20000: 15100} {
		l, ok, err := m.BaseRoute(gw, id, 443, 6)
		require.NoError(t, err)
		require.Equal(t, want != 0, ok, "identity %d", id)
		require.Equal(t, want, l, "identity %d", id)
	}
	require.NoError(t, m.SyncBase(nil, nil))
	require.Zero(t, iterated())
}
