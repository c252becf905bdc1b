package learn

import (
	"fmt"
	"net/netip"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Check replays recorded flows against a compiled policy (no traffic) and
// returns those it would deny. A flow is allowed when, as the data planes
// decide it:
//  1. a name flow's name is allowed on its port (policy.MatchName) by a
//     rule of a protocol that carries it: https by https or tcp (the proxy
//     splices TLS under a tcp rule), http by http, ssh and tcp by ssh or
//     tcp (a dedicated listener carries any bytes);
//  2. an http/https request shape's sample path and method pass the
//     rule's path rules (policy.DecidePath);
//  3. a flow without a name is allowed by an IP/CIDR rule on its port
//     (policy.MatchIP).
func Check(pol *policy.Policy, flows []api.LearnFlow) []api.LearnDenied {
	var out []api.LearnDenied
	for _, f := range flows {
		if reason, detail := decide(pol, f); reason != "" {
			out = append(out, api.LearnDenied{Flow: f, Reason: reason, Detail: detail})
		}
	}
	return out
}

// decide returns "" when pol allows f, else the reason and a detail.
func decide(pol *policy.Policy, f api.LearnFlow) (string, string) {
	if f.Name == "" {
		a, err := netip.ParseAddr(f.Addr)
		if err != nil {
			return "unreadable", "the flow has neither a name nor an address"
		}
		if m := pol.MatchIP(a, f.Port, policy.L4TCP); !m.Allowed {
			return string(m.Reason), fmt.Sprintf("no IP/CIDR rule allows %s:%d", a, f.Port)
		}
		return "", ""
	}
	m := pol.MatchName(f.Name, f.Port, policy.L4TCP)
	if !m.Allowed {
		if m.Deny != nil {
			return string(m.Reason), fmt.Sprintf("denied by %s", m.Deny.Rule.Source.Item)
		}
		return string(m.Reason), ""
	}
	if m.Entry == nil {
		return "", "" // allow-all
	}
	proto, _ := m.Entry.ProtoFor(f.Port, policy.L4TCP)
	var ok bool
	switch f.Proto {
	case ProtoHTTPS:
		ok = proto == policy.ProtoHTTPS || proto == policy.ProtoTCP
	case ProtoHTTP:
		ok = proto == policy.ProtoHTTP
	default:
		ok = proto == policy.ProtoSSH || proto == policy.ProtoTCP
	}
	if !ok {
		return "proto-mismatch", fmt.Sprintf("%s flow, but the rule for %s:%d allows %s", f.Proto, f.Name, f.Port, proto)
	}
	if f.PathPrefix == "" || (len(m.Entry.Paths) == 0 && m.Entry.PathDefault != policy.Deny) {
		return "", ""
	}
	path := f.Path
	if path == "" {
		path = f.PathPrefix
	}
	if v := policy.DecidePath(m.Entry.Paths, m.Entry.PathDefault, path, f.Method); !v.Allowed {
		return string(policy.ReasonPath), v.Detail
	}
	return "", ""
}
