package policy

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNormalizeRule(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    EgressRule
		want  EgressRule
		field string
		err   string
	}{
		{name: "defaults", in: EgressRule{Dst: "Example.com."},
			want: EgressRule{Dst: "example.com", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow}},
		{name: "tls alias", in: EgressRule{Dst: "example.com", Proto: "TLS"},
			want: EgressRule{Dst: "example.com", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow}},
		{name: "http default port", in: EgressRule{Dst: "example.com", Proto: ProtoHTTP},
			want: EgressRule{Dst: "example.com", Proto: ProtoHTTP, Port: 80, PortEnd: 80, Action: Allow}},
		{name: "ssh default port", in: EgressRule{Dst: "github.com", Proto: ProtoSSH},
			want: EgressRule{Dst: "github.com", Proto: ProtoSSH, Port: 22, PortEnd: 22, Action: Allow}},
		{name: "tcp range", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 7000, PortEnd: 7010},
			want: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 7000, PortEnd: 7010, Action: Allow}},
		{name: "range of 256", in: EgressRule{Dst: "db.example.test", Proto: ProtoUDP, Port: 1000, PortEnd: 1255},
			want: EgressRule{Dst: "db.example.test", Proto: ProtoUDP, Port: 1000, PortEnd: 1255, Action: Allow}},
		{name: "tcp to cidr", in: EgressRule{Dst: "10.1.0.0/16", Proto: ProtoTCP, Port: 5432},
			want: EgressRule{Dst: "10.1.0.0/16", Proto: ProtoTCP, Port: 5432, PortEnd: 5432, Action: Allow}},
		{name: "deny", in: EgressRule{Dst: ".example.com", Action: "DENY"},
			want: EgressRule{Dst: ".example.com", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Deny}},
		{name: "path allow forces deny default and inspect",
			in: EgressRule{Dst: "api.example.test", Paths: []PathRule{{Path: "/v1/", Methods: []string{"get", "GET", "post"}}}},
			want: EgressRule{Dst: "api.example.test", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow,
				Paths:       []PathRule{{Path: "/v1/", Methods: []string{"GET", "POST"}, Action: Allow}},
				PathDefault: Deny, Inspect: true}},
		{name: "only deny paths default allow",
			in: EgressRule{Dst: "api.example.test", Proto: ProtoHTTP, Paths: []PathRule{{Path: "~/admin(/|$)", Action: Deny}}},
			want: EgressRule{Dst: "api.example.test", Proto: ProtoHTTP, Port: 80, PortEnd: 80, Action: Allow,
				Paths: []PathRule{{Path: "~/admin(/|$)", Action: Deny}}, PathDefault: Allow, Inspect: true}},
		{name: "explicit path default kept",
			in: EgressRule{Dst: "api.example.test", Paths: []PathRule{{Path: "/v1/"}}, PathDefault: Allow},
			want: EgressRule{Dst: "api.example.test", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow,
				Paths: []PathRule{{Path: "/v1/", Action: Allow}}, PathDefault: Allow, Inspect: true}},
		{name: "inspect without paths", in: EgressRule{Dst: ".example.com", Inspect: true},
			want: EgressRule{Dst: ".example.com", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow, Inspect: true}},

		{name: "unknown proto", in: EgressRule{Dst: "example.com", Proto: "ftp"}, field: "proto", err: `unknown protocol "ftp"`},
		{name: "unknown action", in: EgressRule{Dst: "example.com", Action: "block"}, field: "action", err: `unknown action "block"`},
		{name: "tcp needs port", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP}, field: "port", err: "tcp rules need a port"},
		{name: "udp needs port", in: EgressRule{Dst: "db.example.test", Proto: ProtoUDP}, field: "port", err: "udp rules need a port"},
		{name: "reversed range", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 10, PortEnd: 5}, field: "port", err: "reversed"},
		{name: "range too wide", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 1000, PortEnd: 1256}, field: "port", err: "holds 257 ports; at most 256"},
		{name: "range without start", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, PortEnd: 5}, field: "port", err: "without a start"},
		{name: "tcp wildcard", in: EgressRule{Dst: ".example.com", Proto: ProtoTCP, Port: 5432}, field: "dst", err: "tcp rules need an exact host name"},
		{name: "ssh wildcard", in: EgressRule{Dst: ".example.com", Proto: ProtoSSH}, field: "dst", err: "ssh rules need an exact host name"},
		{name: "udp wildcard", in: EgressRule{Dst: ".example.com", Proto: ProtoUDP, Port: 53}, field: "dst", err: "udp rules need an exact host name"},
		{name: "bad dst", in: EgressRule{Dst: "exa mple.com"}, field: "dst", err: "invalid character ' ' in host name"},
		{name: "paths on tcp", in: EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 1, Paths: []PathRule{{Path: "/"}}}, field: "paths", err: "only for https and http"},
		{name: "paths on deny", in: EgressRule{Dst: "example.com", Action: Deny, Paths: []PathRule{{Path: "/"}}}, field: "paths", err: "need an allow rule"},
		{name: "bad regex", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "~/v[0-9"}}}, field: "paths[0].path", err: "invalid regular expression"},
		{name: "regex alternation cannot escape", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "~a)|(b"}}}, field: "paths[0].path", err: "invalid regular expression"},
		{name: "empty regex", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "~"}}}, field: "paths[0].path", err: "empty regular expression"},
		{name: "relative path", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "v1/"}}}, field: "paths[0].path", err: "must start with '/'"},
		{name: "path with query", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/a?b"}}}, field: "paths[0].path", err: "query strings"},
		{name: "path with space", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/a b"}}}, field: "paths[0].path", err: "invalid character ' '"},
		{name: "bad method", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/", Methods: []string{"GE T"}}}}, field: "paths[0].methods[0]", err: "invalid HTTP method"},
		{name: "empty method", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/", Methods: []string{""}}}}, field: "paths[0].methods[0]", err: "invalid HTTP method"},
		{name: "bad path action", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/", Action: "drop"}}}, field: "paths[0].action", err: "unknown action"},
		{name: "path default without paths", in: EgressRule{Dst: "example.com", PathDefault: Deny}, field: "path_default", err: "needs path rules"},
		{name: "bad path default", in: EgressRule{Dst: "example.com", Paths: []PathRule{{Path: "/"}}, PathDefault: "maybe"}, field: "path_default", err: "unknown action"},
		{name: "inspect on ssh", in: EgressRule{Dst: "github.com", Proto: ProtoSSH, Inspect: true}, field: "inspect", err: "only for https and http allow rules"},
		{name: "inspect on deny", in: EgressRule{Dst: "github.com", Action: Deny, Inspect: true}, field: "inspect", err: "only for https and http allow rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Normalize(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				var re *ruleError
				require.True(t, errors.As(err, &re))
				require.Equal(t, tc.field, re.field)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			again, err := Normalize(got)
			require.NoError(t, err)
			require.Equal(t, got, again, "Normalize must be idempotent")
		})
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi uint16
		err    string
	}{
		{in: "443", lo: 443, hi: 443},
		{in: "1", lo: 1, hi: 1},
		{in: "65535", lo: 65535, hi: 65535},
		{in: "7000-7010", lo: 7000, hi: 7010},
		{in: "65280-65535", lo: 65280, hi: 65535},
		{in: "0", err: "out of range"},
		{in: "65536", err: "out of range"},
		{in: "99999999999999999999", err: "out of range"},
		{in: "-1", err: "empty port"},
		{in: "+1", err: "invalid port"},
		{in: "1-", err: "empty port"},
		{in: "1-2-3", err: "invalid port"},
		{in: "80-79", err: "reversed"},
		{in: "1000-2000", err: "at most 256"},
		{in: "https", err: "invalid port"},
		{in: "", err: "empty port"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			lo, hi, err := ParsePortRange(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.lo, lo)
			require.Equal(t, tc.hi, hi)
		})
	}
}

func TestDedup(t *testing.T) {
	a := EgressRule{Dst: "example.com", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow,
		Source: Provenance{Kind: SourceOption, Key: KeyAllow, Item: "example.com"}}
	a2 := a
	a2.Source = Provenance{Kind: SourceLabel, Key: KeyAllow, Item: "https://example.com:443"}
	otherPort := a
	otherPort.Port, otherPort.PortEnd = 8443, 8443
	deny := a
	deny.Action = Deny
	withPaths := a
	withPaths.Paths = []PathRule{{Path: "/v1/", Action: Allow}}
	withPaths.PathDefault = Deny
	withPaths.Inspect = true
	got := Dedup([]EgressRule{a, a2, otherPort, deny, withPaths, withPaths})
	require.Equal(t, []EgressRule{a, otherPort, deny, withPaths}, got, "first provenance wins; key includes port and action; path rules are not merged away")
}
