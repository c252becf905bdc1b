package model

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/stretchr/testify/require"
)

func snapWith(eps ...*policy.Endpoint) *policy.Snapshot {
	s := &policy.Snapshot{Generation: 7, Endpoints: map[uint32]*policy.Endpoint{}}
	for _, ep := range eps {
		s.Endpoints[ep.Index] = ep
	}
	return s
}

func TestBuildRoutesAndListeners(t *testing.T) {
	pol := &policy.Policy{Allows: []policy.Allowed{
		{Identity: 3, Pattern: "db.example.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 5432, Hi: 5432}, {Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}},
		{Identity: 1, Pattern: ".example.test", Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}, {Proto: policy.ProtoHTTPS, Lo: 8443, Hi: 8443}}},
		{Identity: 2, Pattern: "10.9.0.0/16", Prefix: netip.MustParsePrefix("10.9.0.0/16"), Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 7000, Hi: 7002}}},
	}}
	alloc := NewPortAllocator()
	m, err := Build(snapWith(&policy.Endpoint{Index: 1, Policy: pol}, &policy.Endpoint{Index: 2, Pending: true}), alloc)
	require.NoError(t, err)
	require.Equal(t, uint64(7), m.Generation)
	require.Empty(t, m.Routes[2], "pending endpoints get no routes")

	web443, ok := alloc.ports[WebKey(443)]
	require.True(t, ok)
	ded, ok := alloc.ports[DedicatedKey(policy.ProtoTCP, "db.example.test", 5432)]
	require.True(t, ok)
	l, ok := m.Listener(ded)
	require.True(t, ok)
	require.Equal(t, "db.example.test", l.Dst)
	require.Equal(t, uint16(5432), l.OrigPort)

	require.Contains(t, m.Routes[1], Route{Identity: 3, Port: 5432, L4: policy.L4TCP, ListenerPort: ded})
	require.Contains(t, m.Routes[1], Route{Identity: 3, Port: 443, L4: policy.L4TCP, ListenerPort: web443})
	require.Contains(t, m.Routes[1], Route{Identity: 1, Port: 8443, L4: policy.L4TCP, ListenerPort: alloc.ports[WebKey(8443)]})
	for p := uint16(7000); p <= 7002; p++ {
		require.Contains(t, m.Routes[1], Route{Identity: 2, Port: p, L4: policy.L4TCP})
	}
	require.Equal(t, []CIDR{{Prefix: netip.MustParsePrefix("10.9.0.0/16"), Identity: 2}}, m.CIDRs[1])
	_, ok = m.Listener(TransparentPort)
	require.True(t, ok)
	_, ok = m.Listener(CAPort)
	require.True(t, ok)
}

func TestPortsStableWhenRulesChange(t *testing.T) {
	alloc := NewPortAllocator()
	one := &policy.Policy{Allows: []policy.Allowed{{Identity: 1, Pattern: "a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 22, Hi: 22}}}}}
	_, err := Build(snapWith(&policy.Endpoint{Index: 1, Policy: one}), alloc)
	require.NoError(t, err)
	before := alloc.ports[DedicatedKey(policy.ProtoTCP, "a.test", 22)]

	two := &policy.Policy{Allows: []policy.Allowed{
		{Identity: 5, Pattern: "0.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1, Hi: 9}}},
		{Identity: 1, Pattern: "a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 22, Hi: 22}}},
	}}
	_, err = Build(snapWith(&policy.Endpoint{Index: 1, Policy: two}), alloc)
	require.NoError(t, err)
	require.Equal(t, before, alloc.ports[DedicatedKey(policy.ProtoTCP, "a.test", 22)])

	raw, err := json.Marshal(alloc)
	require.NoError(t, err)
	back := NewPortAllocator()
	require.NoError(t, json.Unmarshal(raw, back))
	p, err := back.Port(DedicatedKey(policy.ProtoTCP, "a.test", 22))
	require.NoError(t, err)
	require.Equal(t, before, p)
}

func TestBuildRejects(t *testing.T) {
	tests := []struct {
		name string
		pol  *policy.Policy
		want string
	}{
		{"wide range", &policy.Policy{Allows: []policy.Allowed{{Identity: 1, Pattern: "a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1, Hi: 1000}}}}}, "exceeds 256"},
		{"wildcard tcp", &policy.Policy{Allows: []policy.Allowed{{Identity: 1, Pattern: ".a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1, Hi: 1}}}}}, "exact name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(snapWith(&policy.Endpoint{Index: 1, Policy: tt.pol}), NewPortAllocator())
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestAllocatorExhaustionAndDecode(t *testing.T) {
	a := NewPortAllocator()
	for i := 0; i <= int(AllocHi-AllocLo); i++ {
		_, err := a.Port(string(rune('a'+i%26)) + string(rune(i)))
		require.NoError(t, err)
	}
	_, err := a.Port("one-too-many")
	require.ErrorContains(t, err, "in use")
	require.ErrorContains(t, NewPortAllocator().UnmarshalJSON([]byte(`{"x":80}`)), "outside")
	require.ErrorContains(t, NewPortAllocator().UnmarshalJSON([]byte(`{"x":15100,"y":15100}`)), "twice")
}
