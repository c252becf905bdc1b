package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Explaining a destination: `clawker-fw explain CONTAINER DESTINATION` asks
// the plugin what its data planes would decide for a flow from that
// container, without sending anything. The destination is turned into the
// flow facts the proxy would see (verdict.Flow) and decided by the one
// proxy verdict (verdict.Decide) on the container's effective policy in the
// served snapshot: what explain says is what the proxy does.

// destination is a parsed explain destination.
type destination struct {
	// Name is a normalized host name; Addr an IP address (one of them).
	Name  string
	Addr  netip.Addr
	Port  uint16
	Proto policy.Proto
	// Path is the path of an http(s) URL as written ("" when none).
	Path string
}

// parseDestination reads what explain is asked about:
//   - a URL "https://api.example.com/v1/x" or "http://h:8080/p" (scheme,
//     host, port, path; user info is dropped, the query ignored);
//   - a rule item "tcp://db:5432", "ssh://github.com", "udp://ntp:123",
//     "api.example.com:8443" (the rule syntax: https when no scheme);
//   - an address with a port "10.1.2.3:443", "[2001:db8::1]:443", or a
//     plain name or address (https on 443).
//
// A destination must be one name or address on one port: wildcards, CIDRs
// and port ranges are refused.
func parseDestination(s string) (destination, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return destination{}, errors.New("empty destination")
	}
	item, path := s, ""
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		switch strings.ToLower(scheme) {
		case "http", "https":
			authority := rest
			if i := strings.IndexAny(rest, "/?#"); i >= 0 {
				authority, path = rest[:i], rest[i:]
			}
			if i := strings.LastIndexByte(authority, '@'); i >= 0 {
				authority = authority[i+1:]
			}
			if i := strings.IndexAny(path, "?#"); i >= 0 {
				path = path[:i]
			}
			item = scheme + "://" + authority
		case "tcp", "udp", "ssh", "tls":
		default:
			return destination{}, fmt.Errorf("destination %q: unknown scheme %q (want https, http, tcp, udp or ssh)", s, scheme)
		}
	}
	r, err := policy.ParseCompact(item, policy.Allow)
	if err != nil {
		return destination{}, fmt.Errorf("destination %q: %w", s, err)
	}
	d := destination{Port: r.Port, Proto: r.Proto, Path: path}
	switch {
	case r.PortEnd != 0 && r.PortEnd != r.Port:
		return destination{}, fmt.Errorf("destination %q: one port, not a range", s)
	case strings.HasPrefix(r.Dst, "."):
		return destination{}, fmt.Errorf("destination %q: one name, not a wildcard", s)
	}
	if p, err := netip.ParsePrefix(r.Dst); err == nil {
		if !p.IsSingleIP() {
			return destination{}, fmt.Errorf("destination %q: one address, not a CIDR", s)
		}
		d.Addr = p.Addr()
	} else {
		d.Name = r.Dst
	}
	return d, nil
}

// l4 is the transport the destination's protocol uses.
func (d destination) l4() policy.L4 { return d.Proto.L4() }

// dest is the name, else the address.
func (d destination) dest() string {
	if d.Name != "" {
		return d.Name
	}
	return d.Addr.String()
}

// flows returns the flow the proxy would decide first (a TLS ClientHello,
// a plain HTTP request, a dedicated listener's connection, or an address on
// the transparent listener) and, for an https URL with a path, the request
// it would decide under inspection.
func (d destination) flows(who policy.Who, method string) (first verdict.Flow, request *verdict.Flow) {
	f := verdict.Flow{Who: who, Port: d.Port, L4: d.l4()}
	switch {
	case d.Addr.IsValid():
		// IP literals: the hooks leave an address an IP/CIDR rule allows to
		// the closed network, which redirects it to the transparent
		// listener; it decides on the address before reading anything.
		f.Listener, f.Addr = verdict.Transparent, d.Addr
	case d.Proto.Dedicated():
		f.Listener, f.Proto, f.Name = verdict.Dedicated, d.Proto, d.Name
	case d.Proto == policy.ProtoHTTP:
		f.Listener, f.Name, f.Content = verdict.Web, d.Name, verdict.HTTP
		f.Request = &verdict.Request{Host: d.Name, Method: method, Path: orSlash(d.Path), AsSent: true}
	default:
		f.Listener, f.Name, f.Content = verdict.Web, d.Name, verdict.TLS
		if d.Path != "" {
			r := f
			r.Content = verdict.HTTP
			r.Request = &verdict.Request{Host: d.Name, Method: method, Path: d.Path, TLSName: d.Name, AsSent: true}
			request = &r
		}
	}
	return f, request
}

func orSlash(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// Explain decides a destination for a container without sending anything.
func (p *Plugin) Explain(ctx context.Context, req api.ExplainRequest) (api.ExplainResponse, error) {
	var out api.ExplainResponse
	d, err := parseDestination(req.Destination)
	if err != nil {
		return out, rejected(ReasonInvalidRequest, "%v", err)
	}
	method := strings.ToUpper(strings.TrimSpace(req.Method))
	if method == "" {
		method = "GET"
	}
	id, found := p.ResolveContainer(ctx, req.Container)
	if !found {
		return out, rejected(ReasonContainerGone, "no such container: %s", req.Container)
	}
	snap := p.Snapshot()
	var ep *policy.Endpoint
	for _, e := range snap.Endpoints {
		if e.ContainerID == id {
			ep = e
			break
		}
	}
	if ep == nil {
		return out, rejected(ReasonContainerGone, "container %s is not on a clawker-fw network (or not identified yet)", req.Container)
	}
	p.ensureNetworkNames(ctx)
	now := p.cfg.Now()
	out = api.ExplainResponse{Container: ep.ContainerName, ContainerID: ep.ContainerID, Network: ep.NetworkID,
		NetworkName: p.NetworkName(ep.NetworkID), Generation: snap.Generation,
		Flow: api.ExplainFlow{Name: d.Name, Port: d.Port, Proto: string(d.Proto), L4: l4Name(d.l4())}}
	if d.Addr.IsValid() {
		out.Flow.Addr = d.Addr.String()
	}
	if d.Path != "" || d.Proto == policy.ProtoHTTP {
		out.Flow.Path, out.Flow.Method = orSlash(d.Path), method
	}
	who := ep.Who(now)
	first, request := d.flows(who, method)
	v := verdict.Decide(first)
	if v.Allowed && request != nil && v.Mode == verdict.ModeInspect {
		v = verdict.Decide(*request)
	}
	explainVerdict(&out, d, v, method, p.networkRef(ep.NetworkID))
	if who.State == policy.ReasonBypass {
		out.Notes = append(out.Notes, fmt.Sprintf("the container is under bypass until %s: DNS and the proxy allow everything", ep.BypassUntil.Format(time.RFC3339)))
	}
	return out, nil
}

// explainVerdict fills the verdict, the deciding rule with its origin, and
// for a denial the smallest rule that would allow the flow.
func explainVerdict(out *api.ExplainResponse, d destination, v verdict.Verdict, method, network string) {
	out.Allowed, out.Reason, out.Mode = v.Allowed, string(v.Reason), string(v.Mode)
	var pv *policy.PathVerdict
	if v.Entry != nil && d.Path != "" && !d.Addr.IsValid() && (len(v.Entry.Paths) > 0 || v.Entry.PathDefault == policy.Deny) &&
		(v.Mode == verdict.ModeInspect || v.Mode == verdict.ModeHTTP || v.Reason == policy.ReasonPath) {
		r := policy.DecidePath(v.Entry.Paths, v.Entry.PathDefault, d.Path, method)
		pv = &r
	}
	switch {
	case v.Deny != nil:
		out.Rule = explainRule(v.Deny.Rule)
	case v.Entry != nil:
		out.Rule = explainRule(decidingRule(v.Entry, d))
	}
	if out.Rule != nil && pv != nil {
		out.Rule.Path = pv.Detail
	}
	out.Detail = explainDetail(d, v)
	switch {
	case v.Allowed && d.Path != "" && v.Mode == verdict.ModePassthrough:
		out.Notes = append(out.Notes, "TLS is passed through (the server name is checked): the path is not seen, so every path is allowed; path rules or clawker.tls.inspect=all would inspect it")
	case v.Allowed && d.Name != "" && v.Mode != verdict.ModeIP && v.Reason != policy.ReasonBypass:
		out.Notes = append(out.Notes, "the proxy dials the name itself: an answer in a private or special range is refused unless CLAWKER_ALLOW_PRIVATE_UPSTREAMS allows it (explain resolves nothing)")
	case !v.Allowed && d.Addr.IsValid():
		out.Notes = append(out.Notes, "an IP literal that no IP/CIDR rule allows is refused at connect() (EPERM): connect by name")
	}
	if !v.Allowed {
		out.Fix = explainFix(d, v, pv, method, network)
	}
}

// decidingRule is the rule of entry that allows the flow: the first whose
// port range holds the port for a protocol the flow can use, else the
// entry's own first rule.
func decidingRule(entry *policy.Allowed, d destination) policy.EgressRule {
	for _, r := range entry.Rules {
		hi := r.PortEnd
		if hi == 0 {
			hi = r.Port
		}
		if d.Port < r.Port || d.Port > hi || r.Proto.L4() != d.l4() {
			continue
		}
		if r.Proto == d.Proto || (d.Proto == policy.ProtoHTTPS && r.Proto == policy.ProtoTCP) {
			return r
		}
	}
	return entry.Rules[0]
}

// origins names where rules come from, as explain prints it.
var origins = map[policy.SourceKind]string{
	policy.SourceOption:  api.OriginOption,
	policy.SourceLabel:   api.OriginLabel,
	policy.SourceRuntime: api.OriginRuntime,
}

func explainRule(r policy.EgressRule) *api.ExplainRule {
	return &api.ExplainRule{Rule: policy.FormatRule(r), Origin: origins[r.Source.Kind], Key: r.Source.Key, Item: r.Source.Item}
}

func l4Name(l4 policy.L4) string {
	if l4 == policy.L4UDP {
		return "udp"
	}
	return "tcp"
}

// explainDetail says in words what decided.
func explainDetail(d destination, v verdict.Verdict) string {
	dest := d.dest()
	switch {
	case v.Reason == policy.ReasonBypass:
		return "the container is under bypass: everything is allowed"
	case v.Allowed:
		return fmt.Sprintf("%s port %d/%s is allowed by the rule for %s", dest, d.Port, l4Name(d.l4()), v.Pattern)
	case v.Reason == policy.ReasonNoRule:
		return fmt.Sprintf("no rule allows %s", dest)
	case v.Reason == policy.ReasonDenyRule:
		return fmt.Sprintf("a deny rule for %s covers %s (on every port; a deny wins over every allow)", v.Pattern, dest)
	case v.Reason == policy.ReasonPortNotAllow:
		return fmt.Sprintf("the rule for %s does not allow port %d/%s", v.Pattern, d.Port, l4Name(d.l4()))
	case v.Detail != "":
		return v.Detail
	}
	return string(v.Reason)
}

// explainFix is the smallest rule that would allow a denied flow, or what
// else must change when no rule can.
func explainFix(d destination, v verdict.Verdict, pv *policy.PathVerdict, method, network string) *api.ExplainFix {
	switch v.Reason {
	case policy.ReasonDenyRule:
		return &api.ExplainFix{Note: "no allow rule can: remove the deny (" + describeOrigin(v.Deny.Rule, network) + ")"}
	case policy.ReasonBadLabel:
		return &api.ExplainFix{Note: "the container's clawker labels are invalid (" + v.Detail + "): it has no egress until it is recreated with valid labels"}
	case policy.ReasonPending:
		return &api.ExplainFix{Note: "the container is not identified yet: retry in a moment"}
	case policy.ReasonPath:
		if pv != nil && pv.Rule != nil && pv.Rule.Action == policy.Deny {
			return &api.ExplainFix{Note: fmt.Sprintf("a deny path rule (%s) covers the path; no allow rule can: remove it from %s", policy.DescribePathRule(*pv.Rule), describeOrigin(decidingRule(v.Entry, d), network))}
		}
		r := policy.EgressRule{Dst: d.Name, Proto: d.Proto, Port: d.Port, Action: policy.Allow,
			Paths: []policy.PathRule{{Path: d.Path, Methods: []string{method}}}}
		n, err := policy.Normalize(r)
		if err != nil {
			return &api.ExplainFix{Note: fmt.Sprintf("no path rule can name this path (%v)", err)}
		}
		item := policy.FormatRule(n)
		return &api.ExplainFix{Rule: item,
			Label:   "--label " + shellQuote(policy.KeyRules+"=["+item+"]"),
			Option:  "-o " + shellQuote(policy.KeyRules+"=["+item+"]"),
			Command: "clawker-fw rules add " + network + " " + shellQuote(item)}
	case policy.ReasonNoRule, policy.ReasonPortNotAllow, verdict.ReasonProtoMismatch:
		item := verdict.Item(d.dest(), d.Port, d.Proto, d.l4())
		return &api.ExplainFix{Rule: item,
			Label:   "--label " + shellQuote(policy.KeyAllow+"="+item),
			Option:  "-o " + shellQuote(policy.KeyAllow+"="+item),
			Command: "clawker-fw rules add " + network + " " + shellQuote(item)}
	}
	return &api.ExplainFix{Note: verdict.Fix(verdict.Denial{Dest: d.dest(), Port: d.Port, Proto: d.Proto, L4: d.l4(),
		Reason: v.Reason, Rule: v.Rule, Detail: v.Detail, Network: network})}
}

// describeOrigin says where a rule was given and how to take it away.
func describeOrigin(r policy.EgressRule, network string) string {
	switch r.Source.Kind {
	case policy.SourceLabel:
		return fmt.Sprintf("label %s=%q: recreate the container without it", r.Source.Key, r.Source.Item)
	case policy.SourceOption:
		return fmt.Sprintf("network option %s=%q: recreate the network without it", r.Source.Key, r.Source.Item)
	case policy.SourceRuntime:
		return fmt.Sprintf("runtime rule %s: `clawker-fw rules rm %s %s`", policy.FormatRule(r), network, shellQuote(policy.FormatRule(r)))
	}
	return policy.FormatRule(r)
}

// shellQuote quotes s for a POSIX shell when it holds anything but plain
// rule characters (JSON rules, wildcards).
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:/-_=,@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
