package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLayeredRoutes: an endpoint with the layered mark falls back, for
// what its own routes and CIDRs miss, to the base of the network its
// gateway names, and to no other; its own routes add to the base; without
// the mark (a pending or bad-label endpoint) no base is reached.
func TestLayeredRoutes(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	for _, c := range []client{e.a, e.b} {
		require.NoError(t, m.Enroll(c.cookie, c.endpoint()))
		require.NoError(t, m.Learn(c.index, netip.MustParseAddr("10.201.200.5"), idWeb, time.Minute))
	}
	const idNet = 300 // a CIDR of A's network's base
	require.NoError(t, m.SyncBase(
		map[netip.Addr][]Route{
			e.a.gw: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}, {Identity: idNet, Port: 443, L4: 6, ListenerPort: 15100}},
			e.b.gw: {{Identity: idWeb, Port: 22, L4: 6, ListenerPort: 15120}},
		},
		map[netip.Addr][]CIDR{e.a.gw: {{Prefix: netip.MustParsePrefix("10.201.200.0/24"), Identity: idNet}}},
	))

	// No marks: the bases are not reached.
	require.NoError(t, m.SyncRoutesLayered(nil, nil))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{eperm: true})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.7:443"), &expect{eperm: true})

	// A layered on its network's base, with a port of its own (its labels).
	require.NoError(t, m.SyncRoutesLayered(map[uint32][]Route{e.a.index: {{Identity: idWeb, Port: 22, L4: 6, ListenerPort: 15120}}}, []uint32{e.a.index, e.b.index}))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener, peer: "10.201.200.5:443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:22"), &expect{banner: bannerSSH, peer: "10.201.200.5:22"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.7:443"), &expect{banner: bannerListener, peer: "10.201.200.7:443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.7:22"), &expect{eperm: true})
	// B's network has its own base: A's never reaches B.
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:22"), &expect{banner: bannerSSH, peer: "10.201.200.5:22"})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:443"), &expect{eperm: true})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.7:443"), &expect{eperm: true})

	// A loses its mark (its labels turned bad): its base goes with it.
	require.NoError(t, m.SyncRoutesLayered(nil, []uint32{e.b.index}))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{eperm: true})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:22"), &expect{eperm: true})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:22"), &expect{banner: bannerSSH})

	// A base that goes is revoked for every endpoint on it.
	require.NoError(t, m.SyncRoutesLayered(nil, []uint32{e.a.index, e.b.index}))
	require.NoError(t, m.SyncBase(map[netip.Addr][]Route{e.a.gw: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}}}, nil))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.7:443"), &expect{eperm: true})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:22"), &expect{eperm: true})

	// Forgetting A drops its mark.
	require.NoError(t, m.ForgetEndpoint(e.a.index))
	for k := range dumpRoutes(t, m) {
		require.NotEqual(t, e.a.index, k.Index)
	}
}
