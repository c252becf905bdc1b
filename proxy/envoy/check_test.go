package envoy

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/clawker-fw/clawker-fw/policy"
)

// mutate rebuilds the comprehensive snapshot after f changed copies of its
// resources, so Check can be shown to catch each class of mistake.
func mutate(t *testing.T, f func(res map[resource.Type][]types.Resource)) *cache.Snapshot {
	t.Helper()
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	res := map[resource.Type][]types.Resource{}
	for _, typ := range []resource.Type{resource.ListenerType, resource.ClusterType, resource.RouteType, resource.SecretType} {
		for _, name := range sortedKeys(out.GetResources(typ)) {
			res[typ] = append(res[typ], proto.Clone(out.GetResources(typ)[name]))
		}
	}
	f(res)
	s, err := cache.NewSnapshot("x", res)
	require.NoError(t, err)
	return s
}

func find[T types.Resource](res []types.Resource, name string) T {
	for _, r := range res {
		if cache.GetResourceName(r) == name {
			return r.(T)
		}
	}
	var zero T
	return zero
}

func drop(res []types.Resource, name string) []types.Resource {
	var out []types.Resource
	for _, r := range res {
		if cache.GetResourceName(r) != name {
			out = append(out, r)
		}
	}
	return out
}

func TestCheckCatches(t *testing.T) {
	tests := []struct {
		name    string
		f       func(res map[resource.Type][]types.Resource)
		wantErr string
	}{
		{"duplicate filter chain match", func(res map[resource.Type][]types.Resource) {
			l := find[*listener.Listener](res[resource.ListenerType], "web:443")
			dup := proto.Clone(l.FilterChains[0]).(*listener.FilterChain)
			dup.Name += "-copy"
			l.FilterChains = append(l.FilterChains, dup)
		}, "have the same match"},
		{"overlapping source ranges", func(res map[resource.Type][]types.Resource) {
			l := find[*listener.Listener](res[resource.ListenerType], "web:443")
			a := l.FilterChains[0]
			b := proto.Clone(a).(*listener.FilterChain)
			b.Name += "-b"
			b.FilterChainMatch.SourcePrefixRanges = append(b.FilterChainMatch.SourcePrefixRanges[:0:0], prefixes([]ep{{ip: ipBypass}})...)
			b.FilterChainMatch.SourcePrefixRanges = append(b.FilterChainMatch.SourcePrefixRanges, a.FilterChainMatch.SourcePrefixRanges[0])
			l.FilterChains = append(l.FilterChains, b)
		}, "have the same match"},
		{"undefined cluster", func(res map[resource.Type][]types.Resource) {
			res[resource.ClusterType] = drop(res[resource.ClusterType], "raw:api.example.test:443")
		}, `undefined cluster "raw:api.example.test:443"`},
		{"undefined secret", func(res map[resource.Type][]types.Resource) {
			res[resource.SecretType] = drop(res[resource.SecretType], "leaf:git.example.test")
		}, `undefined secret "leaf:git.example.test"`},
		{"missing route", func(res map[resource.Type][]types.Resource) {
			res[resource.RouteType] = drop(res[resource.RouteType], "web:80/http/g1")
		}, "not consistent"},
		{"duplicate domain", func(res map[resource.Type][]types.Resource) {
			rc := find[*route.RouteConfiguration](res[resource.RouteType], "web:80/http/g1")
			rc.VirtualHosts = append(rc.VirtualHosts, proto.Clone(rc.VirtualHosts[0]).(*route.VirtualHost))
		}, "domain"},
		{"invalid resource", func(res map[resource.Type][]types.Resource) {
			rc := find[*route.RouteConfiguration](res[resource.RouteType], "web:80/http/g1")
			rc.VirtualHosts[0].Name = ""
		}, "validate web:80/http/g1"},
		{"invalid nested filter config", func(res map[resource.Type][]types.Resource) {
			l := find[*listener.Listener](res[resource.ListenerType], "web:443")
			l.DefaultFilterChain.Filters[0] = networkFilter("envoy.filters.network.tcp_proxy", &tcpproxy.TcpProxy{
				ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: DenyCluster},
			})
		}, "StatPrefix"},
		{"two listeners on one port", func(res map[resource.Type][]types.Resource) {
			l := proto.Clone(find[*listener.Listener](res[resource.ListenerType], "web:443")).(*listener.Listener)
			l.Name = "web:443-again"
			res[resource.ListenerType] = append(res[resource.ListenerType], l)
		}, "both bind"},
		{"h2c upgrade", func(res map[resource.Type][]types.Resource) {
			editHCM(t, res, "web:80", func(h *hcmv3.HttpConnectionManager) {
				h.UpgradeConfigs = append(h.UpgradeConfigs, &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: "h2c"})
			})
		}, "want exactly one enabled"},
		{"CONNECT upgrade", func(res map[resource.Type][]types.Resource) {
			editHCM(t, res, "web:443", func(h *hcmv3.HttpConnectionManager) {
				h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}}
			})
		}, "want exactly one enabled"},
		{"no upgrade config", func(res map[resource.Type][]types.Resource) {
			editHCM(t, res, "web:80", func(h *hcmv3.HttpConnectionManager) { h.UpgradeConfigs = nil })
		}, "want exactly one enabled"},
		{"extended CONNECT", func(res map[resource.Type][]types.Resource) {
			editHCM(t, res, "web:443", func(h *hcmv3.HttpConnectionManager) {
				h.Http2ProtocolOptions = &core.Http2ProtocolOptions{AllowConnect: true}
			})
		}, "extended CONNECT"},
		{"h2c prior knowledge", func(res map[resource.Type][]types.Resource) {
			editHCM(t, res, "web:80", func(h *hcmv3.HttpConnectionManager) { h.CodecType = hcmv3.HttpConnectionManager_AUTO })
		}, "want HTTP1"},
		{"route CONNECT", func(res map[resource.Type][]types.Resource) {
			rc := find[*route.RouteConfiguration](res[resource.RouteType], "web:80/http/g1")
			rc.VirtualHosts[0].Routes[0].Match.PathSpecifier = &route.RouteMatch_ConnectMatcher_{ConnectMatcher: &route.RouteMatch_ConnectMatcher{}}
		}, "matches CONNECT"},
		{"bad regex", func(res map[resource.Type][]types.Resource) {
			rc := find[*route.RouteConfiguration](res[resource.RouteType], "web:443/https/g1")
			for _, vh := range rc.VirtualHosts {
				for _, r := range vh.Routes {
					if re := r.GetMatch().GetSafeRegex(); re != nil {
						re.Regex = "(unclosed"
					}
				}
			}
		}, "missing closing )"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(mutate(t, tt.f))
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.wantErr)
		})
	}
	t.Run("unmodified passes", func(t *testing.T) {
		require.NoError(t, Check(mutate(t, func(map[resource.Type][]types.Resource) {})))
	})
}

// editHCM applies f to the connection manager of every HTTP chain of the
// listener named ln (plain-HTTP chains and inspected TLS chains).
func editHCM(t *testing.T, res map[resource.Type][]types.Resource, ln string, f func(*hcmv3.HttpConnectionManager)) {
	t.Helper()
	l := find[*listener.Listener](res[resource.ListenerType], ln)
	require.NotNil(t, l, ln)
	n := 0
	for _, fc := range l.FilterChains {
		for _, flt := range fc.Filters {
			m, err := flt.GetTypedConfig().UnmarshalNew()
			require.NoError(t, err)
			if h, ok := m.(*hcmv3.HttpConnectionManager); ok {
				f(h)
				flt.ConfigType = &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}
				n++
			}
		}
	}
	require.NotZero(t, n, "no connection manager in %s", ln)
}

func TestTranslateErrors(t *testing.T) {
	t.Run("inspection without a certificate source", func(t *testing.T) {
		snap := comprehensive()
		opts := testOptions(t)
		opts.Certs = nil
		_, err := Translate(snap, buildModel(t, snap), opts)
		require.ErrorContains(t, err, "no certificate source")
	})
	t.Run("bad path regex", func(t *testing.T) {
		snap := comprehensive()
		snap.Endpoints[1].Policy.Allows[1].Paths[1].Path = "~^/v[0-9"
		_, err := Translate(snap, buildModel(t, snap), testOptions(t))
		require.ErrorContains(t, err, `path rule "~^/v[0-9"`)
	})
	t.Run("no inspection needs no certificates", func(t *testing.T) {
		snap := comprehensive()
		snap.Endpoints[2].Policy = &policy.Policy{}
		snap.Endpoints[1].Policy.Allows = snap.Endpoints[1].Policy.Allows[:1]
		opts := testOptions(t)
		opts.Certs = nil
		out, err := Translate(snap, buildModel(t, snap), opts)
		require.NoError(t, err)
		require.NoError(t, Check(out))
		require.Empty(t, out.GetResources(resource.SecretType))
	})
	t.Run("empty snapshot", func(t *testing.T) {
		snap := (&policy.Snapshot{Generation: 1}).Index()
		out, err := Translate(snap, buildModel(t, snap), testOptions(t))
		require.NoError(t, err)
		require.NoError(t, Check(out))
		require.Equal(t, "1", out.GetVersion(resource.ListenerType))
		require.Empty(t, out.GetResources(resource.ListenerType))
	})
}
