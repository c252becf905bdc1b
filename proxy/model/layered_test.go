package model

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestBuildLayered: a network's base is routed once (BaseRoutes, BaseCIDRs
// by network, its gateway in BaseGateway), every endpoint on it that is
// neither pending nor bad-labelled is Layered, a labelled one has only
// its own layer's routes, and what the hooks look up for it (its own
// routes first, then its network's base) steers every (identity, port) of
// its merged policy to the listener the merged build steers it to.
func TestBuildLayered(t *testing.T) {
	cfg, err := policy.ParseNetworkOptions(map[string]string{
		"clawker.allow": "a.example.com,.example.com,tcp://db.example.com:5432,10.0.0.0/8,tcp://10.1.0.0/16:22,http://.x.test",
		"clawker.deny":  "bad.example.com",
	}, "n1")
	require.NoError(t, err)
	labels, err := policy.ParseLabels(map[string]string{
		"clawker.allow": "https://.example.com:8443,tcp://only.test:7000,10.1.2.0/24,b.x.test",
		"clawker.deny":  "a.example.com",
	}, "c2")
	require.NoError(t, err)
	ids := policy.NewIdentityTable()
	base, err := policy.Compile(policy.CompileInput{Network: cfg.Rules}, ids)
	require.NoError(t, err)
	lay, err := policy.Layer(policy.NewBaseIndex(base), labels, 0, ids)
	require.NoError(t, err)
	merged, err := policy.Compile(policy.CompileInput{Network: cfg.Rules, Label: labels}, ids)
	require.NoError(t, err)

	gw := netip.MustParseAddr("10.9.0.1")
	layered := snapWith(&policy.Endpoint{Index: 1, NetworkID: "n1", Policy: base}, &policy.Endpoint{Index: 2, NetworkID: "n1", Policy: lay},
		&policy.Endpoint{Index: 3, NetworkID: "n1", LabelError: "bad"}, &policy.Endpoint{Index: 4, NetworkID: "n1", Pending: true})
	layered.Networks = map[string]*policy.Network{"n1": {ID: "n1", Gateway: gw, Base: base}}
	m, err := Build(layered, NewPortAllocator())
	require.NoError(t, err)
	require.Equal(t, map[uint32]string{1: "n1", 2: "n1"}, m.Layered)
	require.Equal(t, map[string]netip.Addr{"n1": gw}, m.BaseGateway)
	require.Empty(t, m.Routes[1], "an endpoint without labels has nothing of its own")
	require.NotEmpty(t, m.BaseRoutes["n1"])
	require.Len(t, m.BaseCIDRs["n1"], 2)
	has := func(rs []Route, pattern string) bool {
		id, _ := ids.Lookup(pattern)
		for _, r := range rs {
			if r.Identity == id {
				return true
			}
		}
		return false
	}
	require.True(t, has(m.Routes[2], "only.test"))
	require.False(t, has(m.BaseRoutes["n1"], "only.test"), "a label's route stays its endpoint's")
	require.True(t, has(m.Routes[2], "db.example.com"), "a network name under a label wildcard is restated with the label's ports")
	require.False(t, has(m.Routes[2], "10.1.0.0/16"), "what labels do not touch is the base's only")
	require.True(t, has(m.BaseRoutes["n1"], "10.1.0.0/16"))

	flat := snapWith(&policy.Endpoint{Index: 1, NetworkID: "n1", Policy: base}, &policy.Endpoint{Index: 2, NetworkID: "n1", Policy: merged})
	fm, err := Build(flat, NewPortAllocator())
	require.NoError(t, err)
	require.Empty(t, fm.Layered, "policies without a network base are routed whole")

	type key struct {
		id   policy.Identity
		port uint16
		l4   policy.L4
	}
	listenerKey := func(m *Model, port uint16) string {
		if port == 0 {
			return ""
		}
		l, ok := m.Listener(port)
		require.True(t, ok, "route to listener port %d that is not in the model", port)
		return l.Key
	}
	lookup := func(idx uint32) map[key]string {
		out := map[key]string{}
		for _, r := range m.BaseRoutes["n1"] {
			out[key{r.Identity, r.Port, r.L4}] = listenerKey(m, r.ListenerPort)
		}
		for _, r := range m.Routes[idx] {
			out[key{r.Identity, r.Port, r.L4}] = listenerKey(m, r.ListenerPort)
		}
		return out
	}
	for idx := uint32(1); idx <= 2; idx++ {
		got := lookup(idx)
		reach := map[policy.Identity]bool{}
		for _, a := range flat.Endpoints[idx].Policy.Allows {
			reach[a.Identity] = true
		}
		want := map[key]string{}
		for _, r := range fm.Routes[idx] {
			want[key{r.Identity, r.Port, r.L4}] = listenerKey(fm, r.ListenerPort)
		}
		for k, v := range got {
			if !reach[k.id] {
				delete(got, k) // a base entry a label deny cancels: its identity is never learned for this endpoint
				continue
			}
			require.Equal(t, want[k], v, "endpoint %d %+v", idx, k)
		}
		require.Equal(t, want, got, "endpoint %d", idx)
	}
}
