// Package verdicttest is the shared table of the proxy verdict: one snapshot
// of endpoints in every state (rules of every kind, inspect-all, pending,
// bypassed, bad labels, unknown) and rows of flows with the verdict both
// engines must reach. proxy/verdict's tests run it against Decide, the
// builtin engine's against its connections, and proxy/envoy's differential
// test against an evaluator of the generated xDS resources.
package verdicttest

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Now is the clock of the table (bypasses run until an hour after it).
var Now = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// Endpoint addresses of the table's snapshot.
var (
	A       = netip.MustParseAddr("10.99.0.2")   // many rules (network options + labels)
	B       = netip.MustParseAddr("10.99.0.3")   // a wildcard over the zone on an inspect-all network, one deny
	Pending = netip.MustParseAddr("10.99.0.4")   // container not identified yet
	Bypass  = netip.MustParseAddr("10.99.0.5")   // bypassed
	Label   = netip.MustParseAddr("10.99.0.6")   // bad labels (with rules that would allow)
	Unknown = netip.MustParseAddr("10.99.0.200") // no endpoint
)

// NetworkOptions and Labels are the rules of endpoint A, as users write
// them; B's network is NetworkB.
var (
	NetworkOptions = map[string]string{
		"clawker.allow": "api.example.test, .npm.example.test, http://.npm.example.test, https://alt.example.test:8443, " +
			"http://plain.example.test, ssh://ssh.example.test, tcp://db.example.test:5432, udp://ntp.example.test:123, " +
			"10.50.0.0/16, tcp://10.60.0.7:5432",
		"clawker.deny": "bad.npm.example.test, 10.50.9.0/24",
	}
	Labels = map[string]string{
		"clawker.rules": `[{"dst":"git.example.test","paths":[{"path":"/repos/","methods":["GET"]},{"path":"/admin","action":"deny"}]},` +
			`{"dst":"inspect.example.test","inspect":true}]`,
	}
	NetworkB = map[string]string{
		"clawker.allow":       ".example.test",
		"clawker.deny":        "api.example.test",
		"clawker.tls.inspect": "all",
	}
)

// Snapshot compiles the table's snapshot (indexed).
func Snapshot() (*policy.Snapshot, error) {
	ids := policy.NewIdentityTable()
	netA, err := policy.ParseNetworkOptions(NetworkOptions, "netA")
	if err != nil {
		return nil, err
	}
	labels, err := policy.ParseLabels(Labels, "ctrA")
	if err != nil {
		return nil, err
	}
	polA, err := policy.Compile(policy.CompileInput{Network: netA.Rules, Label: labels, Settings: netA.Settings, Generation: 3}, ids)
	if err != nil {
		return nil, err
	}
	netB, err := policy.ParseNetworkOptions(NetworkB, "netB")
	if err != nil {
		return nil, err
	}
	polB, err := policy.Compile(policy.CompileInput{Network: netB.Rules, Settings: netB.Settings, Generation: 3}, ids)
	if err != nil {
		return nil, err
	}
	subnet, gw := netip.MustParsePrefix("10.99.0.0/24"), netip.MustParseAddr("10.99.0.1")
	snap := &policy.Snapshot{
		Generation: 3,
		Networks: map[string]*policy.Network{
			"netA": {ID: "netA", Name: "agents", Bridge: "cfw-a", Subnet: subnet, Gateway: gw, Settings: netA.Settings},
			"netB": {ID: "netB", Name: "inspected", Bridge: "cfw-b", Subnet: subnet, Gateway: gw, Settings: netB.Settings},
		},
		Endpoints: map[uint32]*policy.Endpoint{
			1: {Index: 1, ID: "ep1", NetworkID: "netA", IP: A, ContainerID: "ctrA", ContainerName: "agent-a", Policy: polA},
			2: {Index: 2, ID: "ep2", NetworkID: "netB", IP: B, ContainerID: "ctrB", ContainerName: "agent-b", Policy: polB},
			3: {Index: 3, ID: "ep3", NetworkID: "netA", IP: Pending, Pending: true},
			4: {Index: 4, ID: "ep4", NetworkID: "netA", IP: Bypass, ContainerName: "debug", Policy: polA, BypassUntil: Now.Add(time.Hour)},
			5: {Index: 5, ID: "ep5", NetworkID: "netA", IP: Label, ContainerName: "broken", Policy: polA,
				LabelError: `clawker.allow: "x:y:z": bad port`},
		},
	}
	return snap.Index(), nil
}

// Want is the part of a verdict both engines must agree on.
type Want struct {
	Allowed bool
	Mode    verdict.Mode
	Reason  policy.Reason
}

func (w Want) String() string {
	if w.Allowed {
		return fmt.Sprintf("allow %s (%s)", w.Mode, w.Reason)
	}
	return "deny " + string(w.Reason)
}

// Of is the Want of a verdict.
func Of(v verdict.Verdict) Want { return Want{Allowed: v.Allowed, Mode: v.Mode, Reason: v.Reason} }

// Row is one flow of the table. Flow.Who is filled from the snapshot by
// the source address (Src).
type Row struct {
	Name string
	Src  netip.Addr
	Flow verdict.Flow
	Want Want
	// BuiltinOnly says why the Envoy engine does not take this decision
	// itself ("" when both engines must agree): the transparent listener
	// is served by the builtin engine whichever engine is selected, and a
	// few refusals exist only there (docs: proxy/envoy/README.md).
	BuiltinOnly string
}

func tlsFlow(name string, port uint16) verdict.Flow {
	return verdict.Flow{Listener: verdict.Web, Content: verdict.TLS, Name: name, Port: port, L4: policy.L4TCP}
}

func httpFlow(port uint16, host, method, path, sni string) verdict.Flow {
	return verdict.Flow{Listener: verdict.Web, Content: verdict.HTTP, Port: port, L4: policy.L4TCP,
		Request: &verdict.Request{Host: host, Method: method, Path: path, TLSName: sni, AsSent: true}}
}

func dedicated(proto policy.Proto, name string, port uint16) verdict.Flow {
	return verdict.Flow{Listener: verdict.Dedicated, Proto: proto, Name: name, Port: port, L4: proto.L4()}
}

func transparent(addr string, port uint16) verdict.Flow {
	return verdict.Flow{Listener: verdict.Transparent, Addr: netip.MustParseAddr(addr), Port: port, L4: policy.L4TCP}
}

func allow(mode verdict.Mode) Want {
	return Want{Allowed: true, Mode: mode, Reason: policy.ReasonAllowed}
}
func bypass(mode verdict.Mode) Want {
	return Want{Allowed: true, Mode: mode, Reason: policy.ReasonBypass}
}
func deny(reason policy.Reason) Want                            { return Want{Reason: reason} }
func with(f verdict.Flow, mod func(*verdict.Flow)) verdict.Flow { mod(&f); return f }

const (
	transparentOnly = "the transparent listener (IP and CIDR rules, redirected flows) is served by the builtin engine with either engine"
	echOnly         = "the ECH refusal exists in the builtin engine only (Envoy reads no ECH extension)"
	frontingOnly    = "Envoy decides an inspected request's Host by its own rule; only the builtin engine refuses a Host that differs from the SNI"
	noSNIOnly       = "Envoy cannot tell a ClientHello without a server name from one whose name no rule names: both reach its default chain (no-rule)"
	tunnelOnly      = "Envoy refuses upgrades in its connection manager (one websocket upgrade config, no CONNECT route), not per route"
)

// Rows is the table: a row for every reason and mode of the proxy verdict
// over names, wildcards, denies, CIDRs, ports, path rules, inspection, bad
// labels, pending endpoints, bypass and unknown sources.
func Rows() []Row {
	get := func(p string) verdict.Flow { return httpFlow(80, "plain.example.test", "GET", p, "") }
	return []Row{
		// Names and wildcards, TLS on a web port.
		{Name: "exact name passthrough", Src: A, Flow: tlsFlow("api.example.test", 443), Want: allow(verdict.ModePassthrough)},
		{Name: "wildcard apex", Src: A, Flow: tlsFlow("npm.example.test", 443), Want: allow(verdict.ModePassthrough)},
		{Name: "wildcard child", Src: A, Flow: tlsFlow("x.npm.example.test", 443), Want: allow(verdict.ModePassthrough)},
		{Name: "wildcard grandchild", Src: A, Flow: tlsFlow("a.b.npm.example.test", 443), Want: allow(verdict.ModePassthrough)},
		{Name: "deny under wildcard", Src: A, Flow: tlsFlow("bad.npm.example.test", 443), Want: deny(policy.ReasonDenyRule)},
		{Name: "deny covers subtree", Src: A, Flow: tlsFlow("x.bad.npm.example.test", 443), Want: deny(policy.ReasonDenyRule)},
		{Name: "no rule", Src: A, Flow: tlsFlow("other.example.test", 443), Want: deny(policy.ReasonNoRule)},
		{Name: "no rule other zone", Src: A, Flow: tlsFlow("unrelated.org", 443), Want: deny(policy.ReasonNoRule)},
		{Name: "no SNI", Src: A, Flow: tlsFlow("", 443), Want: deny(verdict.ReasonNoSNI), BuiltinOnly: noSNIOnly},
		{Name: "https on another port", Src: A, Flow: tlsFlow("alt.example.test", 8443), Want: allow(verdict.ModePassthrough)},
		{Name: "port not allowed", Src: A, Flow: tlsFlow("alt.example.test", 443), Want: deny(policy.ReasonPortNotAllow)},
		{Name: "port not allowed for the other name", Src: A, Flow: tlsFlow("api.example.test", 8443), Want: deny(policy.ReasonPortNotAllow)},
		{Name: "TLS to a plain-http rule", Src: A, Flow: tlsFlow("plain.example.test", 80), Want: deny(verdict.ReasonProtoMismatch)},
		{Name: "TLS to a plain-http name on 443", Src: A, Flow: tlsFlow("plain.example.test", 443), Want: deny(policy.ReasonPortNotAllow)},
		{Name: "ECH on passthrough", Src: A, Flow: with(tlsFlow("api.example.test", 443), func(f *verdict.Flow) { f.ECH = 0xfe0d }),
			Want: deny(verdict.ReasonECH), BuiltinOnly: echOnly},
		// Inspection.
		{Name: "path rules inspect", Src: A, Flow: tlsFlow("git.example.test", 443), Want: allow(verdict.ModeInspect)},
		{Name: "inspect rule", Src: A, Flow: tlsFlow("inspect.example.test", 443), Want: allow(verdict.ModeInspect)},
		{Name: "ECH under inspection is read", Src: A, Flow: with(tlsFlow("inspect.example.test", 443), func(f *verdict.Flow) { f.ECH = 0xfe0d }),
			Want: allow(verdict.ModeInspect)},
		{Name: "inspect all", Src: B, Flow: tlsFlow("foo.example.test", 443), Want: allow(verdict.ModeInspect)},
		{Name: "inspect all apex", Src: B, Flow: tlsFlow("example.test", 443), Want: allow(verdict.ModeInspect)},
		{Name: "deny on inspect-all network", Src: B, Flow: tlsFlow("api.example.test", 443), Want: deny(policy.ReasonDenyRule)},
		{Name: "per-endpoint: A's deny is not B's", Src: B, Flow: tlsFlow("bad.npm.example.test", 443), Want: allow(verdict.ModeInspect)},
		// Requests under inspection.
		{Name: "path allowed", Src: A, Flow: httpFlow(443, "git.example.test", "GET", "/repos/x/y", "git.example.test"), Want: allow(verdict.ModeInspect)},
		{Name: "method denied", Src: A, Flow: httpFlow(443, "git.example.test", "POST", "/repos/x", "git.example.test"), Want: deny(policy.ReasonPath)},
		{Name: "deny path", Src: A, Flow: httpFlow(443, "git.example.test", "GET", "/admin/users", "git.example.test"), Want: deny(policy.ReasonPath)},
		{Name: "path default", Src: A, Flow: httpFlow(443, "git.example.test", "GET", "/", "git.example.test"), Want: deny(policy.ReasonPath)},
		{Name: "inspected, no path rules", Src: A, Flow: httpFlow(443, "inspect.example.test", "POST", "/x", "inspect.example.test"), Want: allow(verdict.ModeInspect)},
		{Name: "inspect-all request", Src: B, Flow: httpFlow(443, "foo.example.test", "GET", "/", "foo.example.test"), Want: allow(verdict.ModeInspect)},
		{Name: "domain fronting", Src: A, Flow: httpFlow(443, "api.example.test", "GET", "/", "git.example.test"),
			Want: deny(verdict.ReasonDomainFronting), BuiltinOnly: frontingOnly},
		// Plain HTTP.
		{Name: "plain http", Src: A, Flow: get("/"), Want: allow(verdict.ModeHTTP)},
		{Name: "plain http wildcard", Src: A, Flow: httpFlow(80, "x.npm.example.test", "GET", "/", ""), Want: allow(verdict.ModeHTTP)},
		{Name: "plain http deny", Src: A, Flow: httpFlow(80, "bad.npm.example.test", "GET", "/", ""), Want: deny(policy.ReasonDenyRule)},
		{Name: "plain http port", Src: A, Flow: httpFlow(80, "api.example.test", "GET", "/", ""), Want: deny(policy.ReasonPortNotAllow)},
		{Name: "plain http no rule", Src: A, Flow: httpFlow(80, "nothing.org", "GET", "/", ""), Want: deny(policy.ReasonNoRule)},
		{Name: "plain http to an https rule", Src: A, Flow: httpFlow(443, "api.example.test", "GET", "/", ""), Want: deny(verdict.ReasonProtoMismatch)},
		{Name: "tunnel refused", Src: A, Flow: with(get("/"), func(f *verdict.Flow) { f.Request.Tunnel = "CONNECT is refused" }),
			Want: deny(verdict.ReasonUpgrade), BuiltinOnly: tunnelOnly},
		// Who is asking.
		{Name: "pending tls", Src: Pending, Flow: tlsFlow("api.example.test", 443), Want: deny(policy.ReasonPending)},
		{Name: "pending http", Src: Pending, Flow: get("/"), Want: deny(policy.ReasonPending)},
		{Name: "pending dedicated", Src: Pending, Flow: dedicated(policy.ProtoTCP, "db.example.test", 5432), Want: deny(policy.ReasonPending)},
		{Name: "bad label tls", Src: Label, Flow: tlsFlow("api.example.test", 443), Want: deny(policy.ReasonBadLabel)},
		{Name: "bad label http", Src: Label, Flow: get("/"), Want: deny(policy.ReasonBadLabel)},
		{Name: "bad label dedicated", Src: Label, Flow: dedicated(policy.ProtoSSH, "ssh.example.test", 22), Want: deny(policy.ReasonBadLabel)},
		{Name: "unknown tls", Src: Unknown, Flow: tlsFlow("api.example.test", 443), Want: deny(policy.ReasonUnknownPeer)},
		{Name: "unknown http", Src: Unknown, Flow: get("/"), Want: deny(policy.ReasonUnknownPeer)},
		{Name: "unknown dedicated", Src: Unknown, Flow: dedicated(policy.ProtoTCP, "db.example.test", 5432), Want: deny(policy.ReasonUnknownPeer)},
		{Name: "bypass named", Src: Bypass, Flow: tlsFlow("api.example.test", 443), Want: bypass(verdict.ModePassthrough)},
		{Name: "bypass anything", Src: Bypass, Flow: tlsFlow("anything.org", 443), Want: bypass(verdict.ModePassthrough)},
		{Name: "bypass a denied name", Src: Bypass, Flow: tlsFlow("bad.npm.example.test", 443), Want: bypass(verdict.ModePassthrough)},
		{Name: "bypass inspected name is spliced", Src: Bypass, Flow: tlsFlow("git.example.test", 443), Want: bypass(verdict.ModePassthrough)},
		{Name: "bypass http", Src: Bypass, Flow: httpFlow(80, "anything.org", "GET", "/x", ""), Want: bypass(verdict.ModeHTTP)},
		{Name: "bypass dedicated", Src: Bypass, Flow: dedicated(policy.ProtoTCP, "db.example.test", 5432), Want: bypass(verdict.ModeTCP)},
		// Dedicated listeners.
		{Name: "ssh", Src: A, Flow: dedicated(policy.ProtoSSH, "ssh.example.test", 22), Want: allow(verdict.ModeTCP)},
		{Name: "tcp", Src: A, Flow: dedicated(policy.ProtoTCP, "db.example.test", 5432), Want: allow(verdict.ModeTCP)},
		{Name: "udp", Src: A, Flow: dedicated(policy.ProtoUDP, "ntp.example.test", 123), Want: allow(verdict.ModeUDP)},
		{Name: "dedicated, other endpoint's rule", Src: B, Flow: dedicated(policy.ProtoSSH, "ssh.example.test", 22), Want: deny(policy.ReasonPortNotAllow)},
		{Name: "dedicated, protocol of another rule", Src: A, Flow: dedicated(policy.ProtoSSH, "db.example.test", 5432), Want: deny(verdict.ReasonProtoMismatch)},
		{Name: "udp, other endpoint", Src: B, Flow: dedicated(policy.ProtoUDP, "ntp.example.test", 123), Want: deny(policy.ReasonPortNotAllow)},
		// CIDRs and the transparent listener.
		{Name: "cidr", Src: A, Flow: transparent("10.50.1.2", 443), Want: allow(verdict.ModeIP), BuiltinOnly: transparentOnly},
		{Name: "cidr port", Src: A, Flow: transparent("10.50.1.2", 22), Want: deny(policy.ReasonPortNotAllow), BuiltinOnly: transparentOnly},
		{Name: "cidr deny inside allow", Src: A, Flow: transparent("10.50.9.9", 443), Want: deny(policy.ReasonDenyRule), BuiltinOnly: transparentOnly},
		{Name: "cidr deny wins over the name", Src: A, Flow: with(transparent("10.50.9.9", 443), func(f *verdict.Flow) { f.Content, f.Name = verdict.TLS, "api.example.test" }),
			Want: deny(policy.ReasonDenyRule), BuiltinOnly: transparentOnly},
		{Name: "ip tcp rule", Src: A, Flow: transparent("10.60.0.7", 5432), Want: allow(verdict.ModeIP), BuiltinOnly: transparentOnly},
		{Name: "no ip rule, by name", Src: A, Flow: with(transparent("192.0.2.1", 443), func(f *verdict.Flow) { f.Content, f.Name = verdict.TLS, "api.example.test" }),
			Want: allow(verdict.ModePassthrough), BuiltinOnly: transparentOnly},
		{Name: "no ip rule, plain http by Host", Src: A, Flow: with(transparent("192.0.2.1", 80), func(f *verdict.Flow) {
			f.Content, f.Request = verdict.HTTP, &verdict.Request{Host: "plain.example.test", Method: "GET", Path: "/", AsSent: true}
		}), Want: allow(verdict.ModeHTTP), BuiltinOnly: transparentOnly},
		{Name: "no ip rule, nothing read yet", Src: A, Flow: transparent("192.0.2.1", 443), Want: deny(policy.ReasonNoRule), BuiltinOnly: transparentOnly},
		{Name: "bypass ip", Src: Bypass, Flow: transparent("192.0.2.1", 443), Want: bypass(verdict.ModeIP), BuiltinOnly: transparentOnly},
		{Name: "pending ip", Src: Pending, Flow: transparent("10.50.1.2", 443), Want: deny(policy.ReasonPending), BuiltinOnly: transparentOnly},
	}
}

// FlowIn returns row's flow with Who filled from snap at Now.
func (r Row) FlowIn(snap *policy.Snapshot) verdict.Flow {
	f := r.Flow
	if f.Request != nil {
		req := *f.Request
		f.Request = &req
	}
	f.Who = snap.WhoIs(r.Src, Now)
	return f
}
