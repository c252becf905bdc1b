package verdict_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
	"github.com/clawker-fw/clawker-fw/proxy/verdict/verdicttest"
)

// TestTable decides every row of the shared table.
func TestTable(t *testing.T) {
	snap, err := verdicttest.Snapshot()
	require.NoError(t, err)
	reasons := map[policy.Reason]bool{}
	modes := map[verdict.Mode]bool{}
	for _, row := range verdicttest.Rows() {
		t.Run(row.Name, func(t *testing.T) {
			v := verdict.Decide(row.FlowIn(snap))
			require.Equal(t, row.Want, verdicttest.Of(v), "detail %q", v.Detail)
			if v.Allowed {
				require.Empty(t, v.Fix)
				require.NotEmpty(t, v.Mode)
				modes[v.Mode] = true
			} else {
				require.NotEmpty(t, v.Fix, "every denial says what to do")
				require.Empty(t, v.Mode)
				reasons[v.Reason] = true
			}
		})
	}
	// The table has a row for every reason and mode Decide gives.
	for _, r := range []policy.Reason{policy.ReasonNoRule, policy.ReasonDenyRule, policy.ReasonPortNotAllow, policy.ReasonPath,
		policy.ReasonPending, policy.ReasonBadLabel, policy.ReasonUnknownPeer, verdict.ReasonProtoMismatch,
		verdict.ReasonDomainFronting, verdict.ReasonECH, verdict.ReasonUpgrade} {
		require.True(t, reasons[r], "no row denies with %s", r)
	}
	for _, m := range []verdict.Mode{verdict.ModePassthrough, verdict.ModeInspect, verdict.ModeHTTP, verdict.ModeTCP, verdict.ModeUDP, verdict.ModeIP} {
		require.True(t, modes[m], "no row allows in mode %s", m)
	}
}

// The rule that decided is named, with its provenance.
func TestRuleAndFix(t *testing.T) {
	snap, err := verdicttest.Snapshot()
	require.NoError(t, err)
	who := snap.WhoIs(verdicttest.A, verdicttest.Now)
	tls := func(name string, port uint16) verdict.Verdict {
		return verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Content: verdict.TLS, Name: name, Port: port})
	}

	v := tls("x.npm.example.test", 443)
	require.Equal(t, ".npm.example.test", v.Pattern)
	require.Equal(t, "option clawker.allow=.npm.example.test", v.Rule)
	require.NotNil(t, v.Entry)

	v = tls("x.bad.npm.example.test", 443)
	require.Equal(t, "bad.npm.example.test", v.Pattern)
	require.Equal(t, "a deny rule (option clawker.deny=bad.npm.example.test) covers x.bad.npm.example.test; remove it to allow", v.Fix)

	v = tls("other.example.test", 8443)
	require.Equal(t, "allow it with the container label clawker.allow=other.example.test:8443, the network option -o clawker.allow=other.example.test:8443, or `clawker-fw rules add agents other.example.test:8443`", v.Fix,
		"the fix names the asker's network")
	nameless := who
	nameless.Network = ""
	v = verdict.Decide(verdict.Flow{Who: nameless, Listener: verdict.Web, Content: verdict.TLS, Name: "other.example.test", Port: 8443})
	require.Contains(t, v.Fix, "`clawker-fw rules add NETWORK other.example.test:8443`", "no network known: a placeholder")

	v = verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Content: verdict.HTTP, Port: 443,
		Request: &verdict.Request{Host: "git.example.test", TLSName: "git.example.test", Method: "GET", Path: "/admin/x", AsSent: true}})
	require.Equal(t, policy.ReasonPath, v.Reason)
	require.Contains(t, v.Fix, "the request path is denied by")
	require.Contains(t, v.Fix, "label clawker.rules=")

	v = verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Content: verdict.HTTP, Port: 443,
		Request: &verdict.Request{Host: "git.example.test", TLSName: "git.example.test", Method: "GET", Path: "/repos//../admin"}})
	require.False(t, v.Allowed, "a path that cannot be forwarded as sent is refused where path rules apply")
	require.Equal(t, policy.ReasonPath, v.Reason)

	v = verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Content: verdict.HTTP, Port: 80,
		Request: &verdict.Request{Host: "plain.example.test", Method: "GET", Opaque: true}})
	require.Equal(t, verdict.ReasonBadRequest, v.Reason)

	v = verdict.Decide(verdict.Flow{Who: snap.WhoIs(verdicttest.Label, verdicttest.Now), Listener: verdict.Web, Content: verdict.TLS, Name: "api.example.test", Port: 443})
	require.Equal(t, `clawker.allow: "x:y:z": bad port`, v.Detail)
	require.Contains(t, v.Fix, `clawker.allow: "x:y:z": bad port`)

	// Unknown input fails closed.
	require.False(t, verdict.Decide(verdict.Flow{}).Allowed)
	require.False(t, verdict.Decide(verdict.Flow{Who: who, Listener: "mystery", Name: "api.example.test", Port: 443}).Allowed)
	require.False(t, verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Name: "api.example.test", Port: 443}).Allowed,
		"a web flow is decided only once its content is read")
	require.False(t, verdict.Decide(verdict.Flow{Who: who, Listener: verdict.Web, Content: verdict.HTTP, Port: 80}).Allowed)
}

func TestItem(t *testing.T) {
	for _, tt := range []struct {
		dest  string
		port  uint16
		proto policy.Proto
		l4    policy.L4
		want  string
	}{
		{"api.example.test", 0, "", 0, "api.example.test"},
		{"api.example.test", 443, policy.ProtoHTTPS, policy.L4TCP, "api.example.test"},
		{"api.example.test", 8443, policy.ProtoHTTPS, policy.L4TCP, "api.example.test:8443"},
		{"api.example.test", 80, "", policy.L4TCP, "http://api.example.test"},
		{"api.example.test", 80, policy.ProtoHTTP, policy.L4TCP, "http://api.example.test"},
		{"api.example.test", 8080, policy.ProtoHTTP, policy.L4TCP, "http://api.example.test:8080"},
		{"git.example.test", 22, policy.ProtoSSH, policy.L4TCP, "ssh://git.example.test"},
		{"db.example.test", 5432, policy.ProtoTCP, policy.L4TCP, "tcp://db.example.test:5432"},
		{"ntp.example.test", 123, policy.ProtoUDP, policy.L4UDP, "udp://ntp.example.test:123"},
		{"192.0.2.7", 443, "", policy.L4TCP, "tcp://192.0.2.7:443"},
		{"192.0.2.7", 53, "", policy.L4UDP, "udp://192.0.2.7:53"},
	} {
		require.Equal(t, tt.want, verdict.Item(tt.dest, tt.port, tt.proto, tt.l4))
		// Every suggested item is a rule the parser accepts.
		_, err := policy.ParseCompact(tt.want, policy.Allow)
		require.NoError(t, err, tt.want)
	}
	require.Contains(t, verdict.Fix(verdict.Denial{Dest: "x.test", Port: 443, Network: "agents"}), "`clawker-fw rules add agents x.test`")
}

// Every reason has its own text; only the allow-suggesting reasons suggest
// a rule.
func TestFixTexts(t *testing.T) {
	generic := verdict.Fix(verdict.Denial{Dest: "x.test", Port: 443, Reason: policy.ReasonNoRule})
	require.Contains(t, generic, "clawker.allow=x.test")
	require.Equal(t, generic, verdict.Fix(verdict.Denial{Dest: "x.test", Port: 443, Reason: policy.ReasonPortNotAllow}))
	seen := map[string]policy.Reason{}
	for _, r := range []policy.Reason{policy.ReasonDenyRule, policy.ReasonBadLabel, policy.ReasonPending, policy.ReasonUnknownPeer,
		policy.ReasonPath, verdict.ReasonPrivateUpstream, verdict.ReasonDomainFronting, verdict.ReasonHostLocal, verdict.ReasonECH,
		verdict.ReasonUpgrade, verdict.ReasonNoSNI, verdict.ReasonSniffFailed, verdict.ReasonBadRequest, verdict.ReasonNoInspection,
		verdict.ReasonUpstream, verdict.ReasonConnLimit} {
		fix := verdict.Fix(verdict.Denial{Dest: "x.test", Port: 443, Reason: r, Rule: "label clawker.deny=x.test", Detail: "d"})
		require.NotEqual(t, generic, fix, r)
		require.NotContains(t, fix, "clawker.allow=", "%s: no allow rule lifts it", r)
		prev, dup := seen[fix]
		require.False(t, dup, "%s and %s share a text", r, prev)
		seen[fix] = r
	}
	require.True(t, strings.HasPrefix(verdict.Fix(verdict.Denial{Dest: "x.test", Port: 443, Reason: verdict.ReasonProtoMismatch, Rule: "r"}),
		"the rule (r) allows another protocol on this port; allow it with"))
}

func TestSpecial(t *testing.T) {
	require.Len(t, verdict.Special(), 16)
	for _, a := range []string{"0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.169.254", "172.17.0.1", "192.0.0.8",
		"192.168.1.1", "198.18.0.1", "224.0.0.1", "255.255.255.255", "::", "::1", "fd00::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1"} {
		require.True(t, verdict.IsSpecial(netip.MustParseAddr(a)), a)
	}
	for _, a := range []string{"1.1.1.1", "192.0.2.7", "8.8.8.8", "2001:db8::1", "11.0.0.1", "172.32.0.1", "100.128.0.1"} {
		require.False(t, verdict.IsSpecial(netip.MustParseAddr(a)), a)
	}
	s := verdict.Special()
	s[0] = netip.MustParsePrefix("1.0.0.0/8")
	require.False(t, verdict.IsSpecial(netip.MustParseAddr("1.1.1.1")), "Special returns a copy")
}

func TestUpstream(t *testing.T) {
	snap, err := verdicttest.Snapshot()
	require.NoError(t, err)
	polA := snap.WhoIs(verdicttest.A, verdicttest.Now).Policy
	bypass := snap.WhoIs(verdicttest.Bypass, verdicttest.Now).Policy
	ip := netip.MustParseAddr
	for _, tt := range []struct {
		name    string
		pol     *policy.Policy
		addr    string
		port    uint16
		local   bool
		private []netip.Prefix
		want    policy.Reason
	}{
		{"public", polA, "192.0.2.10", 443, false, nil, ""},
		{"private", polA, "10.1.2.3", 443, false, nil, verdict.ReasonPrivateUpstream},
		{"private, operator exemption", polA, "10.1.2.3", 443, false, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{"private, CIDR rule", polA, "10.50.1.2", 443, false, nil, ""},
		{"private, CIDR rule on another port", polA, "10.50.1.2", 80, false, nil, verdict.ReasonPrivateUpstream},
		{"CIDR deny wins", polA, "10.50.9.9", 443, false, nil, policy.ReasonDenyRule},
		{"CIDR deny wins over exemption", polA, "10.50.9.9", 443, false, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, policy.ReasonDenyRule},
		{"host-local", polA, "192.0.2.10", 443, true, nil, verdict.ReasonHostLocal},
		{"host-local, exemption does not open the host", polA, "10.1.2.3", 443, true, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, verdict.ReasonHostLocal},
		{"host-local, named by a CIDR rule", polA, "10.50.1.2", 443, true, nil, ""},
		{"bypass, public", bypass, "192.0.2.10", 443, false, nil, ""},
		{"bypass, private", bypass, "10.1.2.3", 443, false, nil, verdict.ReasonPrivateUpstream},
		{"bypass, host-local", bypass, "192.0.2.10", 443, true, nil, verdict.ReasonHostLocal},
		{"mapped private", polA, "::ffff:10.1.2.3", 443, false, nil, verdict.ReasonPrivateUpstream},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, verdict.Upstream(tt.pol, ip(tt.addr), tt.port, policy.L4TCP, tt.local, tt.private))
		})
	}
}

func TestInspects(t *testing.T) {
	e := &policy.Allowed{}
	require.False(t, verdict.Inspects(&policy.Policy{}, e, policy.ProtoHTTPS))
	require.True(t, verdict.Inspects(&policy.Policy{InspectAll: true}, e, policy.ProtoHTTPS))
	require.False(t, verdict.Inspects(&policy.Policy{InspectAll: true}, e, policy.ProtoTCP), "tcp is spliced")
	require.False(t, verdict.Inspects(&policy.Policy{InspectAll: true}, e, policy.ProtoHTTP))
	require.True(t, verdict.Inspects(nil, &policy.Allowed{Inspect: true}, policy.ProtoHTTPS))
	require.True(t, verdict.Inspects(nil, &policy.Allowed{Paths: []policy.PathRule{{Path: "/x"}}}, policy.ProtoHTTPS))
	require.False(t, verdict.Inspects(&policy.Policy{InspectAll: true}, nil, policy.ProtoHTTPS))
}

// DecideHost is Decide before the path rules: the host's verdict, with the
// entry whose path rules the Envoy translation renders as routes.
func TestDecideHost(t *testing.T) {
	snap, err := verdicttest.Snapshot()
	require.NoError(t, err)
	f := verdict.Flow{Who: snap.WhoIs(verdicttest.A, verdicttest.Now), Listener: verdict.Web, Content: verdict.HTTP, Port: 443,
		Request: &verdict.Request{Host: "git.example.test", TLSName: "git.example.test", Method: "POST", Path: "/admin"}}
	require.False(t, verdict.Decide(f).Allowed)
	v := verdict.DecideHost(f)
	require.True(t, v.Allowed)
	require.Equal(t, verdict.ModeInspect, v.Mode)
	require.NotEmpty(t, v.Entry.Paths)
	f.Request.Host, f.Request.TLSName = "bad.npm.example.test", "bad.npm.example.test"
	require.Equal(t, policy.ReasonDenyRule, verdict.DecideHost(f).Reason)
}

// TestLearnNamesTransparentFlows: under learn mode (a bypass) a redirected
// flow whose content names it is carried by that name (passthrough, or
// inspect where the network inspects), so the recorder sees the name; a
// flow without a name, and every flow under a plain bypass, is carried by
// address.
func TestLearnNamesTransparentFlows(t *testing.T) {
	addr := netip.MustParseAddr("10.220.0.10")
	ep := &policy.Endpoint{Index: 1}
	who := func(p *policy.Policy) policy.Who {
		return policy.Who{Endpoint: ep, Policy: p, State: policy.ReasonBypass}
	}
	tls := func(p *policy.Policy, name string) verdict.Flow {
		return verdict.Flow{Who: who(p), Listener: verdict.Transparent, Addr: addr, Port: 443, L4: policy.L4TCP, Content: verdict.TLS, Name: name}
	}
	learn := &policy.Policy{AllowAll: true, Learn: true}
	learnInspect := &policy.Policy{AllowAll: true, Learn: true, InspectAll: true}
	bypass := &policy.Policy{AllowAll: true}
	for _, tc := range []struct {
		name string
		f    verdict.Flow
		mode verdict.Mode
	}{
		{"learn, TLS with a name", tls(learn, "allowed.example.test"), verdict.ModePassthrough},
		{"learn on an inspecting network", tls(learnInspect, "allowed.example.test"), verdict.ModeInspect},
		{"learn, TLS without a name", tls(learn, ""), verdict.ModeIP},
		{"learn, nothing read", verdict.Flow{Who: who(learn), Listener: verdict.Transparent, Addr: addr, Port: 22, L4: policy.L4TCP}, verdict.ModeIP},
		{"learn, an HTTP request", verdict.Flow{Who: who(learn), Listener: verdict.Transparent, Addr: addr, Port: 80, L4: policy.L4TCP, Content: verdict.HTTP,
			Request: &verdict.Request{Host: "path.example.test", Method: "GET", Path: "/x", AsSent: true}}, verdict.ModeHTTP},
		{"plain bypass, TLS with a name", tls(bypass, "allowed.example.test"), verdict.ModeIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := verdict.Decide(tc.f)
			require.True(t, v.Allowed)
			require.Equal(t, tc.mode, v.Mode)
		})
	}
}
