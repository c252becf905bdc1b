package policy

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNormalizeHost(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name, in, want, err string
	}{
		{name: "lower", in: "API.Example.COM", want: "api.example.com"},
		{name: "trailing dot", in: "example.com.", want: "example.com"},
		{name: "single label", in: "localhost", want: "localhost"},
		{name: "underscore", in: "_dmarc.example.com", want: "_dmarc.example.com"},
		{name: "hyphen inside", in: "my-host.example.com", want: "my-host.example.com"},
		{name: "digits in labels", in: "1.2.3.example", want: "1.2.3.example"},
		{name: "idna unicode", in: "Bücher.example", want: "xn--bcher-kva.example"},
		{name: "idna punycode kept", in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{name: "idna punycode upper", in: "XN--BCHER-KVA.example", want: "xn--bcher-kva.example"},
		{name: "idna fullwidth dot", in: "bücher\u3002example", want: "xn--bcher-kva.example"},
		{name: "label 63", in: long63 + ".com", want: long63 + ".com"},
		{name: "name 253", in: strings.Repeat("a.", 126) + "a", want: strings.Repeat("a.", 126) + "a"},

		{name: "empty", in: "", err: "empty host name"},
		{name: "only dot", in: ".", err: "empty host name"},
		{name: "space", in: "exa mple.com", err: "invalid character ' ' in host name"},
		{name: "star", in: "*.example.com", err: "invalid character '*'"},
		{name: "empty label", in: "a..example.com", err: "empty label"},
		{name: "two trailing dots", in: "example.com..", err: "empty label"},
		{name: "leading dot", in: ".example.com", err: "empty label"},
		{name: "label 64", in: long63 + "a.com", err: "longer than 63"},
		{name: "name 254", in: strings.Repeat("a.", 126) + "ab", err: "longer than 253"},
		{name: "numeric only", in: "12345", err: "numeric-only"},
		{name: "numeric tld", in: "example.123", err: "numeric-only"},
		{name: "dotted numbers", in: "1.2.3", err: "numeric-only"},
		{name: "hex number", in: "0x7f000001", err: "numeric-only"},
		{name: "leading hyphen", in: "-a.example.com", err: "starts or ends with '-'"},
		{name: "trailing hyphen", in: "a-.example.com", err: "starts or ends with '-'"},
		{name: "bad punycode", in: "xn--zz-.example", err: "internationalized"},
		{name: "colon", in: "example.com:443", err: "invalid character ':'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizeHost(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			again, err := NormalizeHost(got)
			require.NoError(t, err)
			require.Equal(t, got, again, "normalization must be idempotent")
		})
	}
}

func TestNormalizeDst(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, prefix, err string
	}{
		{name: "exact", in: "Example.COM.", want: "example.com"},
		{name: "wildcard", in: ".Example.com", want: ".example.com"},
		{name: "wildcard idna", in: ".bücher.example", want: ".xn--bcher-kva.example"},
		{name: "ipv4", in: "192.0.2.7", want: "192.0.2.7/32", prefix: "192.0.2.7/32"},
		{name: "cidr", in: "10.1.0.0/16", want: "10.1.0.0/16", prefix: "10.1.0.0/16"},
		{name: "ipv6", in: "2001:DB8::1", want: "2001:db8::1/128", prefix: "2001:db8::1/128"},
		{name: "ipv6 cidr", in: "2001:db8::/32", want: "2001:db8::/32", prefix: "2001:db8::/32"},
		{name: "mapped ipv4", in: "::ffff:192.0.2.1", want: "192.0.2.1/32", prefix: "192.0.2.1/32"},
		{name: "mapped cidr", in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8", prefix: "10.0.0.0/8"},

		{name: "star wildcard", in: "*.example.com", err: `wildcards are written ".example.com"`},
		{name: "wildcard ip", in: ".10.0.0.1", err: "wildcard cannot apply to an IP"},
		{name: "wildcard cidr", in: ".10.0.0.0/8", err: "wildcard cannot apply to an IP"},
		{name: "wildcard ipv6", in: ".2001:db8::1", err: "wildcard cannot apply to an IP"},
		{name: "double dot wildcard", in: "..example.com", err: "empty label"},
		{name: "host bits", in: "10.1.2.3/16", err: "did you mean 10.1.0.0/16"},
		{name: "bad cidr", in: "10.0.0.0/33", err: "invalid CIDR"},
		{name: "bad ipv6", in: "2001:db8:::1", err: "invalid IP address"},
		{name: "zone", in: "fe80::1%eth0", err: "zones"},
		{name: "ipv4 octet out of range", in: "10.0.0.256", err: "numeric-only"},
		{name: "empty", in: "", err: "empty destination"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, p, err := NormalizeDst(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			if tc.prefix == "" {
				require.False(t, p.IsValid())
			} else {
				require.Equal(t, tc.prefix, p.String())
			}
			again, _, err := NormalizeDst(got)
			require.NoError(t, err)
			require.Equal(t, got, again)
		})
	}
}
