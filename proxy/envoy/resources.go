package envoy

import (
	"fmt"
	"strconv"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	filelog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	dfpcluster "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dnscache "github.com/envoyproxy/go-control-plane/envoy/extensions/common/dynamic_forward_proxy/v3"
	dfphttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	snidfp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/sni_dynamic_forward_proxy/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	netinputs "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	pv "github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// connectTimeout bounds upstream connects.
const connectTimeout = 5 * time.Second

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		// anypb.New fails only for messages without a registered type,
		// which cannot happen for the generated Envoy types used here.
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return a
}

func u32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

func durationZero() *durationpb.Duration { return durationpb.New(0) }

func inlineBytes(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

func inlineString(s string) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: s}}
}

func socketAddress(addr string, port uint16, proto core.SocketAddress_Protocol) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol:      proto,
		Address:       addr,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// adsSource points at the ADS stream the bootstrap configures.
func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

func listenerFilter(name string, cfg proto.Message) *listener.ListenerFilter {
	return &listener.ListenerFilter{Name: name, ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

func tlsInspector() proto.Message  { return &tlsinspector.TlsInspector{} }
func httpInspector() proto.Message { return &httpinspector.HttpInspector{} }

func networkFilter(name string, cfg proto.Message) *listener.Filter {
	return &listener.Filter{Name: name, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// logCtx carries what every log line of one listener says.
type logCtx struct {
	listener string
	port     uint16
}

// Access log field names: those of every clawker-fw decision line
// (internal/decisionlog), so one query finds the decisions of both engines.
const (
	logSrc       = decisionlog.FSrcAddr
	logListener  = decisionlog.FListener
	logName      = decisionlog.FDestName
	logDst       = decisionlog.FDestAddr
	logPort      = decisionlog.FDestPort
	logRule      = decisionlog.FRule
	logDecision  = decisionlog.FVerdict
	logReason    = decisionlog.FReason
	logMode      = decisionlog.FMode
	logMethod    = decisionlog.FMethod
	logPath      = decisionlog.FPath
	logStatus    = "status"
	logBytesUp   = decisionlog.FBytesUp
	logBytesDown = decisionlog.FBytesDown
	logDuration  = decisionlog.FDurationMS
	logEngine    = "engine"
	logSource    = decisionlog.FSource
)

func (lc logCtx) base(mode string) map[string]any {
	return map[string]any{
		logEngine:    "envoy",
		logSource:    decisionlog.SourceProxy,
		logListener:  lc.listener,
		logPort:      float64(lc.port),
		logSrc:       "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
		logMode:      mode,
		logDst:       "%UPSTREAM_HOST%",
		logBytesUp:   "%BYTES_RECEIVED%",
		logBytesDown: "%BYTES_SENT%",
		logDuration:  "%DURATION%",
	}
}

// nameField is the SNI for TLS chains, else the dedicated destination.
func nameField(name string) string {
	if name == "tls" {
		return "%REQUESTED_SERVER_NAME%"
	}
	return name
}

func (lc logCtx) deny(reason policy.Reason, rule, name string) map[string]any {
	f := lc.base("deny")
	f[logDecision], f[logReason], f[logRule], f[logName] = string(policy.Deny), string(reason), rule, nameField(name)
	return f
}

func (lc logCtx) allow(reason policy.Reason, rule, mode, name string) map[string]any {
	f := lc.base(mode)
	f[logDecision], f[logReason], f[logRule], f[logName] = string(policy.Allow), string(reason), rule, nameField(name)
	return f
}

// with is the HTTP line: the decision comes from the matched route's
// metadata.
func (lc logCtx) with(mode string) map[string]any {
	f := lc.base(mode)
	f[logName] = "%REQ(:AUTHORITY)%"
	f[logDecision] = "%METADATA(ROUTE:" + metadataNamespace + ":decision)%"
	f[logReason] = "%METADATA(ROUTE:" + metadataNamespace + ":reason)%"
	f[logRule] = "%METADATA(ROUTE:" + metadataNamespace + ":rule)%"
	f[logMethod] = "%REQ(:METHOD)%"
	f[logPath] = "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
	f[logStatus] = "%RESPONSE_CODE%"
	return f
}

func (b *builder) accessLog(fields map[string]any) []*accesslog.AccessLog {
	st, err := structpb.NewStruct(fields)
	if err != nil {
		panic(fmt.Sprintf("access log format: %v", err)) // only strings and numbers go in
	}
	format := &core.SubstitutionFormatString{
		Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: st},
	}
	if b.opts.AccessLogPath == "" {
		return []*accesslog.AccessLog{{
			Name: "envoy.access_loggers.stdout",
			ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(&streamlog.StdoutAccessLog{
				AccessLogFormat: &streamlog.StdoutAccessLog_LogFormat{LogFormat: format},
			})},
		}}
	}
	return []*accesslog.AccessLog{{
		Name: "envoy.access_loggers.file",
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(&filelog.FileAccessLog{
			Path:            b.opts.AccessLogPath,
			AccessLogFormat: &filelog.FileAccessLog_LogFormat{LogFormat: format},
		})},
	}}
}

func (b *builder) tcpProxy(stat, clusterName string, log map[string]any) *listener.Filter {
	return networkFilter("envoy.filters.network.tcp_proxy", &tcpproxy.TcpProxy{
		StatPrefix:       stat,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName},
		AccessLog:        b.accessLog(log),
	})
}

// dnsCacheConfig is the one DNS cache of the dynamic forward proxy. Unless
// Options.AllowPrivateUpstreams, answers in verdict.Special (the one list
// of ranges a name may never reach on its own, which the builtin engine
// refuses at dial time) are dropped, so a
// name under a wildcard cannot be pointed at the host or the local network
// (DNS rebinding).
func (b *builder) dnsCacheConfig() *dnscache.DnsCacheConfig {
	c := &dnscache.DnsCacheConfig{
		Name:            dnsCacheName,
		DnsLookupFamily: cluster.Cluster_V4_PREFERRED,
		MaxHosts:        u32(4096),
	}
	if !b.opts.AllowPrivateUpstreams {
		m := &matcherv3.AddressMatcher{}
		for _, p := range pv.Special() {
			m.Ranges = append(m.Ranges, &xdscore.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: u32(uint32(p.Bits()))})
		}
		c.ResolvedAddressFilter = m
	}
	return c
}

// sniDFP resolves the TLS SNI as the upstream name (on the original port)
// for the tcp_proxy to DFPRawCluster that follows it.
func (b *builder) sniDFP(p uint16) *listener.Filter {
	return networkFilter("envoy.filters.network.sni_dynamic_forward_proxy", &snidfp.FilterConfig{
		DnsCacheConfig: b.dnsCacheConfig(),
		PortSpecifier:  &snidfp.FilterConfig_PortValue{PortValue: uint32(p)},
	})
}

// hcm builds an HTTP connection manager. Requests are decided one by one,
// so nothing may turn a connection into a tunnel: the only upgrade is
// WebSocket (its stream is opaque after the handshake, as in the builtin
// engine), CONNECT is not configured (Envoy answers it 403/404) and HTTP/2
// extended CONNECT stays off (Http2ProtocolOptions.allow_connect unset).
// Plain-HTTP chains (plain) use the HTTP/1 codec only: the h2c prior
// knowledge preface is a protocol error there, not a new HTTP/2 session.
func (b *builder) hcm(stat, routeName string, dfp, plain bool, log map[string]any) *listener.Filter {
	var filters []*hcmv3.HttpFilter
	if dfp {
		filters = append(filters, &hcmv3.HttpFilter{
			Name: "envoy.filters.http.dynamic_forward_proxy",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&dfphttp.FilterConfig{
				ImplementationSpecifier: &dfphttp.FilterConfig_DnsCacheConfig{DnsCacheConfig: b.dnsCacheConfig()},
			})},
		})
	}
	filters = append(filters, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerfilter.Router{})},
	})
	codec := hcmv3.HttpConnectionManager_AUTO
	if plain {
		codec = hcmv3.HttpConnectionManager_HTTP1
	}
	return networkFilter("envoy.filters.network.http_connection_manager", &hcmv3.HttpConnectionManager{
		StatPrefix:     stat,
		CodecType:      codec,
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: websocketUpgrade}},
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: filters,
		// The path is routed on and forwarded as sent, never rewritten
		// (invariant 9); the routes refuse the spellings whose readings
		// could differ (paths.go).
		NormalizePath:                wrapperspb.Bool(false),
		MergeSlashes:                 false,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		AccessLog:                    b.accessLog(log),
	})
}

// downstreamTLS terminates TLS with the SDS secret name.
func downstreamTLS(secret string) *core.TransportSocket {
	return &core.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: secret, SdsConfig: adsSource()}},
				AlpnProtocols:                  []string{"h2", "http/1.1"},
			},
		})},
	}
}

// upstreamTLS verifies the upstream against the trust roots; name empty
// means the dynamic forward proxy sets SNI and SAN from the host.
func (b *builder) upstreamTLS(name string) *core.TransportSocket {
	vc := &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: b.opts.TrustedCAFile}},
	}
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}}
	if name != "" {
		ctx.Sni = name
		vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_DNS,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}},
		}}
	}
	return &core.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
	}
}

// dnsCluster adds (once) the LOGICAL_DNS cluster that resolves name itself
// and dials port, with upstream TLS when tlsUp, and returns its name.
func (b *builder) dnsCluster(name string, port uint16, tlsUp bool) string {
	kind := "raw"
	if tlsUp {
		kind = "tls"
	}
	cname := kind + ":" + name + ":" + strconv.Itoa(int(port))
	if _, ok := b.clusters[cname]; ok {
		return cname
	}
	c := &cluster.Cluster{
		Name:                 cname,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_LOGICAL_DNS},
		ConnectTimeout:       durationpb.New(connectTimeout),
		DnsLookupFamily:      cluster.Cluster_V4_PREFERRED,
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: cname,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(name, port, core.SocketAddress_TCP),
				}},
			}}}},
		},
	}
	if tlsUp {
		c.TransportSocket = b.upstreamTLS(name)
	}
	b.clusters[cname] = c
	return cname
}

// dfpCluster is the dynamic forward proxy cluster: the upstream is the
// SNI/Host name, resolved by Envoy's DNS cache, never the client's address.
func (b *builder) dfpCluster(name string, tlsUp bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(connectTimeout),
		LbPolicy:       cluster.Cluster_CLUSTER_PROVIDED,
		ClusterDiscoveryType: &cluster.Cluster_ClusterType{ClusterType: &cluster.Cluster_CustomClusterType{
			Name: "envoy.clusters.dynamic_forward_proxy",
			TypedConfig: mustAny(&dfpcluster.ClusterConfig{
				ClusterImplementationSpecifier: &dfpcluster.ClusterConfig_DnsCacheConfig{DnsCacheConfig: b.dnsCacheConfig()},
			}),
		}},
	}
	if tlsUp {
		c.TransportSocket = b.upstreamTLS("")
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpopts.HttpProtocolOptions{
				UpstreamHttpProtocolOptions: &core.UpstreamHttpProtocolOptions{AutoSni: true, AutoSanValidation: true},
				UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}},
				}},
			}),
		}
	}
	return c
}

// denyCluster has no endpoints: a tcp_proxy to it closes the downstream
// connection immediately ("no healthy upstream") after logging it.
func denyCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 DenyCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment:       &endpoint.ClusterLoadAssignment{ClusterName: DenyCluster},
	}
}

// udpListener proxies datagrams of allowed sources to upstream; the
// matcher routes on the source address and drops everything else.
func (b *builder) udpListener(l model.Listener, allowed []ep, upstream string, log map[string]any) (*listener.Listener, error) {
	routes := map[string]*xdsmatcher.Matcher_OnMatch{}
	for _, e := range allowed {
		routes[e.ip.String()] = &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Action{
			Action: &xdscore.TypedExtensionConfig{Name: "route", TypedConfig: mustAny(&udpproxy.Route{Cluster: upstream})},
		}}
	}
	m := &xdsmatcher.Matcher{MatcherType: &xdsmatcher.Matcher_MatcherTree_{MatcherTree: &xdsmatcher.Matcher_MatcherTree{
		Input: &xdscore.TypedExtensionConfig{
			Name:        "envoy.matching.inputs.source_ip",
			TypedConfig: mustAny(&netinputs.SourceIPInput{}),
		},
		TreeType: &xdsmatcher.Matcher_MatcherTree_ExactMatchMap{ExactMatchMap: &xdsmatcher.Matcher_MatcherTree_MatchMap{Map: routes}},
	}}}
	cfg := &udpproxy.UdpProxyConfig{
		StatPrefix:     l.Key,
		RouteSpecifier: &udpproxy.UdpProxyConfig_Matcher{Matcher: m},
		AccessLog:      b.accessLog(log),
	}
	return &listener.Listener{
		Name:              l.Key,
		Address:           socketAddress(b.opts.BindAddress, l.Port, core.SocketAddress_UDP),
		UdpListenerConfig: &listener.UdpListenerConfig{},
		ListenerFilters: []*listener.ListenerFilter{
			listenerFilter("envoy.filters.udp_listener.udp_proxy", cfg),
		},
	}, nil
}
