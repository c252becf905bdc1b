// Package envoy is clawker-fw's optional Envoy data plane: it translates the
// listener/route model (proxy/model) and the compiled policy snapshot into
// Envoy v3 resources, serves them to an Envoy sidecar over ADS with
// go-control-plane, and renders the sidecar's bootstrap.
//
// The package is validated in Go only (proto validation, snapshot
// consistency, semantic checks, golden files and a real ADS client): no
// Envoy binary can be obtained where the project's CI runs. See README.md.
//
// What Translate builds, per model listener:
//
//   - web listeners (model.KindWeb, one per original port P): tls_inspector
//     and http_inspector listener filters, and filter chains matched on
//     server_names and source_prefix_ranges (the /32s of the endpoints whose
//     policy gives that verdict). Envoy picks the most specific server name
//     first and never backtracks to a broader one when the source does not
//     match, so every name key used by ANY endpoint's allows or denies gets
//     chains for EVERY endpoint (allow or deny), decided with
//     Policy.MatchName on the key. Plain HTTP is matched on
//     transport_protocol raw_buffer and the source, and decided per Host by
//     the virtual hosts of an RDS route configuration.
//   - TLS passthrough chains proxy to a cluster that resolves the NAME: a
//     LOGICAL_DNS cluster per exact name:port, or for wildcard keys the SNI
//     dynamic forward proxy (never ORIGINAL_DST, invariant 7).
//   - inspected chains (path rules, Inspect, InspectAll) terminate TLS with a
//     leaf of the plugin CA delivered over SDS (Secret resources in the same
//     ADS snapshot, so a CA rotation or renewal updates secrets without
//     touching listeners) and route per domain, path (prefix or safe_regex)
//     and method (:method header match), denying with a 403 direct response
//     carrying the X-Clawker-Denied header; upstream TLS is verified against
//     Options.TrustedCAFile with the name as SNI and required SAN.
//   - dedicated listeners (ssh/tcp/udp) proxy to the rule's destination name
//     with tcp_proxy, or udp_proxy whose matcher routes only allowed sources.
//   - every connection or request is logged as one JSON line with the same
//     field names as the builtin engine's decision line.
//
// The transparent and CA listeners are not translated: the plugin keeps
// serving those in Go whichever engine is selected.
package envoy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"sort"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// DeniedHeader is set on every 403 the proxy answers itself, with the
// decision reason as its value (the builtin engine uses the same header).
const DeniedHeader = "X-Clawker-Denied"

// Well-known cluster names.
const (
	// DenyCluster has no endpoints: tcp_proxy to it closes the connection
	// at once, after logging the denial.
	DenyCluster = "deny"
	// DFPRawCluster and DFPTLSCluster are dynamic forward proxy clusters
	// (plain/passthrough and upstream-TLS) for names under wildcard rules.
	DFPRawCluster = "dfp_raw"
	DFPTLSCluster = "dfp_tls"
	// dnsCacheName is the one DNS cache every DFP filter and cluster shares.
	dnsCacheName = "clawker_dns"
)

// DefaultTrustedCAFile is where the plugin rootfs carries the trust roots
// for upstream TLS (a copy of the host's bundle or x509roots/fallback).
const DefaultTrustedCAFile = "/etc/ssl/certs/ca-certificates.crt"

// CertSource issues the leaves used to terminate inspected TLS; the plugin's
// *ca.CA satisfies it.
type CertSource interface {
	Leaf(serverName string) (*tls.Certificate, error)
	LeafFor(pattern string) (*tls.Certificate, error)
}

// Options configures Translate.
type Options struct {
	// BindAddress is the address listeners bind (default 0.0.0.0; tests
	// use 127.0.0.1).
	BindAddress string
	// Certs issues leaves for inspected chains; required only when some
	// chain inspects.
	Certs CertSource
	// TrustedCAFile verifies upstream TLS (default DefaultTrustedCAFile).
	TrustedCAFile string
	// AccessLogPath is the access log file; "" logs to Envoy's stdout.
	AccessLogPath string
	// Now decides bypass expiry (default time.Now).
	Now func() time.Time
	// AllowPrivateUpstreams lets names under wildcard rules resolve to
	// private and loopback addresses (tests; see dnsCacheConfig). Exact
	// names use LOGICAL_DNS clusters, which Envoy cannot filter this way.
	AllowPrivateUpstreams bool
}

func (o Options) withDefaults() Options {
	if o.BindAddress == "" {
		o.BindAddress = "0.0.0.0"
	}
	if o.TrustedCAFile == "" {
		o.TrustedCAFile = DefaultTrustedCAFile
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Translate builds the Envoy resources of one snapshot generation: the
// version of every resource type is the snapshot generation.
func Translate(snap *policy.Snapshot, m *model.Model, opts Options) (*cache.Snapshot, error) {
	b := &builder{
		opts:      opts.withDefaults(),
		clusters:  map[string]types.Resource{},
		routes:    map[string]*route.RouteConfiguration{},
		routesDFP: map[string]bool{},
		secrets:   map[string]types.Resource{},
	}
	b.endpoints(snap)
	var listeners []types.Resource
	for _, l := range m.Listeners {
		switch l.Kind {
		case model.KindWeb:
			ln, err := b.webListener(l)
			if err != nil {
				return nil, err
			}
			listeners = append(listeners, ln)
		case model.KindDedicated:
			ln, err := b.dedicatedListener(l)
			if err != nil {
				return nil, err
			}
			if ln != nil {
				listeners = append(listeners, ln)
			}
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	res := map[resource.Type][]types.Resource{
		resource.ListenerType: listeners,
		resource.ClusterType:  sortedValues(b.clusters),
		resource.SecretType:   sortedValues(b.secrets),
	}
	routeNames := make([]string, 0, len(b.routes))
	for n := range b.routes {
		routeNames = append(routeNames, n)
	}
	sort.Strings(routeNames)
	for _, n := range routeNames {
		res[resource.RouteType] = append(res[resource.RouteType], b.routes[n])
	}
	s, err := cache.NewSnapshot(strconv.FormatUint(snap.Generation, 10), res)
	if err != nil {
		return nil, fmt.Errorf("build envoy snapshot %d: %w", snap.Generation, err)
	}
	return s, nil
}

func sortedValues(m map[string]types.Resource) []types.Resource {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]types.Resource, 0, len(names))
	for _, n := range names {
		out = append(out, m[n])
	}
	return out
}

// ep is one endpoint with an effective policy.
type ep struct {
	index uint32
	ip    netip.Addr
	name  string // container name or id, for logs
	pol   *policy.Policy
}

type builder struct {
	opts     Options
	eps      []ep
	clusters map[string]types.Resource
	routes   map[string]*route.RouteConfiguration
	// routesDFP records which route configurations use the dynamic
	// forward proxy (their HCM needs its HTTP filter).
	routesDFP map[string]bool
	secrets   map[string]types.Resource
	err       error // first error of a nested builder
}

// endpoints collects the endpoints with an effective policy, by index.
// Pending endpoints have none: Envoy cannot wait for their policy, so their
// flows get the listener's default (deny) chain until the next snapshot.
func (b *builder) endpoints(snap *policy.Snapshot) {
	now := b.opts.Now()
	for _, e := range snap.Endpoints {
		pol := e.Effective(now)
		if pol == nil || !e.IP.IsValid() {
			continue
		}
		name := e.ContainerName
		if name == "" {
			name = e.ContainerID
		}
		b.eps = append(b.eps, ep{index: e.Index, ip: e.IP.Unmap(), name: name, pol: pol})
	}
	sort.Slice(b.eps, func(i, j int) bool { return b.eps[i].index < b.eps[j].index })
}

// verdict is one endpoint's decision for one name key on one web port.
type verdict struct {
	allowed bool
	reason  policy.Reason
	rule    string // the pattern that decided (allow entry or deny)
	entry   *policy.Allowed
	tls     bool // https allowed on the port
	plain   bool // http allowed on the port
	inspect bool
	bypass  bool
}

// signature identifies verdicts that can share one chain or virtual host.
func (v verdict) signature(tlsSide bool) string {
	ok := v.allowed && (tlsSide && v.tls || !tlsSide && v.plain)
	if !ok {
		reason := v.reason
		if v.allowed {
			reason = policy.ReasonPortNotAllow
		}
		return "deny|" + string(reason) + "|" + v.rule
	}
	paths := ""
	if v.entry != nil && len(v.entry.Paths) > 0 {
		j, _ := json.Marshal(v.entry.Paths)
		paths = string(j) + string(v.entry.PathDefault)
	}
	return fmt.Sprintf("allow|%t|%t|%s|%s", v.inspect, v.bypass, v.rule, paths)
}

func (v verdict) allowedOn(tlsSide bool) bool {
	return v.allowed && (tlsSide && v.tls || !tlsSide && v.plain)
}

func (v verdict) denyReason() policy.Reason {
	if v.allowed {
		return policy.ReasonPortNotAllow
	}
	return v.reason
}

// keysFor lists the server-name keys of a pattern: an exact name is its own
// key, a wildcard ".apex" (and a deny root, which covers its subtree) yields
// the apex and "*.apex".
func keysFor(pattern string, subtree bool) []string {
	root, wild := strings.CutPrefix(pattern, ".")
	if wild || subtree {
		return []string{root, "*." + root}
	}
	return []string{root}
}

// webKeys collects every name key on web port p, over all endpoints.
func (b *builder) webKeys(p uint16) []string {
	set := map[string]bool{}
	for _, e := range b.eps {
		for i := range e.pol.Allows {
			a := &e.pol.Allows[i]
			if a.Prefix.IsValid() {
				continue
			}
			if tlsOK, plainOK := webProto(a, p); !tlsOK && !plainOK {
				continue
			}
			for _, k := range keysFor(a.Pattern, false) {
				set[k] = true
			}
		}
		for _, d := range e.pol.Denies {
			if d.Prefix.IsValid() {
				continue
			}
			for _, k := range keysFor(d.Pattern, true) {
				set[k] = true
			}
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// webProto reports which web protocols a's ranges allow on port p.
func webProto(a *policy.Allowed, p uint16) (tlsOK, plainOK bool) {
	for _, r := range a.Ports {
		if !r.Contains(p, policy.L4TCP) {
			continue
		}
		switch r.Proto {
		case policy.ProtoHTTPS:
			tlsOK = true
		case policy.ProtoHTTP:
			plainOK = true
		}
	}
	return tlsOK, plainOK
}

// decide is Policy.MatchName for a key: "*.apex" is probed with the literal
// "*.apex", which every wildcard and deny covering the apex's subtree covers
// and no exact pattern equals.
func decide(pol *policy.Policy, key string, p uint16) verdict {
	m := pol.MatchName(key, p, policy.L4TCP)
	v := verdict{allowed: m.Allowed, reason: m.Reason}
	switch {
	case m.Deny != nil:
		v.rule = m.Deny.Pattern
	case m.Entry != nil:
		v.rule = m.Entry.Pattern
	}
	if !m.Allowed {
		return v
	}
	if m.Entry == nil { // bypass: everything, passthrough
		v.bypass, v.tls, v.plain, v.rule = true, true, true, "*"
		return v
	}
	v.entry = m.Entry
	v.tls, v.plain = webProto(m.Entry, p)
	v.inspect = m.Entry.Inspect || pol.InspectAll || len(m.Entry.Paths) > 0
	if !v.tls && !v.plain {
		v.allowed, v.reason = false, policy.ReasonPortNotAllow
	}
	return v
}

func prefixes(eps []ep) []*core.CidrRange {
	out := make([]*core.CidrRange, 0, len(eps))
	for _, e := range eps {
		bits := uint32(32)
		if e.ip.Is6() {
			bits = 128
		}
		out = append(out, &core.CidrRange{AddressPrefix: e.ip.String(), PrefixLen: u32(bits)})
	}
	return out
}

// fallbacks lists the wildcard keys Envoy falls back to, most specific
// first, for names a key matches: "a.b.c" -> "*.b.c", "*.c"; "*.b.c" ->
// "*.c". Server names and virtual host domains both fall back this way (and
// then to the catch-all).
func fallbacks(key string) []string {
	name := strings.TrimPrefix(key, "*.")
	var out []string
	for {
		i := strings.IndexByte(name, '.')
		if i < 0 {
			return out
		}
		name = name[i+1:]
		out = append(out, "*."+name)
	}
}

// webListener builds the listener of one original web port.
//
// Chains and virtual hosts are pruned: a key is kept only when some verdict
// at the key or at a broader key it would otherwise fall back to allows;
// everything else is denied by the listener's default chain or the route
// configuration's catch-all. Every kept key has a chain for every known
// endpoint (allow or deny), so the result does not depend on whether Envoy
// backtracks to a broader server name when the source does not match (it
// does not).
func (b *builder) webListener(l model.Listener) (*listener.Listener, error) {
	p := l.OrigPort
	keys := b.webKeys(p)
	lc := logCtx{listener: l.Key, port: p}
	keyPos := make(map[string]int, len(keys))
	for k, key := range keys {
		keyPos[key] = k
	}

	// verdicts[i][k]: endpoint i, key k.
	verdicts := make([][]verdict, len(b.eps))
	for i, e := range b.eps {
		verdicts[i] = make([]verdict, len(keys))
		for k, key := range keys {
			verdicts[i][k] = decide(e.pol, key, p)
		}
	}
	// needed reports whether endpoint i's verdict at key k matters on one
	// side: it or a fallback of it allows, or the catch-all does (bypass).
	needed := func(i, k int, tlsSide bool) bool {
		if b.eps[i].pol.AllowAll || verdicts[i][k].allowedOn(tlsSide) {
			return true
		}
		for _, fb := range fallbacks(keys[k]) {
			if j, ok := keyPos[fb]; ok && verdicts[i][j].allowedOn(tlsSide) {
				return true
			}
		}
		return false
	}

	// Route configurations: endpoints whose needed verdicts are identical
	// share one per side ("https" for inspected TLS, "http" for plain).
	type routeGroup struct {
		name    string
		members []int
	}
	groupRoutes := func(tlsSide bool) ([]*routeGroup, []*routeGroup) {
		bySig := map[string]*routeGroup{}
		var order []*routeGroup
		of := make([]*routeGroup, len(b.eps))
		side := "http"
		if tlsSide {
			side = "https"
		}
		for i, e := range b.eps {
			var sb strings.Builder
			fmt.Fprintf(&sb, "%t", e.pol.AllowAll)
			for k := range keys {
				if needed(i, k, tlsSide) {
					fmt.Fprintf(&sb, "\x00%s\x01%s", keys[k], verdicts[i][k].signature(tlsSide))
				}
			}
			g, ok := bySig[sb.String()]
			if !ok {
				g = &routeGroup{name: fmt.Sprintf("%s/%s/g%d", l.Key, side, e.index)}
				bySig[sb.String()] = g
				order = append(order, g)
			}
			g.members = append(g.members, i)
			of[i] = g
		}
		return order, of
	}
	routeConfig := func(g *routeGroup, tlsSide bool) bool {
		i := g.members[0]
		var ks []string
		var vs []verdict
		for k := range keys {
			if needed(i, k, tlsSide) {
				ks, vs = append(ks, keys[k]), append(vs, verdicts[i][k])
			}
		}
		return b.webRoutes(g.name, ks, vs, p, tlsSide, b.eps[i].pol.AllowAll)
	}
	_, httpsOf := groupRoutes(true)

	var chains []*listener.FilterChain

	// TLS chains per kept key, grouped by verdict (and, for inspected
	// chains, by route configuration).
	for k, key := range keys {
		keep := false
		for i := range b.eps {
			if needed(i, k, true) {
				keep = true
				break
			}
		}
		if !keep {
			continue
		}
		type grp struct {
			v     verdict
			eps   []ep
			route *routeGroup
		}
		groups := map[string]*grp{}
		var order []string
		for i, e := range b.eps {
			v := verdicts[i][k]
			sig := v.signature(true)
			var rg *routeGroup
			if v.allowedOn(true) && v.inspect && !v.bypass {
				rg = httpsOf[i]
				sig += "|" + rg.name
			}
			g, ok := groups[sig]
			if !ok {
				g = &grp{v: v, route: rg}
				groups[sig] = g
				order = append(order, sig)
			}
			g.eps = append(g.eps, e)
		}
		for _, sig := range order {
			g := groups[sig]
			match := &listener.FilterChainMatch{
				ServerNames:        []string{key},
				TransportProtocol:  "tls",
				SourcePrefixRanges: prefixes(g.eps),
			}
			name := fmt.Sprintf("%s/tls/%s/g%d", l.Key, key, g.eps[0].index)
			rname, dfp := "", false
			if g.route != nil {
				rname, dfp = g.route.name, routeConfig(g.route, true)
			}
			chain, err := b.tlsChain(name, key, p, g.v, rname, dfp, match, lc)
			if err != nil {
				return nil, err
			}
			chains = append(chains, chain)
		}
	}

	// Bypassed endpoints: TLS with a name no key matches goes through the
	// SNI dynamic forward proxy.
	var bypassed []ep
	for _, e := range b.eps {
		if e.pol.AllowAll {
			bypassed = append(bypassed, e)
		}
	}
	if len(bypassed) > 0 {
		v := verdict{allowed: true, reason: policy.ReasonBypass, bypass: true, tls: true, plain: true, rule: "*"}
		chain, err := b.tlsChain(l.Key+"/tls/bypass", "*", p, v, "", false, &listener.FilterChainMatch{
			TransportProtocol:  "tls",
			SourcePrefixRanges: prefixes(bypassed),
		}, lc)
		if err != nil {
			return nil, err
		}
		chains = append(chains, chain)
	}

	// Plain HTTP: one chain per route group, plus one for unknown sources.
	httpGroups, _ := groupRoutes(false)
	for _, g := range httpGroups {
		var eps []ep
		for _, i := range g.members {
			eps = append(eps, b.eps[i])
		}
		dfp := routeConfig(g, false)
		chains = append(chains, &listener.FilterChain{
			Name: g.name,
			FilterChainMatch: &listener.FilterChainMatch{
				TransportProtocol:  "raw_buffer",
				SourcePrefixRanges: prefixes(eps),
			},
			Filters: []*listener.Filter{b.hcm(g.name, g.name, dfp, true, lc.with("http"))},
		})
	}
	unknown := l.Key + "/http/unknown"
	b.routes[unknown] = &route.RouteConfiguration{
		Name:         unknown,
		VirtualHosts: []*route.VirtualHost{denyVhost("unknown", []string{"*"}, denial{port: p, reason: policy.ReasonUnknownPeer})},
	}
	chains = append(chains, &listener.FilterChain{
		Name:             unknown,
		FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "raw_buffer"},
		Filters:          []*listener.Filter{b.hcm(unknown, unknown, false, true, lc.with("http"))},
	})

	b.clusters[DenyCluster] = denyCluster()
	return &listener.Listener{
		Name:    l.Key,
		Address: socketAddress(b.opts.BindAddress, l.Port, core.SocketAddress_TCP),
		ListenerFilters: []*listener.ListenerFilter{
			listenerFilter("envoy.filters.listener.tls_inspector", tlsInspector()),
			listenerFilter("envoy.filters.listener.http_inspector", httpInspector()),
		},
		FilterChains: chains,
		// Anything no chain matches (unknown endpoint, TLS without an SNI
		// any rule names, neither TLS nor HTTP) is closed and logged.
		DefaultFilterChain: &listener.FilterChain{
			Name:    l.Key + "/default",
			Filters: []*listener.Filter{b.tcpProxy(l.Key+"/default", DenyCluster, lc.deny(policy.ReasonNoRule, "", "tls"))},
		},
	}, nil
}

// tlsChain builds one TLS chain for key with verdict v.
func (b *builder) tlsChain(name, key string, p uint16, v verdict, routeName string, routeDFP bool, match *listener.FilterChainMatch, lc logCtx) (*listener.FilterChain, error) {
	chain := &listener.FilterChain{Name: name, FilterChainMatch: match}
	switch {
	case !v.allowedOn(true):
		chain.Filters = []*listener.Filter{b.tcpProxy(name, DenyCluster, lc.deny(v.denyReason(), v.rule, "tls"))}
	case v.inspect && !v.bypass:
		secret, err := b.leafSecret(key)
		if err != nil {
			return nil, err
		}
		chain.TransportSocket = downstreamTLS(secret)
		chain.Filters = []*listener.Filter{b.hcm(name, routeName, routeDFP, false, lc.with("inspect"))}
	default:
		if strings.HasPrefix(key, "*") { // wildcard key or bypass catch-all: the SNI names the upstream
			b.clusters[DFPRawCluster] = b.dfpCluster(DFPRawCluster, false)
			chain.Filters = []*listener.Filter{
				b.sniDFP(p),
				b.tcpProxy(name, DFPRawCluster, lc.allow(v.rule, "passthrough", "tls")),
			}
		} else {
			c := b.dnsCluster(key, p, false)
			chain.Filters = []*listener.Filter{b.tcpProxy(name, c, lc.allow(v.rule, "passthrough", "tls"))}
		}
	}
	return chain, nil
}

// leafSecret issues (through opts.Certs) the leaf for key and adds it as an
// SDS secret.
func (b *builder) leafSecret(key string) (string, error) {
	name := "leaf:" + key
	if _, ok := b.secrets[name]; ok {
		return name, nil
	}
	if b.opts.Certs == nil {
		return "", fmt.Errorf("translate inspected chain for %s: no certificate source configured", key)
	}
	var (
		leaf *tls.Certificate
		err  error
	)
	if apex, ok := strings.CutPrefix(key, "*."); ok {
		leaf, err = b.opts.Certs.LeafFor("." + apex)
	} else {
		leaf, err = b.opts.Certs.Leaf(key)
	}
	if err != nil {
		return "", fmt.Errorf("issue leaf for %s: %w", key, err)
	}
	var chainPEM []byte
	for _, der := range leaf.Certificate {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("encode leaf key for %s: %w", key, err)
	}
	b.secrets[name] = &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(chainPEM),
			PrivateKey:       inlineBytes(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		}},
	}
	return name, nil
}

// webRoutes builds (once) the route configuration name for one group's
// verdicts on the TLS (inspected) or plain side and reports whether it
// routes through the dynamic forward proxy.
func (b *builder) webRoutes(name string, keys []string, vs []verdict, p uint16, tlsSide, allowAll bool) bool {
	if _, ok := b.routes[name]; ok {
		return b.routesDFP[name]
	}
	usesDFP := false
	rc := &route.RouteConfiguration{Name: name}
	for k, key := range keys {
		v := vs[k]
		domains := []string{key, key + ":" + strconv.Itoa(int(p))}
		if !v.allowedOn(tlsSide) {
			rc.VirtualHosts = append(rc.VirtualHosts, denyVhost(key, domains, denial{key: key, port: p, reason: v.denyReason(), rule: v.rule}))
			continue
		}
		clusterName := ""
		if strings.HasPrefix(key, "*") { // a wildcard key: the name is only known per request
			clusterName = b.dfpClusterName(tlsSide)
			usesDFP = true
		} else {
			clusterName = b.dnsCluster(key, p, tlsSide)
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name:    key,
			Domains: domains,
			Routes:  b.pathRoutes(key, p, v, clusterName),
		})
	}
	if allowAll {
		v := verdict{allowed: true, reason: policy.ReasonBypass, bypass: true, rule: "*"}
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name: "bypass", Domains: []string{"*"}, Routes: b.pathRoutes("", p, v, b.dfpClusterName(tlsSide)),
		})
		usesDFP = true
	} else {
		rc.VirtualHosts = append(rc.VirtualHosts, denyVhost("no-rule", []string{"*"}, denial{port: p, reason: policy.ReasonNoRule}))
	}
	b.routes[name] = rc
	b.routesDFP[name] = usesDFP
	return usesDFP
}

func (b *builder) dfpClusterName(tlsSide bool) string {
	name := DFPRawCluster
	if tlsSide {
		name = DFPTLSCluster
	}
	b.clusters[name] = b.dfpCluster(name, tlsSide)
	return name
}

// pathRoutes renders an allowed verdict's path rules, in order, then the
// path default. Denied paths answer 403.
func (b *builder) pathRoutes(key string, p uint16, v verdict, clusterName string) []*route.Route {
	var out []*route.Route
	allowAny := false
	if v.entry != nil && len(v.entry.Paths) > 0 {
		out = append(out, denyRoute("unplain", plainPathGuard(), denial{key: key, port: p, reason: policy.ReasonPath, rule: v.rule,
			detail: "a path the envoy engine cannot read unambiguously (dot or empty segment, ;params, backslash, double or malformed encoding, trailing dot or space)"}))
	}
	if v.entry != nil {
		for i, pr := range v.entry.Paths {
			action := pr.Action
			if action == "" {
				action = policy.Allow
			}
			if action == policy.Allow {
				allowAny = true
			}
			if re, ok := strings.CutPrefix(pr.Path, "~"); ok && b.err == nil {
				if err := checkRegex(re); err != nil {
					b.err = fmt.Errorf("translate path rule %q of %s: %w", pr.Path, v.rule, err)
				}
			}
			methods := pr.Methods
			if len(methods) == 0 {
				methods = []string{""}
			}
			for _, m := range methods {
				name := fmt.Sprintf("path%d%s", i, methodSuffix(m))
				if action != policy.Allow {
					d := denial{key: key, port: p, reason: policy.ReasonPath, rule: v.rule, detail: "path rule " + pr.Path}
					out = append(out, denyRoute(name, pathMatch(pr.Path, m, true), d))
					if strings.HasPrefix(pr.Path, "~") {
						// Decoded readings are out of Envoy's reach.
						enc := pathMatch("~.*", m, true)
						enc.Headers = append(enc.Headers, escapedPath(false))
						out = append(out, denyRoute(name+"/escaped", enc, d))
					}
					continue
				}
				out = append(out, &route.Route{
					Name:     name,
					Match:    pathMatch(pr.Path, m, false),
					Metadata: decisionMetadata(policy.Allow, policy.ReasonAllowed, v.rule),
					Action:   toCluster(clusterName),
				})
			}
		}
	}
	def := policy.Allow
	if v.entry != nil && len(v.entry.Paths) > 0 {
		def = v.entry.PathDefault
		if def == "" {
			def = policy.Allow
			if allowAny {
				def = policy.Deny
			}
		}
	}
	all := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if def != policy.Allow {
		return append(out, denyRoute("default", all, denial{key: key, port: p, reason: policy.ReasonPath, rule: v.rule, detail: "the path default (no path rule allows it)"}))
	}
	reason := policy.ReasonAllowed
	if v.bypass {
		reason = policy.ReasonBypass
	}
	return append(out, &route.Route{
		Name:     "default",
		Match:    all,
		Metadata: decisionMetadata(policy.Allow, reason, v.rule),
		Action:   toCluster(clusterName),
	})
}

func methodSuffix(m string) string {
	if m == "" {
		return ""
	}
	return "/" + m
}

// pathMatch renders one path rule (see paths.go): an allow prefix as sent
// (a plain prefix when it holds no escape), a deny prefix in every reading
// and case, "~re" as a safe_regex that must match the whole path (Envoy's
// semantics), so the policy's start-anchored regex gets ".*" appended:
// case-insensitive for a deny, and only on paths without escapes for an
// allow. The method matches in any case, as in the builtin engine.
func pathMatch(path, method string, deny bool) *route.RouteMatch {
	m := &route.RouteMatch{}
	regex := func(re string) {
		m.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}
	}
	switch re, isRe := strings.CutPrefix(path, "~"); {
	case isRe && deny:
		regex("(?i)(?:" + re + ")(?s:.*)")
	case isRe:
		regex("(?:" + re + ")(?s:.*)")
		m.Headers = append(m.Headers, escapedPath(true))
	case deny:
		regex(denyPrefixRegex(path))
	case strings.Contains(path, "%"):
		regex(allowPrefixRegex(path))
	default:
		m.PathSpecifier = &route.RouteMatch_Prefix{Prefix: path}
	}
	if method != "" {
		m.Headers = append(m.Headers, &route.HeaderMatcher{
			Name: ":method",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: method},
				IgnoreCase:   true,
			}},
		})
	}
	return m
}

// checkRegex reports path regexes RE2 cannot compile or whose program is
// bigger than the bootstrap allows (Envoy would reject the route
// configuration). Go's compiled program stands in for RE2's: both count
// instructions of the same Thompson construction.
func checkRegex(re string) error {
	if _, err := regexp.Compile(re); err != nil {
		return err
	}
	parsed, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return err
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return err
	}
	if n := len(prog.Inst); n > MaxRegexProgramSize {
		return fmt.Errorf("regex program of %d instructions (at most %d)", n, MaxRegexProgramSize)
	}
	return nil
}

func toCluster(name string) *route.Route_Route {
	return &route.Route_Route{Route: &route.RouteAction{
		ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name},
		// Streaming APIs and long downloads must not be cut.
		Timeout: durationZero(),
	}}
}

// denial is what one of the proxy's own 403s says. The header and body
// follow the builtin engine's: "X-Clawker-Denied: <method> <host> <path>
// (<reason>); <how to allow it>" and "clawker-fw denied <dest>: <reason>"
// plus the hint. Envoy fills the request's method, authority and path into
// the header; the body is fixed per route, so it names the rule's key.
type denial struct {
	key    string // virtual host key: exact name, "*.apex", or "" (catch-all)
	port   uint16
	reason policy.Reason
	rule   string
	detail string // the path rule, for path denials
}

// exact reports whether the key is one name (not a wildcard or catch-all).
func (d denial) exact() bool { return d.key != "" && !strings.HasPrefix(d.key, "*") }

// hint says how to allow it, like the builtin engine's hint.
func (d denial) hint(name string) string {
	switch d.reason {
	case policy.ReasonDenyRule:
		return fmt.Sprintf("a deny rule (%s) covers %s; remove it to allow", d.rule, name)
	case policy.ReasonUnknownPeer:
		return "the source address is no clawker-fw endpoint"
	case policy.ReasonPath:
		return fmt.Sprintf("the request path is denied by %s (%s)", d.detail, d.rule)
	}
	return fmt.Sprintf("allow it with clawker.allow=%s as a network option (docker network create -o clawker.allow=%s) or a container label (--label clawker.allow=%s)", name, name, name)
}

// header is the X-Clawker-Denied value, with Envoy command operators.
func (d denial) header() string {
	esc := func(s string) string { return strings.ReplaceAll(s, "%", "%%") }
	name := "%REQ(:AUTHORITY)%"
	if d.exact() {
		name = esc(d.key)
	}
	return "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% (" + esc(string(d.reason)) + "); " +
		strings.ReplaceAll(esc(d.hint("\x00")), "\x00", name)
}

// DeniedBody is the body of the proxy's own 403 for a request to key on
// port (key "" for the catch-all, "*.apex" for a wildcard).
func DeniedBody(key string, port uint16, reason policy.Reason, rule, detail string) string {
	return denial{key: key, port: port, reason: reason, rule: rule, detail: detail}.body()
}

func (d denial) body() string {
	name, dest := d.key, fmt.Sprintf("%s:%d", d.key, d.port)
	switch {
	case d.key == "":
		name, dest = "<host>", fmt.Sprintf("this host on port %d", d.port)
	case !d.exact():
		name, dest = "<host>", fmt.Sprintf("%s:%d", d.key, d.port)
	}
	return fmt.Sprintf("clawker-fw denied %s: %s\n%s\n", dest, d.reason, d.hint(name))
}

func denyVhost(name string, domains []string, d denial) *route.VirtualHost {
	return &route.VirtualHost{
		Name:    "deny:" + name,
		Domains: domains,
		Routes:  []*route.Route{denyRoute("deny", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}, d)},
	}
}

// denyRoute answers 403 itself, with the DeniedHeader and the decision
// metadata the access log reads.
func denyRoute(name string, match *route.RouteMatch, d denial) *route.Route {
	return &route.Route{
		Name:  name,
		Match: match,
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 403,
			Body:   inlineString(d.body()),
		}},
		Metadata: decisionMetadata(policy.Deny, d.reason, d.rule),
		ResponseHeadersToAdd: []*core.HeaderValueOption{{
			Header:       &core.HeaderValue{Key: DeniedHeader, Value: d.header()},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}
}

// metadataNamespace holds the decision of a route, read by the access log
// as %METADATA(ROUTE:clawker:decision)% and friends.
const metadataNamespace = "clawker"

func decisionMetadata(decision policy.Action, reason policy.Reason, rule string) *core.Metadata {
	s, _ := structpb.NewStruct(map[string]any{
		"decision": string(decision),
		"reason":   string(reason),
		"rule":     rule,
	})
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{metadataNamespace: s}}
}

// dedicatedListener builds the listener of one ssh/tcp/udp rule port.
func (b *builder) dedicatedListener(l model.Listener) (*listener.Listener, error) {
	var allowed []ep
	rule := l.Dst
	for _, e := range b.eps {
		m := e.pol.MatchName(l.Dst, l.OrigPort, l.L4)
		if !m.Allowed {
			continue
		}
		if m.Entry != nil {
			if proto, ok := m.Entry.ProtoFor(l.OrigPort, l.L4); !ok || proto != l.Proto {
				continue
			}
			rule = m.Entry.Pattern
		}
		allowed = append(allowed, e)
	}
	lc := logCtx{listener: l.Key, port: l.OrigPort}
	if l.Proto == policy.ProtoUDP {
		if len(allowed) == 0 {
			// udp_proxy needs at least one route; with no allowed source
			// the port stays unbound, which refuses every datagram.
			return nil, nil
		}
		return b.udpListener(l, allowed, b.dnsCluster(l.Dst, l.OrigPort, false), lc.allow(rule, "udp", l.Dst))
	}
	b.clusters[DenyCluster] = denyCluster()
	ln := &listener.Listener{
		Name:    l.Key,
		Address: socketAddress(b.opts.BindAddress, l.Port, core.SocketAddress_TCP),
		DefaultFilterChain: &listener.FilterChain{
			Name:    l.Key + "/default",
			Filters: []*listener.Filter{b.tcpProxy(l.Key+"/default", DenyCluster, lc.deny(policy.ReasonNoRule, "", l.Dst))},
		},
	}
	if len(allowed) > 0 {
		upstream := b.dnsCluster(l.Dst, l.OrigPort, false)
		ln.FilterChains = []*listener.FilterChain{{
			Name:             l.Key + "/allow",
			FilterChainMatch: &listener.FilterChainMatch{SourcePrefixRanges: prefixes(allowed)},
			Filters:          []*listener.Filter{b.tcpProxy(l.Key+"/allow", upstream, lc.allow(rule, string(l.Proto), l.Dst))},
		}}
	}
	return ln, nil
}
