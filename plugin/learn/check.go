package learn

import (
	"net/netip"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Check replays recorded flows against a compiled policy (no traffic) and
// returns those it would deny, each decided by the proxy's own pure
// verdict (verdict.Decide) as the data planes would see it:
//  1. an https flow is a ClientHello with its name on a web listener, and
//     each request inspection saw one more, with its method and path;
//  2. an http request shape is a plain-HTTP request with its Host, method
//     and sample path;
//  3. an ssh or tcp flow to a name is a stream on the dedicated listener of
//     an ssh or a tcp rule (either carries any bytes);
//  4. a flow without a name is the address on the transparent listener
//     (an IP/CIDR rule).
func Check(pol *policy.Policy, flows []api.LearnFlow) []api.LearnDenied {
	who := policy.Who{Endpoint: &policy.Endpoint{}, Policy: pol}
	var out []api.LearnDenied
	for _, f := range flows {
		if v := decide(who, f); !v.Allowed {
			out = append(out, api.LearnDenied{Flow: f, Reason: string(v.Reason), Detail: v.Detail})
		}
	}
	return out
}

// decide returns the verdict on a recorded flow.
func decide(who policy.Who, f api.LearnFlow) verdict.Verdict {
	fl := verdict.Flow{Who: who, Listener: verdict.Web, Port: f.Port, L4: policy.L4TCP}
	if f.Name == "" {
		a, err := netip.ParseAddr(f.Addr)
		if err != nil {
			return verdict.Verdict{Reason: "unreadable", Detail: "the flow has neither a name nor an address"}
		}
		fl.Listener, fl.Addr = verdict.Transparent, a
		return verdict.Decide(fl)
	}
	switch f.Proto {
	case ProtoHTTPS, ProtoHTTP:
		fl.Content, fl.Name = verdict.TLS, f.Name
		if f.Proto == ProtoHTTP || f.PathPrefix != "" {
			path := f.Path
			if path == "" {
				path = f.PathPrefix
			}
			req := &verdict.Request{Host: f.Name, Method: f.Method, Path: path, AsSent: true}
			if f.Proto == ProtoHTTPS {
				req.TLSName = f.Name
			}
			fl.Content, fl.Name, fl.Request = verdict.HTTP, "", req
		}
		return verdict.Decide(fl)
	}
	fl.Listener, fl.Name = verdict.Dedicated, f.Name
	var v verdict.Verdict
	for _, proto := range []policy.Proto{policy.ProtoSSH, policy.ProtoTCP} {
		fl.Proto = proto
		if v = verdict.Decide(fl); v.Allowed {
			break
		}
	}
	return v
}
