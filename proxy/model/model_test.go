package model

import (
	"encoding/json"
	"net"
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

// TestBuildSharedFreshPort: allows that share a listener key no earlier
// Build allocated (two names on a new https port, in one Build) all get
// their routes: the key the first allocates is the others' too.
func TestBuildSharedFreshPort(t *testing.T) {
	pol := &policy.Policy{Allows: []policy.Allowed{
		{Identity: 1, Pattern: "allowed.example.test", Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}},
		{Identity: 2, Pattern: "tcp.example.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 5432, Hi: 5432}}},
		{Identity: 3, Pattern: ".wild.example.test", Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}},
	}}
	alloc := NewPortAllocator()
	m, err := Build(snapWith(&policy.Endpoint{Index: 1, Policy: pol}), alloc)
	require.NoError(t, err)
	web := alloc.ports[WebKey(443)]
	require.NotZero(t, web)
	require.Contains(t, m.Routes[1], Route{Identity: 1, Port: 443, L4: policy.L4TCP, ListenerPort: web})
	require.Contains(t, m.Routes[1], Route{Identity: 3, Port: 443, L4: policy.L4TCP, ListenerPort: web})
	require.Len(t, m.Routes[1], 3)
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

func TestBuildFailsBadRangesAlone(t *testing.T) {
	tests := []struct {
		name string
		bad  policy.Allowed
		want string
	}{
		{"wide range", policy.Allowed{Identity: 1, Pattern: "a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1, Hi: 1000}}}, "exceeds 256"},
		{"wildcard tcp", policy.Allowed{Identity: 1, Pattern: ".a.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1, Hi: 1}}}, "exact name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := policy.Allowed{Identity: 2, Pattern: "b.test", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 22, Hi: 22}}}
			m, err := Build(snapWith(&policy.Endpoint{Index: 1, Policy: &policy.Policy{Allows: []policy.Allowed{tt.bad, good}}}), NewPortAllocator())
			require.NoError(t, err)
			require.Len(t, m.Failures[1], 1)
			require.Equal(t, FailInvalid, m.Failures[1][0].Reason)
			require.Contains(t, m.Failures[1][0].Detail, tt.want)
			require.Len(t, m.Routes[1], 1, "the other rule is routed")
			require.Equal(t, uint16(22), m.Routes[1][0].Port)
		})
	}
}

// label and opt build an allow of one tcp range asked for by a label or a
// network option.
func rangeAllow(id policy.Identity, host string, lo, hi uint16, kind policy.SourceKind) policy.Allowed {
	r := policy.EgressRule{Dst: host, Proto: policy.ProtoTCP, Port: lo, PortEnd: hi, Action: policy.Allow,
		Source: policy.Provenance{Kind: kind, Key: "clawker.allow", Item: host}}
	return policy.Allowed{Identity: id, Pattern: host, Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: lo, Hi: hi}}, Rules: []policy.EgressRule{r}}
}

func TestAllocatorBudgetsReleaseAndExhaustion(t *testing.T) {
	lim := Limits{PerContainer: 10, PerNetwork: 20}
	alloc := NewPortAllocator()
	free := AllocHi - AllocLo + 1

	// Container budget: the second label range would make 12 > 10.
	ep1 := &policy.Endpoint{Index: 1, NetworkID: "n", Policy: &policy.Policy{Allows: []policy.Allowed{
		rangeAllow(1, "a.test", 1, 6, policy.SourceLabel),
		rangeAllow(2, "b.test", 1, 6, policy.SourceLabel),
		rangeAllow(3, "c.test", 1, 6, policy.SourceOption),
	}}}
	m, err := BuildWithLimits(snapWith(ep1), alloc, lim)
	require.NoError(t, err)
	require.Len(t, m.Failures[1], 1)
	require.Equal(t, FailContainerLimit, m.Failures[1][0].Reason)
	require.Equal(t, "b.test", m.Failures[1][0].Pattern)
	require.Contains(t, m.Failures[1][0].String(), "label clawker.allow=b.test")
	require.Len(t, m.Routes[1], 12, "a.test and c.test are routed")
	require.Equal(t, int(free)-12, alloc.Free())
	require.Equal(t, 12, m.NewPorts)

	// Network budget, shared by the endpoints of one network: c.test's 6
	// plus d.test's 6 fit 20 once, a further 10 do not.
	ep2 := &policy.Endpoint{Index: 2, NetworkID: "n", Policy: &policy.Policy{Allows: []policy.Allowed{
		rangeAllow(3, "c.test", 1, 6, policy.SourceOption),
		rangeAllow(4, "d.test", 1, 6, policy.SourceRuntime),
		rangeAllow(5, "e.test", 1, 10, policy.SourceRuntime),
	}}}
	m, err = BuildWithLimits(snapWith(ep1, ep2), alloc, lim)
	require.NoError(t, err)
	require.Len(t, m.Failures[2], 1)
	require.Equal(t, FailNetworkLimit, m.Failures[2][0].Reason)
	require.Equal(t, "e.test", m.Failures[2][0].Pattern)
	require.Equal(t, 6, m.NewPorts, "only d.test is new")
	cPort := alloc.ports[DedicatedKey(policy.ProtoTCP, "c.test", 1)]

	// Release: when ep1 goes, a.test's ports are free again; c.test's
	// port does not move.
	m, err = BuildWithLimits(snapWith(ep2), alloc, lim)
	require.NoError(t, err)
	require.False(t, alloc.Has(DedicatedKey(policy.ProtoTCP, "a.test", 1)))
	require.Equal(t, cPort, alloc.ports[DedicatedKey(policy.ProtoTCP, "c.test", 1)])
	require.Equal(t, int(free)-12, alloc.Free())
	require.Zero(t, m.NewPorts)

	// Exhaustion: fill the pool, then a range that does not fit fails
	// whole (allocating nothing) while ranges already allocated keep
	// their ports, whatever their order.
	ep3 := &policy.Endpoint{Index: 3, NetworkID: "m", Policy: &policy.Policy{Allows: []policy.Allowed{
		rangeAllow(6, "f.test", 1, 5, policy.SourceLabel),
		rangeAllow(7, "g.test", 1, 2, policy.SourceLabel),
	}}}
	full := NewPortAllocator()
	for i := 0; i < int(free)-3; i++ {
		_, _ = full.Port(DedicatedKey(policy.ProtoTCP, "h.test", uint16(i+1)))
	}
	hold := &policy.Endpoint{Index: 4, NetworkID: "m", Policy: &policy.Policy{Allows: []policy.Allowed{}}}
	for i := 0; i < int(free)-3; i += 200 {
		hi := min(i+200, int(free)-3)
		hold.Policy.Allows = append(hold.Policy.Allows, rangeAllow(policy.Identity(100+i), "h.test", uint16(i+1), uint16(hi), policy.SourceOption))
	}
	m, err = BuildWithLimits(snapWith(ep3, hold), full, Limits{PerContainer: 1000, PerNetwork: 1000})
	require.NoError(t, err)
	require.Equal(t, []Failure{{Identity: 6, Pattern: "f.test", Proto: policy.ProtoTCP, Lo: 1, Hi: 5, Rule: "label clawker.allow=f.test",
		Reason: FailExhausted, Detail: m.Failures[3][0].Detail}}, m.Failures[3], "the earlier endpoint's new range fails: held ports never move")
	require.Contains(t, m.Failures[3][0].Detail, "only 3")
	require.Len(t, m.Routes[3], 2, "g.test fits in what is left")
	require.Equal(t, 1, full.Free())
	require.Empty(t, m.Failures[4])
}

func TestWithoutListeners(t *testing.T) {
	alloc := NewPortAllocator()
	ep := &policy.Endpoint{Index: 1, Policy: &policy.Policy{Allows: []policy.Allowed{
		rangeAllow(1, "a.test", 22, 22, policy.SourceLabel),
		rangeAllow(2, "b.test", 23, 23, policy.SourceLabel),
	}}}
	snap := snapWith(ep)
	m, err := Build(snap, alloc)
	require.NoError(t, err)
	aPort := alloc.ports[DedicatedKey(policy.ProtoTCP, "a.test", 22)]
	l, ok := m.Listener(aPort)
	require.True(t, ok)
	out := m.WithoutListeners(snap, []BindFailure{{Listener: l, Err: "address already in use"}})
	require.Len(t, out.Routes[1], 1)
	require.Equal(t, uint16(23), out.Routes[1][0].Port)
	_, ok = out.Listener(aPort)
	require.False(t, ok)
	require.Len(t, out.Failures[1], 1)
	require.Equal(t, FailBind, out.Failures[1][0].Reason)
	require.Contains(t, out.Failures[1][0].String(), "address already in use")
	require.Len(t, m.Routes[1], 2, "the input model is not changed")
	tcp, _ := out.RoutePorts([]uint32{1})
	require.NotContains(t, tcp, aPort)
}

func TestCheckLimit(t *testing.T) {
	rules, err := policy.ParseLabels(map[string]string{"clawker.allow": "tcp://a.test:1-256,tcp://a.test:1000-1001,https://b.test,10.0.0.0/8"}, "")
	require.NoError(t, err)
	keys, err := RuleKeys(rules)
	require.NoError(t, err)
	require.Len(t, keys, 259, "256 + 2 dedicated, one web:443, none for the CIDR")
	err = CheckLimit(rules, 256, "a container")
	var le *LimitError
	require.ErrorAs(t, err, &le)
	require.Equal(t, "clawker.allow", le.Key)
	require.Equal(t, "tcp://a.test:1000-1001", le.Item)
	require.ErrorContains(t, err, "a container may use at most 256")
	require.NoError(t, CheckLimit(rules, 259, "a container"))
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

func TestSource(t *testing.T) {
	v4 := netip.MustParseAddr("10.231.4.2")
	for _, tt := range []struct {
		name string
		in   net.Addr
		want netip.Addr
	}{
		{"tcp", &net.TCPAddr{IP: net.IPv4(10, 231, 4, 2), Port: 40000}, v4},
		{"udp, 4-in-6 unmapped", &net.UDPAddr{IP: net.ParseIP("::ffff:10.231.4.2"), Port: 53}, v4},
		{"ipv6", &net.TCPAddr{IP: net.ParseIP("fd00::2"), Port: 1}, netip.MustParseAddr("fd00::2")},
		{"no port: none", &net.IPAddr{IP: net.IPv4(10, 231, 4, 2)}, netip.Addr{}},
		{"unix: none", &net.UnixAddr{Name: "/x", Net: "unix"}, netip.Addr{}},
		{"nil", nil, netip.Addr{}},
	} {
		t.Run(tt.name, func(t *testing.T) { require.Equal(t, tt.want, Source(tt.in)) })
	}
}

// TestBuildSameWithFreshOrHeldPorts: a Build that allocates its ports
// yields the model a second Build over the same allocator yields. The plugin
// serves the model of the Build that allocated (a mutation compiles once),
// so any difference is a route or listener missing from the served model.
func TestBuildSameWithFreshOrHeldPorts(t *testing.T) {
	pr := func(proto policy.Proto, lo, hi uint16) policy.PortRange {
		return policy.PortRange{Proto: proto, Lo: lo, Hi: hi}
	}
	allow := func(id policy.Identity, pattern string, ports ...policy.PortRange) policy.Allowed {
		a := policy.Allowed{Identity: id, Pattern: pattern, Ports: ports}
		if p, err := netip.ParsePrefix(pattern); err == nil {
			a.Prefix = p
		}
		return a
	}
	ep := func(idx uint32, allows ...policy.Allowed) *policy.Endpoint {
		return &policy.Endpoint{Index: idx, Policy: &policy.Policy{Allows: allows}}
	}
	for _, tt := range []struct {
		name string
		eps  []*policy.Endpoint
	}{
		{"names sharing new web ports", []*policy.Endpoint{ep(1,
			allow(1, "a.example.test", pr(policy.ProtoHTTPS, 443, 443), pr(policy.ProtoHTTP, 80, 80)),
			allow(2, ".wild.example.test", pr(policy.ProtoHTTPS, 443, 443), pr(policy.ProtoHTTPS, 8443, 8443)),
			allow(3, "b.example.test", pr(policy.ProtoHTTP, 80, 80), pr(policy.ProtoHTTPS, 8443, 8443)))}},
		{"dedicated listeners, ranges and CIDRs", []*policy.Endpoint{ep(1,
			allow(1, "db.example.test", pr(policy.ProtoTCP, 5432, 5432), pr(policy.ProtoHTTPS, 443, 443)),
			allow(2, "git.example.test", pr(policy.ProtoSSH, 22, 22)),
			allow(3, "ntp.example.test", pr(policy.ProtoUDP, 123, 123)),
			allow(4, "span.example.test", pr(policy.ProtoTCP, 7000, 7003)),
			allow(5, "10.9.0.0/16", pr(policy.ProtoTCP, 7000, 7002)))}},
		{"endpoints sharing keys", []*policy.Endpoint{
			ep(1, allow(1, "a.example.test", pr(policy.ProtoHTTPS, 443, 443)), allow(2, "db.example.test", pr(policy.ProtoTCP, 5432, 5432))),
			ep(2, allow(1, "a.example.test", pr(policy.ProtoHTTPS, 443, 443)), allow(3, "c.example.test", pr(policy.ProtoHTTPS, 443, 443))),
			ep(3, allow(2, "db.example.test", pr(policy.ProtoTCP, 5432, 5432), pr(policy.ProtoTCP, 5433, 5434)))}},
		{"a range over its budget fails alone", []*policy.Endpoint{ep(1,
			allow(1, "wide.example.test", pr(policy.ProtoTCP, 20000, 20000+MaxRangePorts)),
			allow(2, "a.example.test", pr(policy.ProtoHTTPS, 443, 443)),
			allow(3, "b.example.test", pr(policy.ProtoHTTPS, 443, 443)))}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			alloc := NewPortAllocator()
			first, err := Build(snapWith(tt.eps...), alloc)
			require.NoError(t, err)
			require.NotZero(t, first.NewPorts)
			again, err := Build(snapWith(tt.eps...), alloc)
			require.NoError(t, err)
			require.Zero(t, again.NewPorts)
			first.NewPorts = 0
			require.Equal(t, again, first)
		})
	}
}
