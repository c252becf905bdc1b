package builtin

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h), read at SOL_IP.
const soOriginalDst = 80

// originalDst returns the destination a redirected (nftables redirect/DNAT)
// TCP flow was addressed to before the redirect.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	var mreq *unix.IPv6Mreq
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// struct sockaddr_in is 16 bytes, like struct ipv6_mreq: borrow its getter.
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("read original destination: %w", serr)
	}
	raw := mreq.Multiaddr
	if binary.LittleEndian.Uint16(raw[0:2]) != unix.AF_INET {
		return netip.AddrPort{}, errors.New("read original destination: not an IPv4 address")
	}
	port := binary.BigEndian.Uint16(raw[2:4])
	addr := netip.AddrFrom4([4]byte{raw[4], raw[5], raw[6], raw[7]})
	return netip.AddrPortFrom(addr, port), nil
}

// ReasonPrivateUpstream: a name resolved only to private or link-local
// addresses that no IP/CIDR rule allows.
const ReasonPrivateUpstream = verdict.ReasonPrivateUpstream

// errPrivate is returned when every address of a name is refused.
type errPrivate struct {
	name  string
	addrs []netip.Addr
}

func (e *errPrivate) Error() string {
	return fmt.Sprintf("refuse upstream %s: it resolves only to private or link-local addresses %v that no IP/CIDR rule allows", e.name, e.addrs)
}

// resolve looks name up with the resolvers of endpoint idx's network (see
// resolverFor) and returns the addresses the proxy may dial for d
// (verdict.Upstream decides each, with the kernel's answer on whether it is
// the host's own). host.docker.internal is the endpoint's gateway (see
// gateway).
func (e *Engine) resolve(ctx context.Context, d dialFor, idx uint32, name string, port uint16, l4 policy.L4) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		if err := e.checkIPDest(d.pol, a, port, l4); err != nil {
			return nil, err
		}
		return []netip.Addr{a}, nil
	}
	if name == hostDockerInternal {
		return e.gateway(d, idx, port)
	}
	addrs, err := e.lookup(ctx, idx, name)
	if err != nil {
		return nil, err
	}
	ok := addrs[:0:0]
	var local *errHostLocal
	for _, a := range addrs {
		isLocal, why := e.hostLocal(a)
		switch verdict.Upstream(d.pol, a, port, l4, isLocal, e.cfg.AllowPrivateUpstreams) {
		case "":
			ok = append(ok, a.Unmap())
		case ReasonHostLocal:
			if local == nil {
				local = &errHostLocal{name: name, addr: a, why: why}
			}
		}
	}
	switch {
	case len(ok) > 0:
		return ok, nil
	case local != nil:
		return nil, local
	}
	return nil, &errPrivate{name: name, addrs: addrs}
}

// dialName dials name:port for endpoint idx, resolved by the proxy itself
// (never the address the client chose, invariant 7), trying each permitted
// address in turn.
func (e *Engine) dialName(ctx context.Context, d dialFor, idx uint32, network, name string, port uint16) (net.Conn, error) {
	addrs, err := e.resolve(ctx, d, idx, name, port, l4Of(network))
	if err != nil {
		return nil, err
	}
	return e.dialAddrs(ctx, network, addrs, port)
}

// dialAddrs dials the first address that answers (TCP by address, with no
// text to format and parse again on the way).
func (e *Engine) dialAddrs(ctx context.Context, network string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout}
	var errs []error
	p := e.cfg.UpstreamPort(port)
	for _, a := range addrs {
		if l4Of(network) == policy.L4TCP {
			c, err := d.DialTCP(ctx, network, netip.AddrPort{}, netip.AddrPortFrom(a, p))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
			continue
		}
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), strconv.Itoa(int(p))))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dial upstream: %w", errors.Join(errs...))
}

// dnsEntry is one cached lookup.
type dnsEntry struct {
	addrs   []netip.Addr
	expires time.Time
}

// resolverFor returns the resolver for a flow of endpoint idx and the key
// that tells its answers apart in the cache: its network's own upstreams
// (Network.Upstreams, the ones the DNS plugin answered the container from),
// else the plugin-wide Config.Resolver (key ""). An endpoint the current
// snapshot does not know has no network to ask for: refused.
func (e *Engine) resolverFor(idx uint32) (string, Resolver, error) {
	c := e.state()
	if c == nil {
		return "", nil, errors.New("resolve: no snapshot")
	}
	ep, ok := c.snap.Endpoints[idx]
	if !ok || ep == nil {
		return "", nil, fmt.Errorf("resolve: endpoint %d is not in the current snapshot", idx)
	}
	ups := c.snap.Networks[ep.NetworkID].Upstreams()
	if len(ups) == 0 {
		return "", e.cfg.Resolver, nil
	}
	key := strings.Join(ups, ",")
	if v, ok := e.resolvers.Load(key); ok {
		return key, v.(Resolver), nil
	}
	if e.resolversN.Add(1) > maxResolvers {
		// Networks come and go: start over rather than grow without limit.
		e.resolvers.Clear()
		e.resolversN.Store(0)
	}
	v, _ := e.resolvers.LoadOrStore(key, e.cfg.NetworkResolver(ups))
	return key, v.(Resolver), nil
}

const maxResolvers = 256

// UpstreamResolver resolves names through upstreams ("ip:port") and nothing
// else (no resolv.conf, no hosts file: the plugin's rootfs has neither, and
// tests must never reach a public resolver). Like the DNS plugin's exchange,
// it asks the upstreams in order until one answers (a truncated UDP answer
// is asked again over TCP) and takes that first answer, whatever its rcode,
// so the proxy sees what the container was told.
func UpstreamResolver(upstreams []string) Resolver {
	return &upstreamResolver{
		ups: slices.Clone(upstreams),
		udp: &mdns.Client{Net: "udp", UDPSize: resolverEDNSSize},
		tcp: &mdns.Client{Net: "tcp"},
	}
}

// resolverEDNSSize is the UDP payload size advertised (DNS flag day 2020).
const resolverEDNSSize = 1232

type upstreamResolver struct {
	ups      []string
	udp, tcp *mdns.Client
}

// LookupNetIP implements Resolver for IPv4 ("ip4"): the A records of the
// answer reached from host through its CNAME chain.
func (r *upstreamResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if network != "ip4" {
		return nil, fmt.Errorf("resolve %s: network %q: only ip4 is resolved", host, network)
	}
	addrs, _, err := r.lookupTTL(ctx, host)
	return addrs, err
}

// ttlResolver is a Resolver that also tells how long its answer may be
// kept: Engine.lookup keeps it no longer.
type ttlResolver interface {
	lookupTTL(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
}

// lookupTTL is LookupNetIP for ip4 with the smallest TTL of the records
// the addresses were read from (the CNAME chain and the A records).
func (r *upstreamResolver) lookupTTL(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(host), mdns.TypeA)
	q.SetEdns0(resolverEDNSSize, false)
	var errs []error
	for _, up := range r.ups {
		resp, _, err := r.udp.ExchangeContext(ctx, q, up)
		if err == nil && resp.Truncated {
			resp, _, err = r.tcp.ExchangeContext(ctx, q, up)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("exchange with %s: %w", up, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if resp.Rcode != mdns.RcodeSuccess {
			return nil, 0, &net.DNSError{Err: mdns.RcodeToString[resp.Rcode], Name: host, Server: up, IsNotFound: resp.Rcode == mdns.RcodeNameError}
		}
		addrs, ttl := chainA(q.Question[0].Name, resp.Answer)
		if len(addrs) == 0 {
			return nil, 0, &net.DNSError{Err: "no A records", Name: host, Server: up, IsNotFound: true}
		}
		return addrs, ttl, nil
	}
	if len(errs) == 0 {
		return nil, 0, &net.DNSError{Err: "no upstream resolver", Name: host}
	}
	return nil, 0, errors.Join(errs...)
}

// chainA returns the A records of rrs owned by name or by a CNAME target
// reached from it, and the smallest TTL among those records and the
// CNAMEs of the chain.
func chainA(name string, rrs []mdns.RR) ([]netip.Addr, time.Duration) {
	owners := map[string]bool{strings.ToLower(name): true}
	for changed := true; changed; {
		changed = false
		for _, rr := range rrs {
			if c, ok := rr.(*mdns.CNAME); ok && owners[strings.ToLower(c.Hdr.Name)] && !owners[strings.ToLower(c.Target)] {
				owners[strings.ToLower(c.Target)] = true
				changed = true
			}
		}
	}
	var out []netip.Addr
	ttl := uint32(math.MaxUint32)
	for _, rr := range rrs {
		h := rr.Header()
		if !owners[strings.ToLower(h.Name)] {
			continue
		}
		switch rr := rr.(type) {
		case *mdns.CNAME:
			ttl = min(ttl, h.Ttl)
		case *mdns.A:
			if ip, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				out = append(out, ip)
				ttl = min(ttl, h.Ttl)
			}
		}
	}
	return out, time.Duration(ttl) * time.Second
}

// lookup resolves name with endpoint idx's resolver (resolverFor), caching
// answers per resolver for Config.ResolveCacheTTL, and never longer than
// the answer's TTL where the resolver tells it (ttlResolver: the plugin's
// resolvers do; a TTL of 0 is not cached). Failures are not cached. The
// cache only saves round trips: every use of an answer is checked again
// (verdict.Upstream).
func (e *Engine) lookup(ctx context.Context, idx uint32, name string) ([]netip.Addr, error) {
	rkey, res, err := e.resolverFor(idx)
	if err != nil {
		return nil, err
	}
	key := rkey + "|" + name
	now := time.Now()
	if e.cfg.ResolveCacheTTL > 0 {
		if v, ok := e.dnsCache.Load(key); ok {
			if ent := v.(*dnsEntry); now.Before(ent.expires) {
				return ent.addrs, nil
			}
			e.dnsCache.Delete(key)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	defer cancel()
	keep := e.cfg.ResolveCacheTTL
	var addrs []netip.Addr
	if tr, ok := res.(ttlResolver); ok {
		var ttl time.Duration
		addrs, ttl, err = tr.lookupTTL(ctx, name)
		keep = min(keep, ttl)
	} else {
		addrs, err = res.LookupNetIP(ctx, "ip4", name)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if keep > 0 && len(addrs) > 0 {
		if e.dnsCacheN.Add(1) > maxDNSCache {
			// Crude bound: start over rather than grow without limit.
			e.dnsCache.Clear()
			e.dnsCacheN.Store(0)
		}
		e.dnsCache.Store(key, &dnsEntry{addrs: addrs, expires: now.Add(keep)})
	}
	return addrs, nil
}

const maxDNSCache = 4096
