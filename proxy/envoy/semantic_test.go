package envoy

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filelog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// The tests in this file emulate the parts of Envoy's behaviour the
// translation relies on, as documented for v3: filter chain selection
// (server name exact, then the longest "*." suffix, then chains without
// server names; then transport protocol; then the longest source prefix,
// then chains without one; no backtracking; else the default chain) and
// virtual host selection (exact domain, longest "*." suffix, then "*"),
// routes in order. They decide flows of the comprehensive fixture end to end
// on the generated resources.

// selectChain returns the chain Envoy would pick.
func selectChain(l *listener.Listener, sni, transport string, src netip.Addr) *listener.FilterChain {
	chains := l.GetFilterChains()
	// 1. server names.
	pick := func(cands []*listener.FilterChain, want string) []*listener.FilterChain {
		var out []*listener.FilterChain
		for _, fc := range cands {
			for _, n := range fc.GetFilterChainMatch().GetServerNames() {
				if n == want {
					out = append(out, fc)
				}
			}
		}
		return out
	}
	var cands []*listener.FilterChain
	if sni != "" {
		cands = pick(chains, sni)
		for _, fb := range fallbacks(sni) {
			if len(cands) > 0 {
				break
			}
			cands = pick(chains, fb)
		}
	}
	if len(cands) == 0 {
		for _, fc := range chains {
			if len(fc.GetFilterChainMatch().GetServerNames()) == 0 {
				cands = append(cands, fc)
			}
		}
	}
	// 2. transport protocol.
	var tp, anyTP []*listener.FilterChain
	for _, fc := range cands {
		switch fc.GetFilterChainMatch().GetTransportProtocol() {
		case transport:
			tp = append(tp, fc)
		case "":
			anyTP = append(anyTP, fc)
		}
	}
	if len(tp) == 0 {
		tp = anyTP
	}
	// 3. source prefix, longest first.
	var best *listener.FilterChain
	bestLen := -1
	for _, fc := range tp {
		ranges := fc.GetFilterChainMatch().GetSourcePrefixRanges()
		if len(ranges) == 0 && bestLen < 0 {
			best, bestLen = fc, 0
			continue
		}
		for _, r := range ranges {
			p := netip.MustParsePrefix(r.GetAddressPrefix() + "/" + strconv.Itoa(int(r.GetPrefixLen().GetValue())))
			if p.Contains(src) && p.Bits() > bestLen {
				best, bestLen = fc, p.Bits()
			}
		}
	}
	if best == nil {
		return l.GetDefaultFilterChain()
	}
	return best
}

// outcome describes what a chain does: "deny:<reason>", "pass:<cluster>",
// "inspect:<route config>" or "http:<route config>".
func outcome(t *testing.T, fc *listener.FilterChain) string {
	t.Helper()
	last := fc.GetFilters()[len(fc.GetFilters())-1]
	m, err := last.GetTypedConfig().UnmarshalNew()
	require.NoError(t, err)
	switch cfg := m.(type) {
	case *tcpproxy.TcpProxy:
		if cfg.GetCluster() == DenyCluster {
			return "deny:" + logField(t, cfg.GetAccessLog()[0], logReason)
		}
		return "pass:" + cfg.GetCluster()
	case *hcmv3.HttpConnectionManager:
		if fc.GetTransportSocket() != nil {
			return "inspect:" + cfg.GetRds().GetRouteConfigName()
		}
		return "http:" + cfg.GetRds().GetRouteConfigName()
	}
	t.Fatalf("unexpected terminal filter %T", m)
	return ""
}

// request routes one HTTP request: "<cluster>" or "403:<reason>".
func request(t *testing.T, rc *route.RouteConfiguration, host, method, path string) string {
	t.Helper()
	r := matchRoute(t, rc, host, method, path)
	if dr := r.GetDirectResponse(); dr != nil {
		require.EqualValues(t, 403, dr.GetStatus())
		var hdr string
		for _, h := range r.GetResponseHeadersToAdd() {
			if h.GetHeader().GetKey() == DeniedHeader {
				hdr = h.GetHeader().GetValue()
			}
		}
		reason := routeReason(r)
		require.Contains(t, dr.GetBody().GetInlineString(), ": "+reason+"\n")
		require.True(t, strings.HasPrefix(dr.GetBody().GetInlineString(), "clawker-fw denied "), dr.GetBody().GetInlineString())
		require.True(t, strings.HasPrefix(hdr, "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% ("+reason+"); "),
			"every 403 carries %s, got %q", DeniedHeader, hdr)
		return "403:" + reason
	}
	return r.GetRoute().GetCluster()
}

// routeReason is the decision reason of a route (its metadata, which the
// access log reads).
func routeReason(r *route.Route) string {
	return r.GetMetadata().GetFilterMetadata()[metadataNamespace].GetFields()["reason"].GetStringValue()
}

// matchRoute returns the route Envoy picks for one HTTP request: the
// virtual host by domain (exact, then the longest "*." suffix, then "*"),
// then the first route whose path and headers match.
func matchRoute(t *testing.T, rc *route.RouteConfiguration, host, method, path string) *route.Route {
	t.Helper()
	var vh *route.VirtualHost
	find := func(d string) *route.VirtualHost {
		for _, v := range rc.GetVirtualHosts() {
			for _, dd := range v.GetDomains() {
				if dd == d {
					return v
				}
			}
		}
		return nil
	}
	vh = find(host)
	if vh == nil {
		h, port, hasPort := strings.Cut(host, ":")
		for _, fb := range fallbacks(h) {
			if hasPort {
				fb += ":" + port
			}
			if vh = find(fb); vh != nil {
				break
			}
		}
	}
	if vh == nil {
		vh = find("*")
	}
	require.NotNil(t, vh, "no virtual host for %s in %s", host, rc.Name)
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		switch {
		case m.GetPrefix() != "":
			if !strings.HasPrefix(path, m.GetPrefix()) {
				continue
			}
		case m.GetSafeRegex() != nil:
			p, _, _ := strings.Cut(path, "?")
			if !regexp.MustCompile("^(?:" + m.GetSafeRegex().GetRegex() + ")$").MatchString(p) {
				continue
			}
		}
		ok := true
		for _, h := range m.GetHeaders() {
			if headerMatches(t, h, method, path) == h.GetInvertMatch() {
				ok = false
			}
		}
		if !ok {
			continue
		}
		return r
	}
	t.Fatalf("no route for %s %s%s in %s", method, host, path, rc.Name)
	return nil
}

// headerMatches evaluates one header matcher (before invert_match) on the
// request's :method or :path, as Envoy's StringMatcher does: exact (with
// ignore_case) or a safe_regex that must match the whole value.
func headerMatches(t *testing.T, h *route.HeaderMatcher, method, path string) bool {
	t.Helper()
	var v string
	switch h.GetName() {
	case ":method":
		v = method
	case ":path":
		v = path
	default:
		t.Fatalf("unexpected header matcher %s", h.GetName())
	}
	sm := h.GetStringMatch()
	require.NotNil(t, sm, "header matcher %s without string_match", h.GetName())
	switch {
	case sm.GetSafeRegex() != nil:
		return regexp.MustCompile("^(?:" + sm.GetSafeRegex().GetRegex() + ")$").MatchString(v)
	case sm.GetIgnoreCase():
		return strings.EqualFold(sm.GetExact(), v)
	}
	return sm.GetExact() == v
}

// logField reads one field of an access log's JSON format.
func logField(t *testing.T, al *accesslog.AccessLog, field string) string {
	t.Helper()
	m, err := al.GetTypedConfig().UnmarshalNew()
	require.NoError(t, err)
	var format *core.SubstitutionFormatString
	switch cfg := m.(type) {
	case *streamlog.StdoutAccessLog:
		format = cfg.GetLogFormat()
	case *filelog.FileAccessLog:
		format = cfg.GetLogFormat()
	default:
		t.Fatalf("unexpected access log %T", m)
	}
	v := format.GetJsonFormat().GetFields()[field]
	require.NotNil(t, v, "access log has no field %s", field)
	if n, ok := v.GetKind().(*structpb.Value_NumberValue); ok {
		return strconv.Itoa(int(n.NumberValue))
	}
	return v.GetStringValue()
}

func listenerByKey(t *testing.T, s *cache.Snapshot, key string) *listener.Listener {
	t.Helper()
	r, ok := s.GetResources(resource.ListenerType)[key]
	require.True(t, ok, "listener %s missing", key)
	return r.(*listener.Listener)
}

func routeByName(t *testing.T, s *cache.Snapshot, name string) *route.RouteConfiguration {
	t.Helper()
	r, ok := s.GetResources(resource.RouteType)[name]
	require.True(t, ok, "route configuration %s missing", name)
	return r.(*route.RouteConfiguration)
}

func TestSemanticsTLS(t *testing.T) {
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	web := listenerByKey(t, out, "web:443")
	unknown := netip.MustParseAddr("10.99.0.200")

	tests := []struct {
		src  netip.Addr
		sni  string
		want string
	}{
		{ipA, "api.example.test", "pass:raw:api.example.test:443"},
		{ipA, "npm.example.test", "pass:raw:npm.example.test:443"},
		{ipA, "x.npm.example.test", "pass:" + DFPRawCluster},
		{ipA, "a.b.npm.example.test", "pass:" + DFPRawCluster},
		{ipA, "bad.npm.example.test", "deny:deny-rule"},
		{ipA, "x.bad.npm.example.test", "deny:deny-rule"},
		{ipA, "git.example.test", "inspect:web:443/https/g1"},
		{ipA, "other.example.test", "deny:no-rule"},
		{ipA, "unrelated.org", "deny:no-rule"},
		{ipA, "", "deny:no-rule"},
		{ipB, "api.example.test", "deny:deny-rule"},
		{ipB, "x.api.example.test", "deny:deny-rule"},
		{ipB, "foo.example.test", "inspect:web:443/https/g2"},
		{ipB, "example.test", "inspect:web:443/https/g2"},
		{ipB, "bad.npm.example.test", "inspect:web:443/https/g2"},
		{ipB, "git.example.test", "inspect:web:443/https/g2"},
		{ipPend, "api.example.test", "deny:pending"},
		{ipPend, "anything.org", "deny:pending"},
		{ipLabel, "x.npm.example.test", "deny:bad-label"},
		{ipLabel, "api.example.test", "deny:bad-label"},
		{ipLabel, "anything.org", "deny:bad-label"},
		{ipBypass, "api.example.test", "pass:raw:api.example.test:443"},
		{ipBypass, "x.npm.example.test", "pass:" + DFPRawCluster},
		{ipBypass, "anything.org", "pass:" + DFPRawCluster},
		{unknown, "api.example.test", "deny:unknown-endpoint"},
		{unknown, "anything.org", "deny:unknown-endpoint"},
		{ipA, "ssh.example.test", "deny:port-not-allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.src.String()+"/"+tt.sni, func(t *testing.T) {
			fc := selectChain(web, tt.sni, "tls", tt.src)
			require.Equal(t, tt.want, outcome(t, fc), "chain %s", fc.GetName())
			if strings.HasPrefix(tt.want, "inspect:") {
				require.Contains(t, fc.GetFilterChainMatch().GetServerNames(), keyOf(tt.sni, fc))
			}
		})
	}
}

// keyOf is the server name of fc that matched sni.
func keyOf(sni string, fc *listener.FilterChain) string {
	for _, n := range fc.GetFilterChainMatch().GetServerNames() {
		if n == sni {
			return n
		}
	}
	for _, fb := range fallbacks(sni) {
		for _, n := range fc.GetFilterChainMatch().GetServerNames() {
			if n == fb {
				return n
			}
		}
	}
	return ""
}

func TestSemanticsHTTP(t *testing.T) {
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	unknown := netip.MustParseAddr("10.99.0.200")

	tests := []struct {
		listener string
		tls      bool
		src      netip.Addr
		sni      string
		host     string
		method   string
		path     string
		want     string
	}{
		// Inspected: path and method rules of git.example.test.
		{"web:443", true, ipA, "git.example.test", "git.example.test", "GET", "/repos/x/y", "tls:git.example.test:443"},
		{"web:443", true, ipA, "git.example.test", "git.example.test", "HEAD", "/repos/x", "tls:git.example.test:443"},
		{"web:443", true, ipA, "git.example.test", "git.example.test", "POST", "/repos/x", "403:path-rule"},
		{"web:443", true, ipA, "git.example.test", "git.example.test", "GET", "/v2/admin/users", "403:path-rule"},
		{"web:443", true, ipA, "git.example.test", "git.example.test", "POST", "/api/graphql", "tls:git.example.test:443"},
		{"web:443", true, ipA, "git.example.test", "git.example.test", "GET", "/", "403:path-rule"},
		{"web:443", true, ipA, "git.example.test", "git.example.test:443", "GET", "/api/x", "tls:git.example.test:443"},
		// Host differing from SNI is decided by the host's own rule.
		{"web:443", true, ipA, "git.example.test", "bad.npm.example.test", "GET", "/", "403:deny-rule"},
		{"web:443", true, ipA, "git.example.test", "evil.org", "GET", "/", "403:no-rule"},
		// Inspected wildcard of B.
		{"web:443", true, ipB, "foo.example.test", "foo.example.test", "GET", "/", DFPTLSCluster},
		{"web:443", true, ipB, "foo.example.test", "api.example.test", "GET", "/", "403:deny-rule"},
		{"web:443", true, ipB, "example.test", "example.test", "GET", "/", "tls:example.test:443"},
		// Plain HTTP on port 80.
		{"web:80", false, ipA, "", "plain.example.test", "GET", "/", "raw:plain.example.test:80"},
		{"web:80", false, ipA, "", "plain.example.test:80", "GET", "/", "raw:plain.example.test:80"},
		{"web:80", false, ipA, "", "x.npm.example.test", "GET", "/", DFPRawCluster},
		{"web:80", false, ipA, "", "bad.npm.example.test", "GET", "/", "403:deny-rule"},
		{"web:80", false, ipA, "", "api.example.test", "GET", "/", "403:port-not-allowed"},
		{"web:80", false, ipB, "", "plain.example.test", "GET", "/", "403:port-not-allowed"},
		{"web:80", false, ipB, "", "nothing.org", "GET", "/", "403:no-rule"},
		{"web:80", false, ipPend, "", "plain.example.test", "GET", "/", "403:pending"},
		{"web:80", false, ipLabel, "", "plain.example.test", "GET", "/", "403:bad-label"},
		{"web:80", false, unknown, "", "plain.example.test", "GET", "/", "403:unknown-endpoint"},
		{"web:80", false, ipBypass, "", "anything.org", "GET", "/", DFPRawCluster},
		// Plain HTTP on the https port is not allowed by an https rule.
		{"web:443", false, ipA, "", "api.example.test", "GET", "/", "403:proto-mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.listener+"/"+tt.src.String()+"/"+tt.host+tt.path+"/"+tt.method, func(t *testing.T) {
			l := listenerByKey(t, out, tt.listener)
			transport := "raw_buffer"
			if tt.tls {
				transport = "tls"
			}
			fc := selectChain(l, tt.sni, transport, tt.src)
			o := outcome(t, fc)
			prefix := "http:"
			if tt.tls {
				prefix = "inspect:"
			}
			require.True(t, strings.HasPrefix(o, prefix), "chain %s does %s", fc.GetName(), o)
			rc := routeByName(t, out, strings.TrimPrefix(o, prefix))
			require.Equal(t, tt.want, request(t, rc, tt.host, tt.method, tt.path))
		})
	}
}

func TestSemanticsDedicated(t *testing.T) {
	snap := comprehensive()
	m := buildModel(t, snap)
	out, err := Translate(snap, m, testOptions(t))
	require.NoError(t, err)

	for _, key := range []string{
		model.DedicatedKey("ssh", "ssh.example.test", 22),
		model.DedicatedKey("tcp", "db.example.test", 5432),
		model.DedicatedKey("tcp", "db.example.test", 5433),
	} {
		t.Run(key, func(t *testing.T) {
			l := listenerByKey(t, out, key)
			parts := strings.Split(key, ":")
			wantCluster := "raw:" + parts[2] + ":" + parts[3]
			for src, want := range map[netip.Addr]string{
				ipA:                                "pass:" + wantCluster,
				ipBypass:                           "pass:" + wantCluster,
				ipB:                                "deny:port-not-allowed",
				ipPend:                             "deny:pending",
				ipLabel:                            "deny:bad-label",
				netip.MustParseAddr("10.99.0.200"): "deny:unknown-endpoint",
			} {
				require.Equal(t, want, outcome(t, selectChain(l, "", "raw_buffer", src)), "%s from %s", key, src)
			}
			ml, ok := m.Listener(uint16(l.GetAddress().GetSocketAddress().GetPortValue()))
			require.True(t, ok)
			require.Equal(t, key, ml.Key)
		})
	}

	t.Run("udp", func(t *testing.T) {
		l := listenerByKey(t, out, model.DedicatedKey("udp", "dns.example.test", 5353))
		require.NotNil(t, l.GetUdpListenerConfig())
		require.Equal(t, "UDP", l.GetAddress().GetSocketAddress().GetProtocol().String())
		require.Len(t, l.GetListenerFilters(), 1)
		cfg, err := l.GetListenerFilters()[0].GetTypedConfig().UnmarshalNew()
		require.NoError(t, err)
		routes := cfg.(*udpproxy.UdpProxyConfig).GetMatcher().GetMatcherTree().GetExactMatchMap().GetMap()
		require.Len(t, routes, 2)
		for _, ip := range []netip.Addr{ipA, ipBypass} {
			om, ok := routes[ip.String()]
			require.True(t, ok, "%s must be routed", ip)
			r, err := om.GetAction().GetTypedConfig().UnmarshalNew()
			require.NoError(t, err)
			require.Equal(t, "raw:dns.example.test:5353", r.(*udpproxy.Route).GetCluster())
		}
	})
}

func TestAccessLogFields(t *testing.T) {
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	web := listenerByKey(t, out, "web:443")

	pass := selectChain(web, "api.example.test", "tls", ipA)
	m, err := pass.GetFilters()[0].GetTypedConfig().UnmarshalNew()
	require.NoError(t, err)
	al := m.(*tcpproxy.TcpProxy).GetAccessLog()[0]
	require.Equal(t, "envoy.access_loggers.stdout", al.GetName())
	for field, want := range map[string]string{
		logSrc:      "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
		logName:     "%REQUESTED_SERVER_NAME%",
		logPort:     "443",
		logListener: "web:443",
		logDecision: "allow",
		logReason:   "allowed",
		logRule:     "api.example.test",
		logMode:     "passthrough",
	} {
		require.Equal(t, want, logField(t, al, field), field)
	}

	insp := selectChain(web, "git.example.test", "tls", ipA)
	m, err = insp.GetFilters()[0].GetTypedConfig().UnmarshalNew()
	require.NoError(t, err)
	al = m.(*hcmv3.HttpConnectionManager).GetAccessLog()[0]
	for field, want := range map[string]string{
		logName:     "%REQ(:AUTHORITY)%",
		logDecision: "%METADATA(ROUTE:clawker:decision)%",
		logReason:   "%METADATA(ROUTE:clawker:reason)%",
		logMethod:   "%REQ(:METHOD)%",
		logStatus:   "%RESPONSE_CODE%",
	} {
		require.Equal(t, want, logField(t, al, field), field)
	}

	opts := testOptions(t)
	opts.AccessLogPath = "/tmp/x.log"
	out, err = Translate(snap, buildModel(t, snap), opts)
	require.NoError(t, err)
	def := listenerByKey(t, out, "web:443").GetDefaultFilterChain()
	m, err = def.GetFilters()[0].GetTypedConfig().UnmarshalNew()
	require.NoError(t, err)
	al = m.(*tcpproxy.TcpProxy).GetAccessLog()[0]
	require.Equal(t, "envoy.access_loggers.file", al.GetName())
	require.Equal(t, "deny", logField(t, al, logDecision))
}

func TestWildcardServerNames(t *testing.T) {
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	names := map[string]bool{}
	for _, fc := range listenerByKey(t, out, "web:443").GetFilterChains() {
		for _, n := range fc.GetFilterChainMatch().GetServerNames() {
			names[n] = true
		}
	}
	for _, want := range []string{"npm.example.test", "*.npm.example.test", "example.test", "*.example.test", "api.example.test", "git.example.test"} {
		require.True(t, names[want], "server name %s missing", want)
	}
	for n := range names {
		require.False(t, strings.HasPrefix(n, "."), "server name %s is not an Envoy form", n)
	}
	// The wildcard's inspected leaf carries both SANs.
	sec := out.GetResources(resource.SecretType)["leaf:*.example.test"]
	require.NotNil(t, sec)
}

func TestDenialText(t *testing.T) {
	tests := []struct {
		d          denial
		wantHeader string
		wantBody   string
	}{
		{
			denial{key: "api.example.test", port: 443, proto: policy.ProtoHTTPS, reason: policy.ReasonDenyRule, rule: "label clawker.deny=api.example.test"},
			"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% (deny-rule); a deny rule (label clawker.deny=api.example.test) covers api.example.test; remove it to allow",
			"clawker-fw denied api.example.test:443: deny-rule\na deny rule (label clawker.deny=api.example.test) covers api.example.test; remove it to allow\n",
		},
		{
			denial{port: 80, proto: policy.ProtoHTTP, reason: policy.ReasonNoRule},
			"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% (no-rule); allow it with the container label clawker.allow=http://%REQ(:AUTHORITY)%, the network option -o clawker.allow=http://%REQ(:AUTHORITY)%, or `clawker-fw rules add NETWORK http://%REQ(:AUTHORITY)%`",
			"clawker-fw denied this host on port 80: no-rule\nallow it with the container label clawker.allow=http://<host>, the network option -o clawker.allow=http://<host>, or `clawker-fw rules add NETWORK http://<host>`\n",
		},
		{
			denial{key: "git.example.test", port: 443, proto: policy.ProtoHTTPS, reason: policy.ReasonPath, rule: "git.example.test", detail: "path rule /a%2F"},
			"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% (path-rule); the request path is denied by path rule /a%%2F (git.example.test)",
			"clawker-fw denied git.example.test:443: path-rule\nthe request path is denied by path rule /a%2F (git.example.test)\n",
		},
	}
	for _, tt := range tests {
		t.Run(string(tt.d.reason), func(t *testing.T) {
			require.Equal(t, tt.wantHeader, tt.d.header())
			require.Equal(t, tt.wantBody, tt.d.body())
			// The text is the builtin engine's (verdict.Fix) with the name
			// Envoy fills in.
			if tt.d.exact() {
				require.Equal(t, tt.wantBody[strings.Index(tt.wantBody, "\n")+1:], tt.d.hint(tt.d.key)+"\n")
			}
		})
	}
}
