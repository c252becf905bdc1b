// Package verdict is the proxy's one decision, pure: the facts of a flow in
// (who is asking, the listener, the name or address, port, L4, TLS or plain
// HTTP, the request line when requests are decided), a Verdict out (allowed,
// mode, reason, the rule that decided, the fix). It does no I/O and never
// logs (stripe/smokescreen's Decide is the model). The builtin engine calls
// Decide for every connection and request; the Envoy translation builds its
// filter chains and routes from Decide's verdicts on name keys, and
// proxy/envoy's differential test checks both on one table.
//
// The package also holds the facts both engines share: the one range list
// of addresses a name may never reach on its own (Special), the one inspect
// predicate (Inspects), the one text that says how to fix a denial (Fix).
//
// Names are matched once per decision: Decide calls Policy.MatchName (or
// MatchIP) exactly once and every later check reads the match.
package verdict

import (
	"fmt"
	"net/netip"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Listener is the kind of proxy listener a flow arrived on; the values are
// proxy/model's listener kinds.
type Listener string

// The listener kinds that carry flows.
const (
	// Web listeners (one per original port) learn the name from the TLS
	// SNI or the HTTP Host.
	Web Listener = "web"
	// Dedicated listeners (one per ssh/tcp/udp rule and port) carry their
	// destination.
	Dedicated Listener = "dedicated"
	// The transparent listener reads the original destination address
	// (flows the closed network redirected); it decides by IP/CIDR rule,
	// else by name as a web listener does.
	Transparent Listener = "transparent"
)

// Content is what the proxy has read of a web or transparent flow.
type Content uint8

// What a flow's first bytes were.
const (
	// None: nothing read (dedicated flows; the transparent listener's IP
	// decision, made before any byte so server-first protocols work).
	None Content = iota
	// TLS: a ClientHello; Flow.Name is its SNI.
	TLS
	// HTTP: a request (plain HTTP, or inside inspected TLS); Flow.Request.
	HTTP
)

// Mode is how an allowed flow is carried.
type Mode string

// Modes. They are the "mode" field of the decision lines.
const (
	ModePassthrough Mode = "passthrough" // TLS spliced to the name, unread
	ModeInspect     Mode = "inspect"     // TLS terminated, every request decided
	ModeHTTP        Mode = "http"        // plain HTTP, every request decided
	ModeTCP         Mode = "tcp"         // a dedicated ssh/tcp listener, spliced to the rule's name
	ModeUDP         Mode = "udp"         // a dedicated udp listener
	ModeIP          Mode = "ip"          // an IP/CIDR rule, spliced to the address
)

// Reasons of the proxy's own, on top of the policy's. Their fix texts are
// in Fix.
const (
	ReasonNoSNI          policy.Reason = "no-sni"
	ReasonSniffFailed    policy.Reason = "sniff-failed"
	ReasonProtoMismatch  policy.Reason = "proto-mismatch"
	ReasonDomainFronting policy.Reason = "domain-fronting"
	ReasonNoInspection   policy.Reason = "inspection-unavailable"
	ReasonUpstream       policy.Reason = "upstream-error"
	ReasonBadRequest     policy.Reason = "bad-request"
	// ReasonECH: a passthrough ClientHello with an encrypted ClientHello
	// extension, whose inner server name the proxy cannot see.
	ReasonECH policy.Reason = "ech-refused"
	// ReasonUpgrade: a request that would turn a connection decided per
	// request into a tunnel (an upgrade other than WebSocket, CONNECT, h2c).
	ReasonUpgrade policy.Reason = "upgrade-refused"
	// ReasonPrivateUpstream: a name resolved only to Special addresses that
	// no IP/CIDR rule allows.
	ReasonPrivateUpstream policy.Reason = "private-upstream"
	// ReasonHostLocal: the upstream is an address of the proxy's own host.
	ReasonHostLocal policy.Reason = "host-local"
	// ReasonConnLimit and ReasonUDPLimit: the endpoint is over its cap of
	// concurrent connections or UDP sessions.
	ReasonConnLimit policy.Reason = "conn-limit"
	ReasonUDPLimit  policy.Reason = "udp-session-limit"
)

// Flow is the facts of one flow (or, with Content HTTP, one request).
type Flow struct {
	// Who is the asking endpoint (policy.Snapshot.WhoIs or policy.Await).
	Who policy.Who
	// Listener is the listener kind; Proto is a dedicated listener's
	// protocol (ssh, tcp, udp).
	Listener Listener
	Proto    policy.Proto
	// Name is the destination name: the SNI (Content TLS), the dedicated
	// listener's name, or "" (Content HTTP reads Request.Host). Lower case,
	// no trailing dot.
	Name string
	// Addr is the destination address: a dedicated listener's IP rule, or
	// the original destination on the transparent listener.
	Addr netip.Addr
	Port uint16
	L4   policy.L4
	// Content is what was read; ECH is the ClientHello's encrypted
	// ClientHello extension (0 for none).
	Content Content
	ECH     uint16
	// Request is the HTTP request for Content HTTP.
	Request *Request
}

// Request is one HTTP request's facts.
type Request struct {
	// Host is the Host header or :authority, lower case, without port and
	// trailing dot.
	Host   string
	Method string
	// Path is the request target's path exactly as sent.
	Path string
	// TLSName is the SNI of the inspected connection carrying the request;
	// "" for plain HTTP.
	TLSName string
	// Tunnel says why the request would turn its connection into a tunnel
	// (CONNECT, h2c, an upgrade other than a correct WebSocket handshake);
	// "" when it would not.
	Tunnel string
	// Opaque is set for an opaque request target.
	Opaque bool
	// AsSent reports whether the proxy can forward Path byte for byte
	// (path rules decide only on paths it can).
	AsSent bool
}

// Verdict is the decision on a flow or request.
type Verdict struct {
	Allowed bool
	// Mode is how an allowed flow is carried ("" when denied).
	Mode   Mode
	Reason policy.Reason
	// Rule is the provenance of the deciding rule ("label clawker.allow=x",
	// "bypass"), Pattern its destination pattern ("*" under bypass).
	Rule    string
	Pattern string
	// Entry and Deny are the allow and deny the name or address matched.
	Entry *policy.Allowed
	Deny  *policy.Denied
	// Detail says more (the label error, the path rule, a mismatch).
	Detail string
	// Fix says what would allow a denied flow (Fix), "" when allowed.
	Fix string
}

// Decide decides a flow. Unknown input fails closed. The order:
//  1. for a request: a tunnel (Request.Tunnel) is refused, a request
//     without Host is a bad request, and under inspection a Host other than
//     the TLS server name is domain fronting;
//  2. who is asking: an unknown source, a pending endpoint and one with bad
//     labels are denied with that reason (a bypass is allowed everything
//     below);
//  3. a ClientHello without a server name is refused (no-sni); the
//     destination is matched once: an address (dedicated IP rules,
//     the transparent listener's original destination) with MatchIP, a
//     name (SNI, Host, the dedicated name) with MatchName on the port and
//     L4; a deny or no allow denies with the match's reason. On the
//     transparent listener an address no IP/CIDR rule allows is decided by
//     name once the content is read (a deny covering it still denies), and
//     so is one a learning endpoint reaches whose content names it (the
//     recorder wants the name);
//  4. the protocol of the allow's port range must fit the flow: the
//     listener's protocol on a dedicated listener, https (or tcp, spliced)
//     for TLS, https for a request under inspection, http for a plain one;
//  5. TLS is inspected when Inspects says so, else passed through, and a
//     passthrough ClientHello carrying ECH is refused (not under bypass);
//  6. a request's path rules decide the method and every reading of the
//     path as sent (policy.DecidePath); a path the proxy cannot forward
//     byte for byte, or an opaque target, is refused where they apply.
func Decide(f Flow) Verdict { return decide(f, true) }

// DecideHost is Decide without step 6: a request's Host decided before its
// path rules (the verdict's Entry holds them). The Envoy translation renders
// path rules as routes below the host's decision; a proxy deciding real
// requests calls Decide.
func DecideHost(f Flow) Verdict { return decide(f, false) }

func decide(f Flow, paths bool) Verdict {
	if f.L4 == 0 {
		f.L4 = policy.L4TCP
	}
	req := f.Request
	if f.Content == HTTP && req == nil {
		return f.deny(ReasonBadRequest, "no request")
	}
	// 1.
	if req != nil {
		switch {
		case req.Tunnel != "":
			return f.deny(ReasonUpgrade, req.Tunnel)
		case req.Host == "":
			return f.deny(ReasonBadRequest, "request has no Host")
		case req.TLSName != "" && req.Host != req.TLSName:
			return f.deny(ReasonDomainFronting, fmt.Sprintf("Host %q differs from the TLS server name %q", req.Host, req.TLSName))
		}
	}
	// 2.
	if reason, detail, ok := Asking(f.Who); !ok {
		return f.deny(reason, detail)
	}
	pol := f.Who.Policy
	// 3.
	var m policy.Match
	switch {
	case f.Listener == Dedicated && f.Addr.IsValid():
		m = pol.MatchIP(f.Addr, f.Port, f.L4)
	case f.Listener == Dedicated:
		m = pol.MatchName(f.Name, f.Port, f.L4)
	case f.Listener == Transparent && f.Addr.IsValid():
		m = pol.MatchIP(f.Addr, f.Port, f.L4)
		switch {
		case m.Allowed && pol.Learn && f.Content != None && (f.Content != TLS || f.Name != ""):
			// Learn mode: a flow whose content names it is carried by
			// that name, so the recorder sees it (decided below).
		case m.Allowed:
			return f.allow(m, ModeIP)
		case m.Reason == policy.ReasonDenyRule || f.Content == None:
			return f.denyMatch(m)
		case f.Content == TLS && f.Name == "":
			return f.deny(ReasonNoSNI, "the ClientHello carries no server name")
		}
		m = pol.MatchName(f.host(), f.Port, f.L4)
	case f.Listener == Web || f.Listener == Transparent:
		switch {
		case f.Content == None:
			return f.deny(ReasonSniffFailed, "nothing read")
		case f.Content == TLS && f.Name == "":
			return f.deny(ReasonNoSNI, "the ClientHello carries no server name")
		}
		m = pol.MatchName(f.host(), f.Port, f.L4)
	default:
		return f.deny(policy.ReasonNoRule, "unknown listener kind "+string(f.Listener))
	}
	if !m.Allowed {
		return f.denyMatch(m)
	}
	if m.Entry == nil { // bypass: everything, spliced or proxied as asked
		return f.allow(m, f.bypassMode())
	}
	// 4.
	if f.Listener == Dedicated {
		if !hasProto(m.Entry, f.Port, f.L4, f.Proto) {
			return f.mismatch(m, f.Proto)
		}
		if f.L4 == policy.L4UDP {
			return f.allow(m, ModeUDP)
		}
		return f.allow(m, ModeTCP)
	}
	switch f.Content {
	case TLS:
		var proto policy.Proto
		switch {
		case hasProto(m.Entry, f.Port, f.L4, policy.ProtoHTTPS):
			proto = policy.ProtoHTTPS
		case hasProto(m.Entry, f.Port, f.L4, policy.ProtoTCP):
			proto = policy.ProtoTCP
		default:
			return f.mismatch(m, policy.ProtoHTTPS)
		}
		// 5.
		if Inspects(pol, m.Entry, proto) {
			return f.allow(m, ModeInspect)
		}
		if f.ECH != 0 {
			v := f.denyMatch(m)
			return f.refuse(v, ReasonECH, fmt.Sprintf("the ClientHello carries an encrypted ClientHello (extension %#04x): its inner server name cannot be checked without inspection", f.ECH))
		}
		return f.allow(m, ModePassthrough)
	case HTTP:
		want, mode := policy.ProtoHTTP, ModeHTTP
		if req.TLSName != "" {
			want, mode = policy.ProtoHTTPS, ModeInspect
		}
		if !hasProto(m.Entry, f.Port, f.L4, want) {
			return f.mismatch(m, want)
		}
		// 6.
		if !paths {
			return f.allow(m, mode)
		}
		if req.Opaque {
			return f.refuse(f.denyMatch(m), ReasonBadRequest, "opaque request target")
		}
		if len(m.Entry.Paths) > 0 || m.Entry.PathDefault == policy.Deny {
			if !req.AsSent {
				return f.refuse(f.denyMatch(m), policy.ReasonPath, "the path cannot be forwarded as sent")
			}
			if pv := policy.DecidePath(m.Entry.Paths, m.Entry.PathDefault, req.Path, req.Method); !pv.Allowed {
				return f.refuse(f.denyMatch(m), policy.ReasonPath, pv.Detail)
			}
		}
		return f.allow(m, mode)
	}
	return f.deny(ReasonSniffFailed, "nothing read")
}

// Asking is step 2 of Decide: whether who may be decided for at all, and
// if not, the reason and detail of the denial (an unknown source, a pending
// endpoint, bad labels). A connection whose every request will be denied
// starts out denied for that reason.
func Asking(who policy.Who) (policy.Reason, string, bool) {
	switch {
	case who.State == policy.ReasonUnknownPeer || (who.Endpoint == nil && !who.Pending()):
		return policy.ReasonUnknownPeer, "source address is no endpoint", false
	case who.Pending() || who.Policy == nil:
		return policy.ReasonPending, "the container's policy is still unknown", false
	case who.State == policy.ReasonBadLabel:
		return policy.ReasonBadLabel, who.Detail, false
	}
	return "", "", true
}

// Inspects is the one inspect predicate: TLS allowed by an https range of
// entry is terminated when the rule asks for it, has path rules, or the
// network inspects everything (clawker.tls.inspect=all). A tcp range on a
// web port is spliced, never inspected.
func Inspects(pol *policy.Policy, entry *policy.Allowed, proto policy.Proto) bool {
	if entry == nil || proto != policy.ProtoHTTPS {
		return false
	}
	return entry.Inspect || len(entry.Paths) > 0 || (pol != nil && pol.InspectAll)
}

// hasProto reports whether a port range of entry of protocol proto holds
// (port, l4).
func hasProto(entry *policy.Allowed, port uint16, l4 policy.L4, proto policy.Proto) bool {
	for _, r := range entry.Ports {
		if r.Proto == proto && r.Contains(port, l4) {
			return true
		}
	}
	return false
}

// host is the name a web or transparent flow is decided by.
func (f Flow) host() string {
	if f.Request != nil {
		return f.Request.Host
	}
	return f.Name
}

// dest names the destination for texts: the name, else the address.
func (f Flow) dest() string {
	if h := f.host(); h != "" {
		return h
	}
	if f.Addr.IsValid() {
		return f.Addr.String()
	}
	return ""
}

// proto is the protocol the flow speaks, for the fix's rule.
func (f Flow) proto() policy.Proto {
	switch {
	case f.Listener == Dedicated:
		return f.Proto
	case f.Content == TLS:
		return policy.ProtoHTTPS
	case f.Request != nil && f.Request.TLSName == "":
		return policy.ProtoHTTP
	case f.Request != nil:
		return policy.ProtoHTTPS
	}
	return ""
}

func (f Flow) bypassMode() Mode {
	switch {
	case f.Listener == Dedicated && f.L4 == policy.L4UDP:
		return ModeUDP
	case f.Listener == Dedicated:
		return ModeTCP
	case f.Request != nil && f.Request.TLSName == "":
		return ModeHTTP
	case f.Request != nil:
		return ModeInspect
	case f.Content == TLS && f.Who.Policy.Learn && f.Who.Policy.InspectAll:
		return ModeInspect // learning on an inspecting network: record the requests
	case f.Content == TLS:
		return ModePassthrough
	}
	return ModeIP
}

// Rule describes the provenance of the rule behind a match
// ("label clawker.allow=x", "bypass"), "" when none decided.
func Rule(m policy.Match) string {
	switch {
	case m.Deny != nil:
		return provenance(m.Deny.Rule.Source)
	case m.Entry != nil && len(m.Entry.Rules) > 0:
		return provenance(m.Entry.Rules[0].Source)
	case m.Reason == policy.ReasonBypass:
		return "bypass"
	}
	return ""
}

func provenance(p policy.Provenance) string {
	if p.Kind == "" {
		return ""
	}
	// Concatenated, not fmt.Sprintf: it runs for every decision, requests
	// under inspection included.
	return string(p.Kind) + " " + p.Key + "=" + p.Item
}

func pattern(m policy.Match) string {
	switch {
	case m.Deny != nil:
		return m.Deny.Pattern
	case m.Entry != nil:
		return m.Entry.Pattern
	case m.Reason == policy.ReasonBypass:
		return "*"
	}
	return ""
}

func (f Flow) allow(m policy.Match, mode Mode) Verdict {
	return Verdict{Allowed: true, Mode: mode, Reason: m.Reason, Rule: Rule(m), Pattern: pattern(m), Entry: m.Entry}
}

// denyMatch denies with the match's own reason.
func (f Flow) denyMatch(m policy.Match) Verdict {
	v := Verdict{Reason: m.Reason, Rule: Rule(m), Pattern: pattern(m), Entry: m.Entry, Deny: m.Deny}
	if v.Reason == "" || v.Reason == policy.ReasonAllowed || v.Reason == policy.ReasonBypass {
		v.Reason = policy.ReasonNoRule // fail closed on a match that allowed
	}
	v.Fix = f.fix(v)
	return v
}

// refuse turns v into a denial for reason (keeping the rule it matched).
func (f Flow) refuse(v Verdict, reason policy.Reason, detail string) Verdict {
	v.Allowed, v.Mode, v.Reason, v.Detail, v.Deny = false, "", reason, detail, nil
	v.Fix = f.fix(v)
	return v
}

func (f Flow) mismatch(m policy.Match, want policy.Proto) Verdict {
	got, _ := m.Entry.ProtoFor(f.Port, f.L4)
	return f.refuse(f.denyMatch(m), ReasonProtoMismatch,
		fmt.Sprintf("%s to %s:%d but the rule allows %s", want, f.dest(), f.Port, got))
}

func (f Flow) deny(reason policy.Reason, detail string) Verdict {
	v := Verdict{Reason: reason, Detail: detail}
	v.Fix = f.fix(v)
	return v
}

// Refuse is a denial for one of the proxy's own reasons found outside
// Decide (a failed sniff, an upstream refused at dial time, a cap), with
// the rule of the verdict it overrides (zero when none) and the fix text.
func Refuse(f Flow, v Verdict, reason policy.Reason, detail string) Verdict {
	return f.refuse(v, reason, detail)
}

func (f Flow) fix(v Verdict) string {
	return Fix(Denial{Dest: f.dest(), Port: f.Port, Proto: f.proto(), L4: f.L4, Reason: v.Reason, Rule: v.Rule, Detail: v.Detail, Network: f.Who.Network})
}
