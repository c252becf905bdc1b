package builtin

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/policy"
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

// specialPrefixes are the upstream ranges a name rule may never reach on its
// own: a name resolving there is a DNS-rebinding attempt against the host,
// other containers or a cloud metadata service.
var specialPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// isSpecial reports whether addr lies in a private, loopback, link-local,
// CGNAT or otherwise non-public range.
func isSpecial(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range specialPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ReasonPrivateUpstream: a name resolved only to private or link-local
// addresses that no IP/CIDR rule allows.
const ReasonPrivateUpstream policy.Reason = "private-upstream"

// errPrivate is returned when every address of a name is refused.
type errPrivate struct {
	name  string
	addrs []netip.Addr
}

func (e *errPrivate) Error() string {
	return fmt.Sprintf("refuse upstream %s: it resolves only to private or link-local addresses %v that no IP/CIDR rule allows", e.name, e.addrs)
}

// upstreamOK reports whether the proxy may dial addr for a name rule of pol.
// An address of the host itself is refused (see hostLocal) unless an IP/CIDR
// rule of pol names it; Config.AllowPrivateUpstreams does not open it.
func (e *Engine) upstreamOK(pol *policy.Policy, addr netip.Addr, port uint16, l4 policy.L4) (ok bool, localWhy string) {
	if pol.DeniedAddr(addr) != nil {
		return false, "" // a CIDR deny wins over the name's allow
	}
	if local, why := e.hostLocal(addr); local {
		if explicitIP(pol, addr, port, l4) {
			return true, ""
		}
		return false, why
	}
	return e.privateOK(pol, addr, port, l4), ""
}

// privateOK reports whether addr, not the host's own, may be dialled for a
// name rule of pol: public addresses may; private and link-local ones only
// through Config.AllowPrivateUpstreams or an IP/CIDR rule of pol.
func (e *Engine) privateOK(pol *policy.Policy, addr netip.Addr, port uint16, l4 policy.L4) bool {
	if !isSpecial(addr) {
		return true
	}
	for _, p := range e.cfg.AllowPrivateUpstreams {
		if p.Contains(addr.Unmap()) {
			return true
		}
	}
	if pol != nil && !pol.AllowAll {
		if m := pol.MatchIP(addr, port, l4); m.Allowed {
			return true
		}
	}
	return false
}

// resolve looks name up with the configured resolver and returns the
// addresses the proxy may dial for pol (endpoint idx). host.docker.internal
// is the endpoint's gateway (see gateway).
func (e *Engine) resolve(ctx context.Context, pol *policy.Policy, idx uint32, name string, port uint16, l4 policy.L4) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		if err := e.checkIPDest(pol, a, port, l4); err != nil {
			return nil, err
		}
		return []netip.Addr{a}, nil
	}
	if name == hostDockerInternal {
		return e.gateway(pol, idx, port, l4)
	}
	addrs, err := e.lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	ok := addrs[:0:0]
	var local *errHostLocal
	for _, a := range addrs {
		good, why := e.upstreamOK(pol, a, port, l4)
		switch {
		case good:
			ok = append(ok, a.Unmap())
		case why != "" && local == nil:
			local = &errHostLocal{name: name, addr: a, why: why}
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
func (e *Engine) dialName(ctx context.Context, pol *policy.Policy, idx uint32, network, name string, port uint16) (net.Conn, error) {
	addrs, err := e.resolve(ctx, pol, idx, name, port, l4Of(network))
	if err != nil {
		return nil, err
	}
	return e.dialAddrs(ctx, network, addrs, port)
}

// dialAddrs dials the first address that answers.
func (e *Engine) dialAddrs(ctx context.Context, network string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout}
	var errs []error
	p := e.cfg.UpstreamPort(port)
	for _, a := range addrs {
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

// lookup resolves name with the configured resolver, caching answers for
// Config.ResolveCacheTTL (failures are not cached). The cache only saves
// round trips: every use of an answer is checked again (upstreamOK).
func (e *Engine) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	now := time.Now()
	if e.cfg.ResolveCacheTTL > 0 {
		if v, ok := e.dnsCache.Load(name); ok {
			if ent := v.(*dnsEntry); now.Before(ent.expires) {
				return ent.addrs, nil
			}
			e.dnsCache.Delete(name)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	defer cancel()
	addrs, err := e.cfg.Resolver.LookupNetIP(ctx, "ip4", name)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if e.cfg.ResolveCacheTTL > 0 && len(addrs) > 0 {
		if e.dnsCacheN.Add(1) > maxDNSCache {
			// Crude bound: start over rather than grow without limit.
			e.dnsCache.Clear()
			e.dnsCacheN.Store(0)
		}
		e.dnsCache.Store(name, &dnsEntry{addrs: addrs, expires: now.Add(e.cfg.ResolveCacheTTL)})
	}
	return addrs, nil
}

const maxDNSCache = 4096
