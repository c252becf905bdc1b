package verdict

import (
	"net/netip"
	"slices"

	"github.com/clawker-fw/clawker-fw/policy"
)

// special is the one list of upstream ranges a name rule may never reach on
// its own (the builtin engine refuses them at dial time, the Envoy engine's
// DNS cache drops them). A name resolving there is DNS rebinding against the
// host, the containers or the local network, or points nowhere a public
// name should. Only an IP/CIDR rule naming the address, or the operator's
// CLAWKER_ALLOW_PRIVATE_UPSTREAMS, opens one. Each entry, with its registry
// (IANA special-purpose address registries, RFC 6890):
var special = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network" (RFC 791); 0.0.0.0 reaches the host itself on Linux
	netip.MustParsePrefix("10.0.0.0/8"),     // private (RFC 1918): the host's and Docker's own networks live here
	netip.MustParsePrefix("100.64.0.0/10"),  // shared address space (RFC 6598): carrier-grade NAT, Tailscale
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback (RFC 1122): the host's own services
	netip.MustParsePrefix("169.254.0.0/16"), // link-local (RFC 3927): cloud metadata services (169.254.169.254)
	netip.MustParsePrefix("172.16.0.0/12"),  // private (RFC 1918): Docker's default bridge and address pools
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments (RFC 6890): not a public destination
	netip.MustParsePrefix("192.168.0.0/16"), // private (RFC 1918): home and office networks
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking (RFC 2544): lab networks, never public
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast (RFC 5771): no TCP peer, reaches local segments
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved (RFC 1112), 255.255.255.255 broadcast included
	netip.MustParsePrefix("::/128"),         // unspecified (RFC 4291): the host itself, as 0.0.0.0
	netip.MustParsePrefix("::1/128"),        // loopback (RFC 4291)
	netip.MustParsePrefix("fc00::/7"),       // unique local (RFC 4193): the IPv6 private ranges
	netip.MustParsePrefix("fe80::/10"),      // link-local (RFC 4291)
	netip.MustParsePrefix("ff00::/8"),       // multicast (RFC 4291)
}

// Special returns the list of special ranges (a copy).
func Special() []netip.Prefix { return slices.Clone(special) }

// IsSpecial reports whether addr (IPv4-mapped addresses unmapped) lies in a
// special range.
func IsSpecial(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range special {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Upstream decides one address the proxy resolved for a flow of pol that a
// name allowed (or a bypass), before it dials it (the address is never the
// client's choice, invariant 7). local says whether the address is the
// host's own (the kernel's answer, asked by the caller at dial time; a
// failed lookup counts as local); allowPrivate are the operator's
// exemptions. It returns "" when the proxy may dial addr, else the reason:
//  1. a CIDR deny covering addr wins over the name's allow (deny-rule);
//  2. an address of the host is reached only through an IP/CIDR rule of
//     pol naming it, never a bypass or the operator's exemptions
//     (host-local);
//  3. a Special address only through allowPrivate or an IP/CIDR rule of
//     pol (private-upstream);
//  4. everything else may be dialled.
func Upstream(pol *policy.Policy, addr netip.Addr, port uint16, l4 policy.L4, local bool, allowPrivate []netip.Prefix) policy.Reason {
	addr = addr.Unmap()
	if pol.DeniedAddr(addr) != nil {
		return policy.ReasonDenyRule
	}
	if local {
		if NamesAddr(pol, addr, port, l4) {
			return ""
		}
		return ReasonHostLocal
	}
	if !IsSpecial(addr) {
		return ""
	}
	for _, p := range allowPrivate {
		if p.Contains(addr) {
			return ""
		}
	}
	if NamesAddr(pol, addr, port, l4) {
		return ""
	}
	return ReasonPrivateUpstream
}

// NamesAddr reports whether an IP/CIDR rule of pol (not a bypass) allows
// addr on port: the only way, besides host.docker.internal, to the host.
func NamesAddr(pol *policy.Policy, addr netip.Addr, port uint16, l4 policy.L4) bool {
	if pol == nil || pol.AllowAll {
		return false
	}
	m := pol.MatchIP(addr, port, l4)
	return m.Allowed && m.Entry != nil
}
