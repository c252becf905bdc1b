package envoy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/ca"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// fixedNow is the clock of every translation in these tests.
var fixedNow = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func https(lo, hi uint16) policy.PortRange {
	return policy.PortRange{Proto: policy.ProtoHTTPS, Lo: lo, Hi: hi}
}

func rng(p policy.Proto, lo, hi uint16) policy.PortRange {
	return policy.PortRange{Proto: p, Lo: lo, Hi: hi}
}

// Endpoint addresses of the comprehensive fixture.
var (
	ipA      = netip.MustParseAddr("10.99.0.2") // many rules
	ipB      = netip.MustParseAddr("10.99.0.3") // wildcard over the whole zone, inspected, one deny
	ipPend   = netip.MustParseAddr("10.99.0.4") // pending: no policy yet
	ipBypass = netip.MustParseAddr("10.99.0.5") // bypassed
	ipLabel  = netip.MustParseAddr("10.99.0.6") // bad label: nothing allowed
)

// comprehensive is a policy snapshot with exact, wildcard, deny and path
// rules, inspection, ssh, a tcp range, udp, a CIDR rule, and pending,
// bypassed and bad-label endpoints.
func comprehensive() *policy.Snapshot {
	polA := &policy.Policy{
		Generation: 7,
		Allows: []policy.Allowed{
			{Identity: 1, Pattern: "api.example.test", Ports: []policy.PortRange{https(443, 443)}},
			{
				Identity: 2, Pattern: "git.example.test", Ports: []policy.PortRange{https(443, 443)},
				Paths: []policy.PathRule{
					{Path: "/repos/", Methods: []string{"GET", "HEAD"}},
					{Path: "~^/v[0-9]+/admin", Action: policy.Deny},
					{Path: "/api/", Action: policy.Allow},
				},
				PathDefault: policy.Deny,
				Inspect:     true,
			},
			{Identity: 5, Pattern: "plain.example.test", Ports: []policy.PortRange{rng(policy.ProtoHTTP, 80, 80)}},
			{Identity: 6, Pattern: "db.example.test", Ports: []policy.PortRange{rng(policy.ProtoTCP, 5432, 5433)}},
			{Identity: 7, Pattern: "ssh.example.test", Ports: []policy.PortRange{rng(policy.ProtoSSH, 22, 22)}},
			{Identity: 8, Pattern: "dns.example.test", Ports: []policy.PortRange{rng(policy.ProtoUDP, 5353, 5353)}},
			{Identity: 3, Pattern: ".npm.example.test", Ports: []policy.PortRange{https(443, 443), rng(policy.ProtoHTTP, 80, 80)}},
			{Identity: 9, Pattern: "10.50.0.0/16", Prefix: netip.MustParsePrefix("10.50.0.0/16"), Ports: []policy.PortRange{rng(policy.ProtoTCP, 8080, 8080)}},
		},
		Denies: []policy.Denied{{Pattern: "bad.npm.example.test"}},
	}
	polB := &policy.Policy{
		Generation: 7,
		Allows: []policy.Allowed{
			{Identity: 4, Pattern: ".example.test", Ports: []policy.PortRange{https(443, 443)}, Inspect: true},
		},
		Denies: []policy.Denied{{Pattern: "api.example.test"}},
	}
	net1 := &policy.Network{
		ID: "net1", Name: "agents", Bridge: "clawker0",
		Subnet: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
	}
	snap := &policy.Snapshot{
		Generation: 7,
		Networks:   map[string]*policy.Network{"net1": net1},
		Endpoints: map[uint32]*policy.Endpoint{
			1: {Index: 1, ID: "ep1", NetworkID: "net1", IP: ipA, ContainerName: "agent-a", Policy: polA},
			2: {Index: 2, ID: "ep2", NetworkID: "net1", IP: ipB, ContainerName: "agent-b", Policy: polB},
			3: {Index: 3, ID: "ep3", NetworkID: "net1", IP: ipPend, Pending: true},
			4: {Index: 4, ID: "ep4", NetworkID: "net1", IP: ipBypass, ContainerName: "debug", Policy: &policy.Policy{},
				BypassUntil: fixedNow.Add(time.Hour)},
			5: {Index: 5, ID: "ep5", NetworkID: "net1", IP: ipLabel, ContainerName: "broken", Policy: polB,
				LabelError: `clawker.allow: bad rule "x:y:z"`},
		},
	}
	return snap.Index()
}

func buildModel(t testing.TB, snap *policy.Snapshot) *model.Model {
	t.Helper()
	m, err := model.Build(snap, model.NewPortAllocator())
	require.NoError(t, err)
	return m
}

func testCA(t testing.TB) *ca.CA {
	t.Helper()
	c, err := ca.Open(t.TempDir(), ca.WithClock(func() time.Time { return fixedNow }))
	require.NoError(t, err)
	return c
}

func testOptions(t testing.TB) Options {
	return Options{
		BindAddress:   "127.0.0.1",
		Certs:         testCA(t),
		TrustedCAFile: "/etc/ssl/certs/ca-certificates.crt",
		Now:           func() time.Time { return fixedNow },
	}
}
