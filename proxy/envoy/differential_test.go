package envoy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	pv "github.com/clawker-fw/clawker-fw/proxy/verdict"
	"github.com/clawker-fw/clawker-fw/proxy/verdict/verdicttest"
)

// TestDifferentialVerdicts is the differential test of the two engines over
// the shared table (proxy/verdict/verdicttest: a row for every reason and
// mode over names, wildcards, denies, CIDRs, ports, path rules, inspection,
// bad labels, pending endpoints, bypass and unknown sources). For every row
// the builtin engine's verdict (verdict.Decide, which it calls for every
// connection and request: proxy/builtin's TestVerdictTable runs the rows on
// real connections) and the Envoy engine's agree: allowed or not, the mode,
// and the reason.
//
// No Envoy binary runs where this project is tested, so the Envoy side is an
// evaluator of the generated xDS resources written in this package's tests
// (semantic_test.go: Envoy's documented filter chain selection, virtual host
// and route matching, read from the chains' filters, access log fields and
// route metadata), not Envoy itself. Rows marked BuiltinOnly are decided by
// the builtin engine whichever engine runs (the transparent listener) or are
// refusals only it makes; they are listed, not skipped silently. A udp
// listener drops the datagrams of sources it does not route without a
// reason, so for denied udp rows only the denial is compared.
func TestDifferentialVerdicts(t *testing.T) {
	snap, err := verdicttest.Snapshot()
	require.NoError(t, err)
	opts := testOptions(t)
	opts.Now = func() time.Time { return verdicttest.Now }
	m := buildModel(t, snap)
	out, err := Translate(snap, m, opts)
	require.NoError(t, err)
	require.NoError(t, Check(out))

	compared := 0
	for _, row := range verdicttest.Rows() {
		t.Run(row.Name, func(t *testing.T) {
			builtin := verdicttest.Of(pv.Decide(row.FlowIn(snap)))
			require.Equal(t, row.Want, builtin, "the builtin verdict is the table's")
			if row.BuiltinOnly != "" {
				t.Logf("builtin engine only: %s", row.BuiltinOnly)
				return
			}
			got, reasonKnown := envoyVerdict(t, out, row)
			if !reasonKnown {
				require.False(t, got.Allowed)
				require.False(t, builtin.Allowed)
				return
			}
			require.Equal(t, builtin, got, "the Envoy resources decide %s from %s as the builtin engine does", row.Name, row.Src)
			compared++
		})
	}
	require.Greater(t, compared, 50, "most rows are compared on both engines")
}

// envoyVerdict evaluates one row on the generated resources. reasonKnown is
// false for a denial whose reason the resources do not carry (udp).
func envoyVerdict(t *testing.T, out *cache.Snapshot, row verdicttest.Row) (verdicttest.Want, bool) {
	t.Helper()
	f := row.Flow
	if f.Listener == pv.Dedicated {
		key := model.DedicatedKey(f.Proto, f.Name, f.Port)
		if _, ok := out.GetResources(resource.ListenerType)[key]; !ok {
			// No listener (a udp port no endpoint may use): nothing is
			// routed, without a reason.
			return verdicttest.Want{}, false
		}
		l := listenerByKey(t, out, key)
		if f.Proto == policy.ProtoUDP {
			cfg, err := l.GetListenerFilters()[0].GetTypedConfig().UnmarshalNew()
			require.NoError(t, err)
			routes := cfg.(*udpproxy.UdpProxyConfig).GetMatcher().GetMatcherTree().GetExactMatchMap().GetMap()
			if _, ok := routes[row.Src.String()]; ok {
				return verdicttest.Want{Allowed: true, Mode: pv.ModeUDP, Reason: policy.ReasonAllowed}, true
			}
			return verdicttest.Want{}, false
		}
		return chainVerdict(t, selectChain(l, "", "raw_buffer", row.Src), pv.ModeTCP), true
	}
	l := listenerByKey(t, out, fmt.Sprintf("web:%d", f.Port))
	switch {
	case f.Content == pv.TLS:
		return chainVerdict(t, selectChain(l, f.Name, "tls", row.Src), pv.ModePassthrough), true
	case f.Request.TLSName != "":
		fc := selectChain(l, f.Request.TLSName, "tls", row.Src)
		o := outcome(t, fc)
		if !strings.HasPrefix(o, "inspect:") {
			return chainVerdict(t, fc, pv.ModePassthrough), true
		}
		rc := routeByName(t, out, strings.TrimPrefix(o, "inspect:"))
		return routeVerdict(t, rc, f.Request, pv.ModeInspect), true
	default:
		fc := selectChain(l, "", "raw_buffer", row.Src)
		o := outcome(t, fc)
		require.True(t, strings.HasPrefix(o, "http:"), "plain HTTP reaches a connection manager, got %s", o)
		return routeVerdict(t, routeByName(t, out, strings.TrimPrefix(o, "http:")), f.Request, pv.ModeHTTP), true
	}
}

// chainVerdict reads what a chain does: a denial with its logged reason, a
// passthrough (or tcp) with its logged reason, or inspection.
func chainVerdict(t *testing.T, chain *listener.FilterChain, mode pv.Mode) verdicttest.Want {
	t.Helper()
	o := outcome(t, chain)
	switch {
	case strings.HasPrefix(o, "deny:"):
		return verdicttest.Want{Reason: policy.Reason(strings.TrimPrefix(o, "deny:"))}
	case strings.HasPrefix(o, "inspect:"):
		return verdicttest.Want{Allowed: true, Mode: pv.ModeInspect, Reason: policy.ReasonAllowed}
	case strings.HasPrefix(o, "pass:"):
		last := chain.GetFilters()[len(chain.GetFilters())-1]
		cfg, err := last.GetTypedConfig().UnmarshalNew()
		require.NoError(t, err)
		reason := logField(t, cfg.(*tcpproxy.TcpProxy).GetAccessLog()[0], logReason)
		return verdicttest.Want{Allowed: true, Mode: mode, Reason: policy.Reason(reason)}
	}
	t.Fatalf("chain %s does %s", chain.GetName(), o)
	return verdicttest.Want{}
}

// routeVerdict routes one request: a 403 with its reason, or the route's
// allow with its reason (metadata).
func routeVerdict(t *testing.T, rc *route.RouteConfiguration, req *pv.Request, mode pv.Mode) verdicttest.Want {
	t.Helper()
	r := matchRoute(t, rc, req.Host, req.Method, req.Path)
	if r.GetDirectResponse() != nil {
		require.Equal(t, "403:"+routeReason(r), request(t, rc, req.Host, req.Method, req.Path))
		return verdicttest.Want{Reason: policy.Reason(routeReason(r))}
	}
	return verdicttest.Want{Allowed: true, Mode: mode, Reason: policy.Reason(routeReason(r))}
}
