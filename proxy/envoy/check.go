package envoy

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Check runs every check a snapshot must pass before it is served:
//  1. proto validation (ValidateAll, from protoc-gen-validate) of every
//     resource and every typed config nested in listeners and clusters;
//  2. snapshot.Consistent() (every RDS route referenced exists and no
//     other is present);
//  3. what Envoy rejects at load time but validation does not see: filter
//     chain matches that overlap in one listener, two listeners on one
//     address, duplicate virtual host domains in a route configuration, and
//     references to clusters or SDS secrets the snapshot does not define.
func Check(s *cache.Snapshot) error {
	var errs []error
	for _, typ := range []resource.Type{resource.ListenerType, resource.ClusterType, resource.RouteType, resource.SecretType} {
		for name, r := range s.GetResources(typ) {
			v, ok := r.(interface{ ValidateAll() error })
			if !ok {
				errs = append(errs, fmt.Errorf("%s %s: %T has no ValidateAll", typ, name, r))
				continue
			}
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("validate %s: %w", name, err))
			}
		}
	}
	if err := s.Consistent(); err != nil {
		errs = append(errs, fmt.Errorf("snapshot not consistent: %w", err))
	}
	c := &checker{
		clusters: s.GetResources(resource.ClusterType),
		routes:   s.GetResources(resource.RouteType),
		secrets:  s.GetResources(resource.SecretType),
	}
	addrs := map[string]string{}
	for _, name := range sortedKeys(s.GetResources(resource.ListenerType)) {
		l := s.GetResources(resource.ListenerType)[name].(*listener.Listener)
		sa := l.GetAddress().GetSocketAddress()
		addr := fmt.Sprintf("%s/%s:%d", sa.GetProtocol(), sa.GetAddress(), sa.GetPortValue())
		if other, dup := addrs[addr]; dup {
			errs = append(errs, fmt.Errorf("listeners %s and %s both bind %s", other, name, addr))
		}
		addrs[addr] = name
		errs = append(errs, c.listener(l)...)
	}
	for _, name := range sortedKeys(c.routes) {
		errs = append(errs, c.routeConfig(c.routes[name].(*route.RouteConfiguration))...)
	}
	for _, name := range sortedKeys(c.clusters) {
		cl := c.clusters[name].(*cluster.Cluster)
		if err := validateAny(cl.GetClusterType().GetTypedConfig()); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
		}
		if ts := cl.GetTransportSocket(); ts != nil {
			if err := validateAny(ts.GetTypedConfig()); err != nil {
				errs = append(errs, fmt.Errorf("cluster %s transport socket: %w", name, err))
			}
		}
		for k, opt := range cl.GetTypedExtensionProtocolOptions() {
			if err := validateAny(opt); err != nil {
				errs = append(errs, fmt.Errorf("cluster %s %s: %w", name, k, err))
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys(m map[string]types.Resource) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// validateAny unpacks a typed config and validates it.
func validateAny(a *anypb.Any) error {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

type checker struct {
	clusters, routes, secrets map[string]types.Resource
}

func (c *checker) cluster(where, name string) error {
	if _, ok := c.clusters[name]; !ok {
		return fmt.Errorf("%s references undefined cluster %q", where, name)
	}
	return nil
}

func (c *checker) listener(l *listener.Listener) []error {
	var errs []error
	for _, lf := range l.GetListenerFilters() {
		if err := validateAny(lf.GetTypedConfig()); err != nil {
			errs = append(errs, fmt.Errorf("listener %s filter %s: %w", l.Name, lf.Name, err))
		}
		if lf.Name != "envoy.filters.udp_listener.udp_proxy" {
			continue
		}
		m, err := lf.GetTypedConfig().UnmarshalNew()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for ip, om := range m.(*udpproxy.UdpProxyConfig).GetMatcher().GetMatcherTree().GetExactMatchMap().GetMap() {
			errs = append(errs, c.udpAction(l.Name+" source "+ip, om)...)
		}
	}
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil && l.GetUdpListenerConfig() == nil {
		errs = append(errs, fmt.Errorf("listener %s has no filter chains", l.Name))
	}
	seen := map[string]string{}
	names := map[string]bool{}
	for _, fc := range l.GetFilterChains() {
		if names[fc.Name] {
			errs = append(errs, fmt.Errorf("listener %s: filter chain name %q used twice", l.Name, fc.Name))
		}
		names[fc.Name] = true
		for _, k := range matchKeys(fc.GetFilterChainMatch()) {
			if other, dup := seen[k]; dup {
				errs = append(errs, fmt.Errorf("listener %s: filter chains %s and %s have the same match %s", l.Name, other, fc.Name, k))
				continue
			}
			seen[k] = fc.Name
		}
		errs = append(errs, c.chain(l.Name, fc)...)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		if fc.GetFilterChainMatch() != nil {
			errs = append(errs, fmt.Errorf("listener %s: default filter chain has a match", l.Name))
		}
		errs = append(errs, c.chain(l.Name, fc)...)
	}
	return errs
}

// matchKeys expands a filter chain match into the combinations Envoy's
// filter chain manager indexes; two chains of one listener sharing a
// combination make Envoy reject the listener.
func matchKeys(m *listener.FilterChainMatch) []string {
	orEmpty := func(s []string) []string {
		if len(s) == 0 {
			return []string{""}
		}
		return s
	}
	cidrs := func(rs []*core.CidrRange) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.GetAddressPrefix()+"/"+strconv.Itoa(int(r.GetPrefixLen().GetValue())))
		}
		return orEmpty(out)
	}
	var ports []string
	for _, p := range m.GetSourcePorts() {
		ports = append(ports, strconv.Itoa(int(p)))
	}
	var keys []string
	for _, dst := range cidrs(m.GetPrefixRanges()) {
		for _, sn := range orEmpty(m.GetServerNames()) {
			for _, alpn := range orEmpty(m.GetApplicationProtocols()) {
				for _, dsrc := range cidrs(m.GetDirectSourcePrefixRanges()) {
					for _, src := range cidrs(m.GetSourcePrefixRanges()) {
						for _, sp := range orEmpty(ports) {
							keys = append(keys, strings.Join([]string{
								strconv.Itoa(int(m.GetDestinationPort().GetValue())), dst, sn,
								m.GetTransportProtocol(), alpn, dsrc, m.GetSourceType().String(), src, sp,
							}, "|"))
						}
					}
				}
			}
		}
	}
	return keys
}

func (c *checker) chain(ln string, fc *listener.FilterChain) []error {
	where := ln + "/" + fc.Name
	var errs []error
	if ts := fc.GetTransportSocket(); ts != nil {
		m, err := ts.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return []error{fmt.Errorf("%s transport socket: %w", where, err)}
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s transport socket: %w", where, err))
			}
		}
		if dt, ok := m.(*tlsv3.DownstreamTlsContext); ok {
			sds := dt.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
			if len(sds) == 0 && len(dt.GetCommonTlsContext().GetTlsCertificates()) == 0 {
				errs = append(errs, fmt.Errorf("%s terminates TLS without a certificate", where))
			}
			for _, s := range sds {
				if _, ok := c.secrets[s.Name]; !ok {
					errs = append(errs, fmt.Errorf("%s references undefined secret %q", where, s.Name))
				}
			}
		}
	}
	if len(fc.GetFilters()) == 0 {
		errs = append(errs, fmt.Errorf("%s has no filters", where))
	}
	for i, f := range fc.GetFilters() {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s filter %s: %w", where, f.Name, err))
			continue
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s filter %s: %w", where, f.Name, err))
			}
		}
		terminal := false
		switch cfg := m.(type) {
		case *tcpproxy.TcpProxy:
			terminal = true
			if err := c.cluster(where, cfg.GetCluster()); err != nil {
				errs = append(errs, err)
			}
		case *hcmv3.HttpConnectionManager:
			terminal = true
			name := cfg.GetRds().GetRouteConfigName()
			if _, ok := c.routes[name]; !ok {
				errs = append(errs, fmt.Errorf("%s references undefined route configuration %q", where, name))
			}
			errs = append(errs, checkUpgrades(where, cfg, fc.GetTransportSocket() == nil)...)
			hf := cfg.GetHttpFilters()
			if len(hf) == 0 || hf[len(hf)-1].Name != "envoy.filters.http.router" {
				errs = append(errs, fmt.Errorf("%s: the router must be the last HTTP filter", where))
			}
			for _, h := range hf {
				if err := validateAny(h.GetTypedConfig()); err != nil {
					errs = append(errs, fmt.Errorf("%s http filter %s: %w", where, h.Name, err))
				}
			}
		}
		if terminal != (i == len(fc.GetFilters())-1) {
			errs = append(errs, fmt.Errorf("%s: filter %s is terminal=%t at position %d of %d", where, f.Name, terminal, i+1, len(fc.GetFilters())))
		}
	}
	return errs
}

func (c *checker) udpAction(where string, om *xdsmatcher.Matcher_OnMatch) []error {
	a := om.GetAction()
	if a == nil {
		return []error{fmt.Errorf("%s: matcher without an action", where)}
	}
	m, err := a.GetTypedConfig().UnmarshalNew()
	if err != nil {
		return []error{fmt.Errorf("%s: %w", where, err)}
	}
	r, ok := m.(*udpproxy.Route)
	if !ok {
		return []error{fmt.Errorf("%s: action is %T, want udp_proxy Route", where, m)}
	}
	if err := c.cluster(where, r.GetCluster()); err != nil {
		return []error{err}
	}
	return nil
}

func (c *checker) routeConfig(rc *route.RouteConfiguration) []error {
	var errs []error
	domains := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			if other, dup := domains[d]; dup {
				errs = append(errs, fmt.Errorf("route %s: domain %q in virtual hosts %s and %s", rc.Name, d, other, vh.Name))
			}
			domains[d] = vh.Name
		}
		for _, r := range vh.GetRoutes() {
			if r.GetMatch().GetConnectMatcher() != nil || len(r.GetRoute().GetUpgradeConfigs()) > 0 {
				errs = append(errs, fmt.Errorf("route %s/%s/%s: matches CONNECT or configures upgrades: only the connection manager's WebSocket upgrade is allowed", rc.Name, vh.Name, r.Name))
			}
			res := []string{r.GetMatch().GetSafeRegex().GetRegex()}
			for _, h := range r.GetMatch().GetHeaders() {
				res = append(res, h.GetStringMatch().GetSafeRegex().GetRegex())
			}
			for _, re := range res {
				if re == "" {
					continue
				}
				if err := checkRegex(re); err != nil {
					errs = append(errs, fmt.Errorf("route %s/%s/%s: %w", rc.Name, vh.Name, r.Name, err))
				}
			}
			if cl := r.GetRoute().GetCluster(); cl != "" {
				if err := c.cluster("route "+rc.Name+"/"+vh.Name+"/"+r.Name, cl); err != nil {
					errs = append(errs, err)
				}
			} else if r.GetDirectResponse() == nil {
				errs = append(errs, fmt.Errorf("route %s/%s/%s neither routes to a cluster nor answers", rc.Name, vh.Name, r.Name))
			}
		}
	}
	return errs
}

// websocketUpgrade is the only upgrade type a connection manager may carry.
const websocketUpgrade = "websocket"

// checkUpgrades holds an HTTP connection manager to WebSocket-only
// upgrades: requests are decided one by one, and any other upgrade (h2c,
// CONNECT, a custom type) or HTTP/2 extended CONNECT would turn the
// connection into a tunnel whose requests are never decided. A plain-HTTP
// manager (plain) must use the HTTP/1 codec, so that the h2c prior-knowledge
// preface is refused there.
func checkUpgrades(where string, cfg *hcmv3.HttpConnectionManager, plain bool) []error {
	var errs []error
	ucs := cfg.GetUpgradeConfigs()
	if len(ucs) != 1 || !strings.EqualFold(ucs[0].GetUpgradeType(), websocketUpgrade) ||
		(ucs[0].GetEnabled() != nil && !ucs[0].GetEnabled().GetValue()) || len(ucs[0].GetFilters()) > 0 {
		var types []string
		for _, u := range ucs {
			types = append(types, u.GetUpgradeType())
		}
		errs = append(errs, fmt.Errorf("%s: upgrade configs %v: want exactly one enabled %q upgrade without its own filters", where, types, websocketUpgrade))
	}
	if cfg.GetHttp2ProtocolOptions().GetAllowConnect() {
		errs = append(errs, fmt.Errorf("%s: HTTP/2 extended CONNECT is allowed", where))
	}
	if plain && cfg.GetCodecType() != hcmv3.HttpConnectionManager_HTTP1 {
		errs = append(errs, fmt.Errorf("%s: plain-HTTP connection manager with codec %v: want HTTP1 (no h2c)", where, cfg.GetCodecType()))
	}
	return errs
}
