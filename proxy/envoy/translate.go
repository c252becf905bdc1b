// Package envoy is clawker-fw's optional Envoy data plane: it translates the
// listener/route model (proxy/model) and the compiled policy snapshot into
// Envoy v3 resources, serves them to an Envoy sidecar over ADS with
// go-control-plane, and renders the sidecar's bootstrap.
//
// The package is validated in Go only (proto validation, snapshot
// consistency, semantic checks, golden files and a real ADS client): no
// Envoy binary can be obtained where the project's CI runs. See README.md.
//
// Every verdict in the resources is the builtin engine's: Translate asks
// verdict.Decide (and DecideHost, whose path rules become routes) for each
// known endpoint (policy.Who: pending and bad-label endpoints included, denied
// with that reason) on each name key, and renders the answers; the ranges a
// name may not resolve to are verdict.Special, the 403 texts verdict.Fix.
// TestDifferentialVerdicts checks both engines on the shared table
// (proxy/verdict/verdicttest) with an evaluator of the resources.
//
// What Translate builds, per model listener:
//
//   - web listeners (model.KindWeb, one per original port P): tls_inspector
//     and http_inspector listener filters, and filter chains matched on
//     server_names and source_prefix_ranges (the /32s of the endpoints whose
//     policy gives that verdict). Envoy picks the most specific server name
//     first and never backtracks to a broader one when the source does not
//     match, so every name key used by ANY endpoint's allows or denies gets
//     chains for EVERY endpoint (allow or deny) and one for unknown sources,
//     decided with verdict.Decide on the key; chains without server names
//     carry each endpoint's verdict for every other name. Plain HTTP is
//     matched on
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
//     with tcp_proxy for allowed sources and close denied ones with their
//     reason, or udp_proxy whose matcher routes only allowed sources.
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
	pv "github.com/clawker-fw/clawker-fw/proxy/verdict"
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

// ep is one known endpoint with its answer to who is asking (policy.Who):
// its effective policy, or why it has none (pending, bad labels), so that
// its flows are denied with that reason.
type ep struct {
	index uint32
	ip    netip.Addr
	name  string // container name or id, for logs
	who   policy.Who
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

// endpoints collects the known endpoints, by index, with their answer to
// who is asking (Endpoint.Who). Envoy cannot wait for a pending endpoint's
// policy: its flows are denied (pending) until a snapshot knows it, as the
// builtin engine denies them once its bounded wait runs out.
func (b *builder) endpoints(snap *policy.Snapshot) {
	now := b.opts.Now()
	for _, e := range snap.Endpoints {
		if !e.IP.IsValid() {
			continue
		}
		name := e.ContainerName
		if name == "" {
			name = e.ContainerID
		}
		b.eps = append(b.eps, ep{index: e.Index, ip: e.IP.Unmap(), name: name, who: e.Who(now)})
	}
	sort.Slice(b.eps, func(i, j int) bool { return b.eps[i].index < b.eps[j].index })
}

// side is what a key's verdict decides.
type side int

const (
	sideTLS   side = iota // a ClientHello naming the key: filter chains
	sideHTTPS             // a request for the key under inspection: inspected route configurations
	sidePlain             // a plain-HTTP request for the key: plain route configurations
)

// keyVerdict is one endpoint's verdicts for one name key on one web port,
// per side: verdict.Decide for TLS, verdict.DecideHost for requests (their
// path rules become routes). A wildcard key "*.apex" is decided as the
// literal name "*.apex", which every wildcard and deny covering the apex's
// subtree covers and no exact pattern equals; the catch-all key "*" is
// covered by nothing.
type keyVerdict [3]pv.Verdict

func decideKey(e ep, key string, p uint16) keyVerdict {
	web := pv.Flow{Who: e.who, Listener: pv.Web, Port: p, L4: policy.L4TCP}
	tlsFlow, httpsFlow, plainFlow := web, web, web
	tlsFlow.Content, tlsFlow.Name = pv.TLS, key
	httpsFlow.Content, httpsFlow.Request = pv.HTTP, &pv.Request{Host: key, TLSName: key}
	plainFlow.Content, plainFlow.Request = pv.HTTP, &pv.Request{Host: key}
	return keyVerdict{pv.Decide(tlsFlow), pv.DecideHost(httpsFlow), pv.DecideHost(plainFlow)}
}

// signature identifies verdicts that can share one chain or virtual host.
func (v keyVerdict) signature(s side) string {
	x := v[s]
	if !x.Allowed {
		return "deny|" + string(x.Reason) + "|" + x.Pattern + "|" + x.Rule
	}
	paths := ""
	if x.Entry != nil && len(x.Entry.Paths) > 0 {
		j, _ := json.Marshal(x.Entry.Paths)
		paths = string(j) + string(x.Entry.PathDefault)
	}
	return fmt.Sprintf("allow|%s|%s|%s|%s|%s", x.Mode, x.Reason, x.Pattern, x.Rule, paths)
}

// matters reports whether a verdict must be rendered for its key: it
// allows, or a rule names the key (a deny, an allow on other ports or for
// another protocol), so its denial says so rather than no-rule.
func matters(x pv.Verdict) bool { return x.Allowed || x.Entry != nil || x.Deny != nil }

// fixRule is the rule a denial's text names: its provenance, else its
// pattern.
func fixRule(x pv.Verdict) string {
	if x.Rule != "" {
		return x.Rule
	}
	return x.Pattern
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

// webKeys collects every name key, over all endpoints: the patterns of
// every name allow (whatever its ports: a name allowed on another port is
// denied port-not-allowed, not no-rule) and every deny.
func (b *builder) webKeys() []string {
	set := map[string]bool{}
	for _, e := range b.eps {
		pol := e.who.Policy
		if pol == nil {
			continue
		}
		for a := range pol.Entries() {
			if a.Prefix.IsValid() {
				continue
			}
			for _, k := range keysFor(a.Pattern, false) {
				set[k] = true
			}
		}
		for d := range pol.DenyEntries() {
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

// webListener builds the listener of one original web port from the
// verdicts (verdict.Decide) of every known endpoint on every name key.
//
// Chains and virtual hosts are pruned: a key is kept only when some verdict
// at the key matters (it allows, or a rule names the key) or a broader key
// it would otherwise fall back to allows. Every kept key has a chain for
// every known endpoint (allow or deny) and one for unknown sources, so the
// result does not depend on whether Envoy backtracks to a broader server
// name when the source does not match (it does not). A server name no kept
// key matches (or none) reaches the chains without server names: each
// endpoint's catch-all verdict (no-rule, pending, bad-label; bypass
// passes), then unknown-endpoint for every other source.
func (b *builder) webListener(l model.Listener) (*listener.Listener, error) {
	p := l.OrigPort
	keys := b.webKeys()
	lc := logCtx{listener: l.Key, port: p}
	keyPos := make(map[string]int, len(keys))
	for k, key := range keys {
		keyPos[key] = k
	}

	// verdicts[i][k]: endpoint i, key k; catchAll[i]: endpoint i, any
	// other name.
	verdicts := make([][]keyVerdict, len(b.eps))
	catchAll := make([]keyVerdict, len(b.eps))
	for i, e := range b.eps {
		verdicts[i] = make([]keyVerdict, len(keys))
		for k, key := range keys {
			verdicts[i][k] = decideKey(e, key, p)
		}
		catchAll[i] = decideKey(e, "*", p)
	}
	// needed reports whether endpoint i's verdict at key k matters on one
	// side: it matters itself, a fallback of it allows, or the catch-all
	// does (bypass).
	needed := func(i, k int, s side) bool {
		if catchAll[i][s].Allowed || matters(verdicts[i][k][s]) {
			return true
		}
		for _, fb := range fallbacks(keys[k]) {
			if j, ok := keyPos[fb]; ok && verdicts[i][j][s].Allowed {
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
	groupRoutes := func(s side) ([]*routeGroup, []*routeGroup) {
		bySig := map[string]*routeGroup{}
		var order []*routeGroup
		of := make([]*routeGroup, len(b.eps))
		name := "http"
		if s == sideHTTPS {
			name = "https"
		}
		for i, e := range b.eps {
			var sb strings.Builder
			sb.WriteString(catchAll[i].signature(s))
			for k := range keys {
				if needed(i, k, s) {
					fmt.Fprintf(&sb, "\x00%s\x01%s", keys[k], verdicts[i][k].signature(s))
				}
			}
			g, ok := bySig[sb.String()]
			if !ok {
				g = &routeGroup{name: fmt.Sprintf("%s/%s/g%d", l.Key, name, e.index)}
				bySig[sb.String()] = g
				order = append(order, g)
			}
			g.members = append(g.members, i)
			of[i] = g
		}
		return order, of
	}
	routeConfig := func(g *routeGroup, s side) bool {
		i := g.members[0]
		var ks []string
		var vs []pv.Verdict
		for k := range keys {
			if needed(i, k, s) {
				ks, vs = append(ks, keys[k]), append(vs, verdicts[i][k][s])
			}
		}
		return b.webRoutes(g.name, ks, vs, p, s, catchAll[i][s])
	}
	_, httpsOf := groupRoutes(sideHTTPS)

	var chains []*listener.FilterChain

	// TLS chains per kept key, grouped by verdict (and, for inspected
	// chains, by route configuration), then one for unknown sources.
	for k, key := range keys {
		keep := false
		for i := range b.eps {
			if needed(i, k, sideTLS) {
				keep = true
				break
			}
		}
		if !keep {
			continue
		}
		type grp struct {
			v     pv.Verdict
			eps   []ep
			route *routeGroup
		}
		groups := map[string]*grp{}
		var order []string
		for i, e := range b.eps {
			v := verdicts[i][k]
			sig := v.signature(sideTLS)
			var rg *routeGroup
			if v[sideTLS].Allowed && v[sideTLS].Mode == pv.ModeInspect {
				rg = httpsOf[i]
				sig += "|" + rg.name
			}
			g, ok := groups[sig]
			if !ok {
				g = &grp{v: v[sideTLS], route: rg}
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
				rname, dfp = g.route.name, routeConfig(g.route, sideHTTPS)
			}
			chain, err := b.tlsChain(name, key, p, g.v, rname, dfp, match, lc)
			if err != nil {
				return nil, err
			}
			chains = append(chains, chain)
		}
		chains = append(chains, b.unknownTLS(l.Key+"/tls/"+key+"/unknown", []string{key}, lc))
	}

	// TLS whose server name no kept key matches: each endpoint's catch-all
	// verdict (bypassed endpoints go through the SNI dynamic forward
	// proxy), then unknown sources.
	type catchGroup struct {
		v   pv.Verdict
		eps []ep
	}
	catchGroups := map[string]*catchGroup{}
	var catchOrder []string
	for i, e := range b.eps {
		sig := catchAll[i].signature(sideTLS)
		g, ok := catchGroups[sig]
		if !ok {
			g = &catchGroup{v: catchAll[i][sideTLS]}
			catchGroups[sig] = g
			catchOrder = append(catchOrder, sig)
		}
		g.eps = append(g.eps, e)
	}
	for _, sig := range catchOrder {
		g := catchGroups[sig]
		chain, err := b.tlsChain(fmt.Sprintf("%s/tls/*/g%d", l.Key, g.eps[0].index), "*", p, g.v, "", false, &listener.FilterChainMatch{
			TransportProtocol:  "tls",
			SourcePrefixRanges: prefixes(g.eps),
		}, lc)
		if err != nil {
			return nil, err
		}
		chains = append(chains, chain)
	}
	chains = append(chains, b.unknownTLS(l.Key+"/tls/*/unknown", nil, lc))

	// Plain HTTP: one chain per route group, plus one for unknown sources.
	httpGroups, _ := groupRoutes(sidePlain)
	for _, g := range httpGroups {
		var eps []ep
		for _, i := range g.members {
			eps = append(eps, b.eps[i])
		}
		dfp := routeConfig(g, sidePlain)
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
		VirtualHosts: []*route.VirtualHost{denyVhost("unknown", []string{"*"}, denial{port: p, proto: policy.ProtoHTTP, reason: policy.ReasonUnknownPeer})},
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
		// Anything no chain matches (neither TLS nor HTTP) is closed and
		// logged.
		DefaultFilterChain: &listener.FilterChain{
			Name:    l.Key + "/default",
			Filters: []*listener.Filter{b.tcpProxy(l.Key+"/default", DenyCluster, lc.deny(pv.ReasonSniffFailed, "", "tls"))},
		},
	}, nil
}

// unknownTLS is the chain of TLS from sources that are no endpoint, for the
// server names given (nil: any).
func (b *builder) unknownTLS(name string, serverNames []string, lc logCtx) *listener.FilterChain {
	b.clusters[DenyCluster] = denyCluster()
	return &listener.FilterChain{
		Name:             name,
		FilterChainMatch: &listener.FilterChainMatch{ServerNames: serverNames, TransportProtocol: "tls"},
		Filters:          []*listener.Filter{b.tcpProxy(name, DenyCluster, lc.deny(policy.ReasonUnknownPeer, "", "tls"))},
	}
}

// tlsChain builds one TLS chain for key with verdict v.
func (b *builder) tlsChain(name, key string, p uint16, v pv.Verdict, routeName string, routeDFP bool, match *listener.FilterChainMatch, lc logCtx) (*listener.FilterChain, error) {
	chain := &listener.FilterChain{Name: name, FilterChainMatch: match}
	switch {
	case !v.Allowed:
		chain.Filters = []*listener.Filter{b.tcpProxy(name, DenyCluster, lc.deny(v.Reason, v.Pattern, "tls"))}
	case v.Mode == pv.ModeInspect:
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
				b.tcpProxy(name, DFPRawCluster, lc.allow(v.Reason, v.Pattern, "passthrough", "tls")),
			}
		} else {
			c := b.dnsCluster(key, p, false)
			chain.Filters = []*listener.Filter{b.tcpProxy(name, c, lc.allow(v.Reason, v.Pattern, "passthrough", "tls"))}
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
// verdicts on the inspected or plain side, with the group's catch-all
// verdict for every other host, and reports whether it routes through the
// dynamic forward proxy.
func (b *builder) webRoutes(name string, keys []string, vs []pv.Verdict, p uint16, s side, catchAll pv.Verdict) bool {
	if _, ok := b.routes[name]; ok {
		return b.routesDFP[name]
	}
	tlsSide := s == sideHTTPS
	proto := policy.ProtoHTTP
	if tlsSide {
		proto = policy.ProtoHTTPS
	}
	usesDFP := false
	rc := &route.RouteConfiguration{Name: name}
	for k, key := range keys {
		v := vs[k]
		domains := []string{key, key + ":" + strconv.Itoa(int(p))}
		if !v.Allowed {
			rc.VirtualHosts = append(rc.VirtualHosts, denyVhost(key, domains, denial{key: key, port: p, proto: proto, reason: v.Reason, rule: fixRule(v), detail: v.Detail}))
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
			Routes:  b.pathRoutes(key, p, proto, v, clusterName),
		})
	}
	if catchAll.Allowed { // bypass
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name: "bypass", Domains: []string{"*"}, Routes: b.pathRoutes("", p, proto, catchAll, b.dfpClusterName(tlsSide)),
		})
		usesDFP = true
	} else {
		rc.VirtualHosts = append(rc.VirtualHosts, denyVhost(string(catchAll.Reason), []string{"*"},
			denial{port: p, proto: proto, reason: catchAll.Reason, detail: catchAll.Detail}))
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
func (b *builder) pathRoutes(key string, p uint16, proto policy.Proto, v pv.Verdict, clusterName string) []*route.Route {
	rule := fixRule(v)
	var out []*route.Route
	allowAny := false
	if v.Entry != nil && len(v.Entry.Paths) > 0 {
		out = append(out, denyRoute("unplain", plainPathGuard(), denial{key: key, port: p, proto: proto, reason: policy.ReasonPath, rule: rule,
			detail: "a path the envoy engine cannot read unambiguously (dot or empty segment, ;params, backslash, double or malformed encoding, trailing dot or space)"}))
	}
	if v.Entry != nil {
		for i, pr := range v.Entry.Paths {
			action := pr.Action
			if action == "" {
				action = policy.Allow
			}
			if action == policy.Allow {
				allowAny = true
			}
			if re, ok := strings.CutPrefix(pr.Path, "~"); ok && b.err == nil {
				if err := checkRegex(re); err != nil {
					b.err = fmt.Errorf("translate path rule %q of %s: %w", pr.Path, v.Pattern, err)
				}
			}
			methods := pr.Methods
			if len(methods) == 0 {
				methods = []string{""}
			}
			for _, m := range methods {
				name := fmt.Sprintf("path%d%s", i, methodSuffix(m))
				if action != policy.Allow {
					d := denial{key: key, port: p, proto: proto, reason: policy.ReasonPath, rule: rule, detail: "path rule " + pr.Path}
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
					Metadata: decisionMetadata(policy.Allow, policy.ReasonAllowed, v.Pattern),
					Action:   toCluster(clusterName),
				})
			}
		}
	}
	def := policy.Allow
	if v.Entry != nil && len(v.Entry.Paths) > 0 {
		def = v.Entry.PathDefault
		if def == "" {
			def = policy.Allow
			if allowAny {
				def = policy.Deny
			}
		}
	}
	all := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if def != policy.Allow {
		return append(out, denyRoute("default", all, denial{key: key, port: p, proto: proto, reason: policy.ReasonPath, rule: rule, detail: "the path default (no path rule allows it)"}))
	}
	reason := policy.ReasonAllowed
	if v.Reason == policy.ReasonBypass {
		reason = policy.ReasonBypass
	}
	return append(out, &route.Route{
		Name:     "default",
		Match:    all,
		Metadata: decisionMetadata(policy.Allow, reason, v.Pattern),
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
	proto  policy.Proto // of the requests the virtual host serves
	reason policy.Reason
	rule   string
	detail string // the path rule, for path denials
}

// exact reports whether the key is one name (not a wildcard or catch-all).
func (d denial) exact() bool { return d.key != "" && !strings.HasPrefix(d.key, "*") }

// hint says how to allow it: verdict.Fix, the builtin engine's text.
func (d denial) hint(name string) string {
	return pv.Fix(pv.Denial{Dest: name, Port: d.port, Proto: d.proto, L4: policy.L4TCP, Reason: d.reason, Rule: d.rule, Detail: d.detail})
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

// body is the body of the proxy's own 403 for a request of d.proto to d.key
// on d.port (key "" for the catch-all, "*.apex" for a wildcard).
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

// dedicatedListener builds the listener of one ssh/tcp/udp rule port from
// every known endpoint's verdict (verdict.Decide) on it: one chain per
// verdict, allowed ones to the rule's name, denied ones closed and logged
// with their reason; sources that are no endpoint reach the default chain.
// A udp listener routes only allowed sources (udp_proxy drops the rest) and
// is not created when no endpoint may use it.
func (b *builder) dedicatedListener(l model.Listener) (*listener.Listener, error) {
	type grp struct {
		v   pv.Verdict
		eps []ep
	}
	groups := map[string]*grp{}
	var order []string
	var allowed []ep
	rule := l.Dst
	for _, e := range b.eps {
		v := pv.Decide(pv.Flow{Who: e.who, Listener: pv.Dedicated, Proto: l.Proto, Name: l.Dst, Port: l.OrigPort, L4: l.L4})
		if v.Allowed {
			allowed = append(allowed, e)
			if v.Entry != nil {
				rule = v.Pattern
			}
		}
		sig := fmt.Sprintf("%t|%s|%s", v.Allowed, v.Reason, v.Pattern)
		g, ok := groups[sig]
		if !ok {
			g = &grp{v: v}
			groups[sig] = g
			order = append(order, sig)
		}
		g.eps = append(g.eps, e)
	}
	lc := logCtx{listener: l.Key, port: l.OrigPort}
	if l.Proto == policy.ProtoUDP {
		if len(allowed) == 0 {
			// udp_proxy needs at least one route; with no allowed source
			// the port stays unbound, which refuses every datagram.
			return nil, nil
		}
		return b.udpListener(l, allowed, b.dnsCluster(l.Dst, l.OrigPort, false), lc.allow(policy.ReasonAllowed, rule, "udp", l.Dst))
	}
	b.clusters[DenyCluster] = denyCluster()
	ln := &listener.Listener{
		Name:    l.Key,
		Address: socketAddress(b.opts.BindAddress, l.Port, core.SocketAddress_TCP),
		DefaultFilterChain: &listener.FilterChain{
			Name:    l.Key + "/default",
			Filters: []*listener.Filter{b.tcpProxy(l.Key+"/default", DenyCluster, lc.deny(policy.ReasonUnknownPeer, "", l.Dst))},
		},
	}
	for _, sig := range order {
		g := groups[sig]
		name := fmt.Sprintf("%s/g%d", l.Key, g.eps[0].index)
		var filter *listener.Filter
		if g.v.Allowed {
			filter = b.tcpProxy(name, b.dnsCluster(l.Dst, l.OrigPort, false), lc.allow(g.v.Reason, rule, string(l.Proto), l.Dst))
		} else {
			filter = b.tcpProxy(name, DenyCluster, lc.deny(g.v.Reason, g.v.Pattern, l.Dst))
		}
		ln.FilterChains = append(ln.FilterChains, &listener.FilterChain{
			Name:             name,
			FilterChainMatch: &listener.FilterChainMatch{SourcePrefixRanges: prefixes(g.eps)},
			Filters:          []*listener.Filter{filter},
		})
	}
	return ln, nil
}
