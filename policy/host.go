package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// Limits of DNS names (RFC 1035 section 2.3.4, in presentation form without
// the trailing dot).
const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// NormalizeHost normalizes and validates an exact host name (no wildcard, no
// IP address). The result is the form every part of the firewall compares:
//
//  1. one trailing dot is dropped ("example.com." is "example.com");
//  2. a name with non-ASCII characters or "xn--" labels is converted with
//     IDNA (UTS #46 lookup profile, golang.org/x/net/idna) to its lower-case
//     punycode form ("Bücher.example" is "xn--bcher-kva.example"); other
//     names are lower-cased;
//  3. the name must have at most 253 characters, every label 1 to 63, made of
//     letters, digits, '-' and '_', not starting or ending with '-';
//  4. the last label must not be all digits or a hex number ("0x7f"): such
//     names are read as IP addresses by resolvers (inet_aton), so a rule on
//     them would not mean what it says.
//
// NormalizeHost is idempotent: its output normalizes to itself.
func NormalizeHost(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty host name")
	}
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", errors.New("empty host name")
	}
	if needsIDNA(name) {
		a, err := idna.Lookup.ToASCII(name)
		if err != nil {
			return "", fmt.Errorf("invalid internationalized host name: %w", err)
		}
		if err := checkASCIIName(a); err != nil {
			return "", err
		}
		// The IDNA mapping is not always its own fixpoint on odd input;
		// accept only names whose normal form is stable, so that every
		// stored name compares equal to itself after a round trip.
		if again, err := idna.Lookup.ToASCII(a); err != nil || again != a {
			return "", errors.New("host name has no stable IDNA form")
		}
		return a, nil
	}
	name = strings.ToLower(name)
	if err := checkASCIIName(name); err != nil {
		return "", err
	}
	return name, nil
}

// needsIDNA reports whether name has non-ASCII characters or an A-label
// ("xn--"), which IDNA must map or validate.
func needsIDNA(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return true
		}
	}
	l := strings.ToLower(name)
	return strings.HasPrefix(l, "xn--") || strings.Contains(l, ".xn--")
}

// checkASCIIName validates a lower-case ASCII host name (step 3 and 4 of
// NormalizeHost).
func checkASCIIName(name string) error {
	if len(name) > maxNameLen {
		return fmt.Errorf("host name longer than %d characters (%d)", maxNameLen, len(name))
	}
	last := ""
	for l := range strings.SplitSeq(name, ".") {
		last = l
		if l == "" {
			return errors.New("empty label in host name")
		}
		if len(l) > maxLabelLen {
			return fmt.Errorf("label %q longer than %d characters (%d)", l, maxLabelLen, len(l))
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' {
				continue
			}
			if c >= 'A' && c <= 'Z' {
				return fmt.Errorf("upper-case character %q in host name", rune(c))
			}
			if c < 0x80 {
				return fmt.Errorf("invalid character %q in host name", rune(c))
			}
			return fmt.Errorf("invalid byte 0x%02x in host name", c)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
	}
	if numericLabel(last) {
		return errors.New("numeric-only host name (its last label is a number; write IP addresses in dotted form)")
	}
	return nil
}

// numericLabel reports whether l is a decimal or hex (0x...) number.
func numericLabel(l string) bool {
	if strings.HasPrefix(l, "0x") {
		l = l[2:]
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}

// NormalizeDst normalizes a rule destination and reports its prefix when it
// is an IP address or CIDR. The forms are:
//
//   - an exact host name, normalized by NormalizeHost;
//   - a wildcard ".example.com", which matches example.com and every name
//     below it ("*.example.com" is rejected with a hint, because users read it
//     as "subdomains only");
//   - an IP address, normalized to its canonical single-address prefix
//     ("192.0.2.7/32", "2001:db8::1/128"; IPv4-mapped IPv6 is unmapped);
//   - a CIDR in canonical form (host bits must be zero).
//
// IPv6 addresses and CIDRs parse and validate, but clawker-fw denies IPv6
// end to end for now: an IPv6 rule never lets a packet through.
func NormalizeDst(dst string) (string, netip.Prefix, error) {
	if dst == "" {
		return "", netip.Prefix{}, errors.New("empty destination")
	}
	if strings.HasPrefix(dst, "*.") {
		return "", netip.Prefix{}, fmt.Errorf("wildcards are written %q (the name and every subdomain), not with '*'", dst[1:])
	}
	if rest, ok := strings.CutPrefix(dst, "."); ok {
		if looksLikeIP(rest) {
			return "", netip.Prefix{}, errors.New("a wildcard cannot apply to an IP address or CIDR")
		}
		if strings.HasPrefix(rest, ".") {
			return "", netip.Prefix{}, errors.New("empty label in host name")
		}
		name, err := NormalizeHost(rest)
		if err != nil {
			return "", netip.Prefix{}, err
		}
		return "." + name, netip.Prefix{}, nil
	}
	if strings.Contains(dst, "/") {
		p, err := normalizePrefix(dst)
		if err != nil {
			return "", netip.Prefix{}, err
		}
		return p.String(), p, nil
	}
	if strings.Contains(dst, ":") {
		a, err := netip.ParseAddr(dst)
		if err != nil {
			return "", netip.Prefix{}, fmt.Errorf("invalid IP address: %w", err)
		}
		return addrPrefix(a)
	}
	// Without a ':' only digits and dots can parse as an address (a name
	// would only cost ParseAddr an error allocated).
	if strings.Trim(dst, "0123456789.") == "" {
		if a, err := netip.ParseAddr(dst); err == nil {
			return addrPrefix(a)
		}
	}
	name, err := NormalizeHost(dst)
	if err != nil {
		return "", netip.Prefix{}, err
	}
	return name, netip.Prefix{}, nil
}

// looksLikeIP reports whether s is (or tries to be) an address or CIDR.
func looksLikeIP(s string) bool {
	if strings.ContainsAny(s, ":/") {
		return true
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

func addrPrefix(a netip.Addr) (string, netip.Prefix, error) {
	if a.Zone() != "" {
		return "", netip.Prefix{}, errors.New("IPv6 zones are not allowed in rules")
	}
	a = a.Unmap()
	p := netip.PrefixFrom(a, a.BitLen())
	return p.String(), p, nil
}

// normalizePrefix parses a CIDR, unmaps IPv4-mapped IPv6 prefixes and
// requires the host bits to be zero.
func normalizePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR: %w", err)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, errors.New("IPv4-mapped CIDR shorter than /96")
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("CIDR has host bits set (did you mean %s?)", m)
	}
	return p, nil
}
