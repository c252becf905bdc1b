package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// compact is a short way to write a normalized rule in tests.
func rule(dst string, proto Proto, lo, hi uint16, action Action) EgressRule {
	return EgressRule{Dst: dst, Proto: proto, Port: lo, PortEnd: hi, Action: action}
}

// stripSource drops provenance so rules can be compared by content.
func stripSource(rules []EgressRule) []EgressRule {
	out := make([]EgressRule, len(rules))
	for i, r := range rules {
		r.Source = Provenance{}
		out[i] = r
	}
	return out
}

func TestParseNetworkOptionsIssueExample(t *testing.T) {
	opts := map[string]string{
		KeyAllow: "github.com, .npmjs.org,ssh://github.com,tcp://db.example.test:5432,10.1.0.0/16," +
			"https://api.example.test:8443,tcp://db.example.test:7000-7010,[2001:db8::1]:443,http://Plain.Example.test.",
		KeyDeny:        "evil.npmjs.org",
		KeyRules:       `[{"dst":"api.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}]`,
		KeyDNSUpstream: "192.0.2.53, 192.0.2.54:5353,[2001:db8::53]:53",
		KeyTLSInspect:  "all",
		KeyICC:         "true",
	}
	cfg, err := ParseNetworkOptions(opts, "net1")
	require.NoError(t, err)
	require.Equal(t, NetworkSettings{
		DNSUpstreams: []string{"192.0.2.53:53", "192.0.2.54:5353", "[2001:db8::53]:53"},
		InspectAll:   true,
		ICC:          true,
	}, cfg.Settings)
	require.Equal(t, []EgressRule{
		rule("github.com", ProtoHTTPS, 443, 443, Allow),
		rule(".npmjs.org", ProtoHTTPS, 443, 443, Allow),
		rule("github.com", ProtoSSH, 22, 22, Allow),
		rule("db.example.test", ProtoTCP, 5432, 5432, Allow),
		rule("10.1.0.0/16", ProtoHTTPS, 443, 443, Allow),
		rule("api.example.test", ProtoHTTPS, 8443, 8443, Allow),
		rule("db.example.test", ProtoTCP, 7000, 7010, Allow),
		rule("2001:db8::1/128", ProtoHTTPS, 443, 443, Allow),
		rule("plain.example.test", ProtoHTTP, 80, 80, Allow),
		rule("evil.npmjs.org", ProtoHTTPS, 443, 443, Deny),
		{Dst: "api.example.test", Proto: ProtoHTTPS, Port: 443, PortEnd: 443, Action: Allow,
			Paths: []PathRule{{Path: "/v1/", Methods: []string{"GET"}, Action: Allow}}, PathDefault: Deny, Inspect: true},
	}, stripSource(cfg.Rules))
	require.Equal(t, Provenance{Kind: SourceOption, Key: KeyAllow, Item: ".npmjs.org", Network: "net1"}, cfg.Rules[1].Source)
	require.Equal(t, Provenance{Kind: SourceOption, Key: KeyRules, Network: "net1",
		Item: `{"dst":"api.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}`}, cfg.Rules[10].Source)
}

func TestParseNetworkOptionsDefaults(t *testing.T) {
	cfg, err := ParseNetworkOptions(map[string]string{KeyAllow: "example.com,example.com,https://example.com:443"}, "n")
	require.NoError(t, err)
	require.Equal(t, NetworkSettings{}, cfg.Settings, "inspect off and icc false by default")
	require.Len(t, cfg.Rules, 1, "duplicates are dropped")
	require.Equal(t, "example.com", cfg.Rules[0].Source.Item, "the first duplicate keeps its provenance")

	cfg, err = ParseNetworkOptions(nil, "n")
	require.NoError(t, err)
	require.Empty(t, cfg.Rules)
}

// requireFieldError asserts that err holds a *FieldError with this field,
// value and a reason containing reason, and that the message reads as
// documented.
func requireFieldError(t *testing.T, err error, field, value, reason string) {
	t.Helper()
	require.Error(t, err)
	var fe *FieldError
	require.True(t, errors.As(err, &fe), "want a *FieldError, got %T: %v", err, err)
	require.Equal(t, field, fe.Field, "field of %v", err)
	require.Equal(t, value, fe.Value, "value of %v", err)
	require.Contains(t, fe.Reason, reason)
	if value != "" {
		require.True(t, strings.HasPrefix(fe.Error(), field+`: "`), fe.Error())
	}
}

func TestParseNetworkOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		opts                 map[string]string
		field, value, reason string
	}{
		{name: "issue example message", opts: map[string]string{KeyAllow: "github.com, exa mple.com"},
			field: KeyAllow, value: "exa mple.com", reason: "invalid character ' ' in host name"},
		{name: "empty label", opts: map[string]string{KeyAllow: "a..b.com"}, field: KeyAllow, value: "a..b.com", reason: "empty label"},
		{name: "label too long", opts: map[string]string{KeyAllow: strings.Repeat("x", 64) + ".com"}, field: KeyAllow, value: strings.Repeat("x", 64) + ".com", reason: "longer than 63"},
		{name: "name too long", opts: map[string]string{KeyAllow: strings.Repeat("abc.", 63) + "com"}, field: KeyAllow, value: strings.Repeat("abc.", 63) + "com", reason: "longer than 253"},
		{name: "numeric name", opts: map[string]string{KeyAllow: "1234"}, field: KeyAllow, value: "1234", reason: "numeric-only"},
		{name: "wildcard ip", opts: map[string]string{KeyAllow: ".10.0.0.1"}, field: KeyAllow, value: ".10.0.0.1", reason: "wildcard cannot apply to an IP"},
		{name: "port out of range", opts: map[string]string{KeyAllow: "example.com:70000"}, field: KeyAllow, value: "example.com:70000", reason: "out of range 1-65535"},
		{name: "port zero", opts: map[string]string{KeyAllow: "example.com:0"}, field: KeyAllow, value: "example.com:0", reason: "out of range"},
		{name: "empty port", opts: map[string]string{KeyAllow: "example.com:"}, field: KeyAllow, value: "example.com:", reason: "empty port"},
		{name: "range too wide", opts: map[string]string{KeyAllow: "tcp://db.example.test:1-1000"}, field: KeyAllow, value: "tcp://db.example.test:1-1000", reason: "at most 256"},
		{name: "unknown proto", opts: map[string]string{KeyAllow: "ftp://example.com"}, field: KeyAllow, value: "ftp://example.com", reason: `unknown protocol "ftp"`},
		{name: "empty proto", opts: map[string]string{KeyAllow: "://example.com"}, field: KeyAllow, value: "://example.com", reason: "empty protocol"},
		{name: "tcp without port", opts: map[string]string{KeyAllow: "tcp://db.example.test"}, field: KeyAllow, value: "tcp://db.example.test", reason: "tcp rules need a port"},
		{name: "tcp wildcard", opts: map[string]string{KeyAllow: "tcp://.example.test:5432"}, field: KeyAllow, value: "tcp://.example.test:5432", reason: "exact host name"},
		{name: "ssh wildcard", opts: map[string]string{KeyDeny: "ssh://.example.test"}, field: KeyDeny, value: "ssh://.example.test", reason: "exact host name"},
		{name: "udp wildcard", opts: map[string]string{KeyAllow: "udp://.example.test:53"}, field: KeyAllow, value: "udp://.example.test:53", reason: "exact host name"},
		{name: "compact path", opts: map[string]string{KeyAllow: "https://example.com/v1/"}, field: KeyAllow, value: "https://example.com/v1/", reason: "cannot hold a path"},
		{name: "unbracketed ipv6 port", opts: map[string]string{KeyAllow: "[2001:db8::1"}, field: KeyAllow, value: "[2001:db8::1", reason: "missing ']'"},
		{name: "brackets on name", opts: map[string]string{KeyAllow: "[example.com]:443"}, field: KeyAllow, value: "[example.com]:443", reason: "only for IPv6"},
		{name: "junk after bracket", opts: map[string]string{KeyAllow: "[2001:db8::1]x"}, field: KeyAllow, value: "[2001:db8::1]x", reason: "after ']'"},
		{name: "empty item", opts: map[string]string{KeyAllow: "a.com,,b.com"}, field: KeyAllow, value: "a.com,,b.com", reason: "empty item"},
		{name: "empty value", opts: map[string]string{KeyDeny: " "}, field: KeyDeny, reason: "empty list"},
		{name: "star wildcard", opts: map[string]string{KeyAllow: "*.example.com"}, field: KeyAllow, value: "*.example.com", reason: `written ".example.com"`},
		{name: "non clawker option", opts: map[string]string{"com.docker.network.bridge.name": "br0"}, field: "com.docker.network.bridge.name", reason: "unknown option"},
		{name: "unknown clawker key", opts: map[string]string{"clawker.allowed": "x.com"}, field: "clawker.allowed", reason: "unknown clawker key"},
		{name: "bad inspect", opts: map[string]string{KeyTLSInspect: "some"}, field: KeyTLSInspect, value: "some", reason: "want all or off"},
		{name: "bad icc", opts: map[string]string{KeyICC: "yes"}, field: KeyICC, value: "yes", reason: "want true or false"},
		{name: "bad upstream", opts: map[string]string{KeyDNSUpstream: "192.0.2.1,dns.example"}, field: KeyDNSUpstream, value: "dns.example", reason: "want ip[:port]"},
		{name: "upstream port zero", opts: map[string]string{KeyDNSUpstream: "192.0.2.1:0"}, field: KeyDNSUpstream, value: "192.0.2.1:0", reason: "out of range"},
		{name: "rules not json", opts: map[string]string{KeyRules: "api.example.test"}, field: KeyRules, value: "api.example.test", reason: "want a JSON list"},
		{name: "rules object not list", opts: map[string]string{KeyRules: `{"dst":"a.example"}`}, field: KeyRules, value: `{"dst":"a.example"}`, reason: "want a JSON list"},
		{name: "rules trailing data", opts: map[string]string{KeyRules: `[] []`}, field: KeyRules, value: `[] []`, reason: "data after the list"},
		{name: "rules empty", opts: map[string]string{KeyRules: `[]`}, field: KeyRules, value: `[]`, reason: "empty list"},
		{name: "rules unknown field", opts: map[string]string{KeyRules: `[{"dst":"a.example","host":"b"}]`}, field: "clawker.rules[0]", value: `{"dst":"a.example","host":"b"}`, reason: `unknown field "host"`},
		{name: "rules unknown path field", opts: map[string]string{KeyRules: `[{"dst":"a.example","paths":[{"prefix":"/"}]}]`}, field: "clawker.rules[0]", value: `{"dst":"a.example","paths":[{"prefix":"/"}]}`, reason: `unknown field "prefix"`},
		{name: "rules compact item", opts: map[string]string{KeyRules: `["github.com"]`}, field: "clawker.rules[0]", value: `"github.com"`, reason: "want a JSON object"},
		{name: "rules null item", opts: map[string]string{KeyRules: `[null]`}, field: "clawker.rules[0]", value: `null`, reason: "want a JSON object"},
		{name: "rules missing dst", opts: map[string]string{KeyRules: `[{"proto":"https"}]`}, field: "clawker.rules[0].dst", reason: "missing destination"},
		{name: "rules bad dst", opts: map[string]string{KeyRules: `[{"dst":"a.example"},{"dst":"exa mple.com"}]`}, field: "clawker.rules[1].dst", value: "exa mple.com", reason: "invalid character ' '"},
		{name: "rules bad regex", opts: map[string]string{KeyRules: `[{"dst":"a.example","paths":[{"path":"~/v[0-9"}]}]`}, field: "clawker.rules[0].paths[0].path", value: "~/v[0-9", reason: "invalid regular expression"},
		{name: "rules bad port string", opts: map[string]string{KeyRules: `[{"dst":"a.example","proto":"tcp","port":"1-999"}]`}, field: "clawker.rules[0].port", value: "1-999", reason: "at most 256"},
		{name: "rules bad port type", opts: map[string]string{KeyRules: `[{"dst":"a.example","port":true}]`}, field: "clawker.rules[0]", value: `{"dst":"a.example","port":true}`, reason: "number or a"},
		{name: "rules fractional port", opts: map[string]string{KeyRules: `[{"dst":"a.example","port":443.5}]`}, field: "clawker.rules[0].port", value: "443.5", reason: "invalid port"},
		{name: "rules bad action", opts: map[string]string{KeyRules: `[{"dst":"a.example","action":"block"}]`}, field: "clawker.rules[0].action", value: "block", reason: "unknown action"},
		{name: "rules bad proto", opts: map[string]string{KeyRules: `[{"dst":"a.example","proto":"gopher"}]`}, field: "clawker.rules[0].proto", value: "gopher", reason: "unknown protocol"},
		{name: "rules empty paths", opts: map[string]string{KeyRules: `[{"dst":"a.example","paths":[]}]`}, field: "clawker.rules[0].paths", value: "[]", reason: "empty list of path rules"},
		{name: "conflicting bodies", opts: map[string]string{KeyAllow: "a.example", KeyRules: `[{"dst":"a.example","paths":[{"path":"/x"}]}]`},
			field: KeyRules, value: `{"dst":"a.example","paths":[{"path":"/x"}]}`, reason: "different path rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseNetworkOptions(tc.opts, "n")
			requireFieldError(t, err, tc.field, tc.value, tc.reason)
			require.Empty(t, cfg.Rules, "nothing is returned with an error")
		})
	}
}

func TestParseNetworkOptionsAllErrors(t *testing.T) {
	_, err := ParseNetworkOptions(map[string]string{
		KeyAllow: "a b,c d",
		"foo":    "bar",
	}, "n")
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, `clawker.allow: "a b": invalid character ' ' in host name`)
	require.Contains(t, msg, `clawker.allow: "c d": invalid character ' ' in host name`)
	require.Contains(t, msg, `foo: unknown option`)
}

func TestParseLabels(t *testing.T) {
	rules, err := ParseLabels(map[string]string{
		"com.example.team":   "x",
		"maintainer":         "me",
		KeyAllow:             "api.anthropic.com, ssh://github.com",
		KeyDeny:              "10.0.0.0/8",
		KeyRules:             `[{"dst":".example.test","action":"deny"}]`,
		"org.opencontainers": "ignored",
	}, "c1")
	require.NoError(t, err)
	require.Equal(t, []EgressRule{
		rule("api.anthropic.com", ProtoHTTPS, 443, 443, Allow),
		rule("github.com", ProtoSSH, 22, 22, Allow),
		rule("10.0.0.0/8", ProtoHTTPS, 443, 443, Deny),
		rule(".example.test", ProtoHTTPS, 443, 443, Deny),
	}, stripSource(rules))
	require.Equal(t, Provenance{Kind: SourceLabel, Key: KeyAllow, Item: "ssh://github.com", Container: "c1"}, rules[1].Source)

	for _, tc := range []struct {
		name                 string
		labels               map[string]string
		field, value, reason string
	}{
		{name: "setting dns", labels: map[string]string{KeyDNSUpstream: "192.0.2.1"}, field: KeyDNSUpstream, reason: "network-wide setting; set it with docker network create -o"},
		{name: "setting inspect", labels: map[string]string{KeyTLSInspect: "all"}, field: KeyTLSInspect, reason: "network-wide setting"},
		{name: "setting icc", labels: map[string]string{KeyICC: "true"}, field: KeyICC, reason: "network-wide setting"},
		{name: "unknown clawker label", labels: map[string]string{"clawker.alow": "x.com"}, field: "clawker.alow", reason: "unknown clawker key"},
		{name: "key case", labels: map[string]string{"Clawker.allow": "x.com"}, field: "Clawker.allow", reason: "clawker keys are lowercase"},
		{name: "key case suffix", labels: map[string]string{"clawker.ALLOW": "x.com"}, field: "clawker.ALLOW", reason: "clawker keys are lowercase"},
		{name: "key case rules", labels: map[string]string{"CLAWKER.RULES": "[]"}, field: "CLAWKER.RULES", reason: "clawker keys are lowercase"},
		{name: "bad allow", labels: map[string]string{KeyAllow: "exa mple.com"}, field: KeyAllow, value: "exa mple.com", reason: "invalid character ' ' in host name"},
		{name: "bad deny", labels: map[string]string{KeyDeny: "tcp://.x.test:1"}, field: KeyDeny, value: "tcp://.x.test:1", reason: "exact host name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules, err := ParseLabels(tc.labels, "c1")
			requireFieldError(t, err, tc.field, tc.value, tc.reason)
			require.Nil(t, rules)
		})
	}
}

func TestParseRuntimeRule(t *testing.T) {
	r, err := ParseRuntimeRule(" tcp://db.example.test:5432 ", "net1")
	require.NoError(t, err)
	require.Equal(t, EgressRule{Dst: "db.example.test", Proto: ProtoTCP, Port: 5432, PortEnd: 5432, Action: Allow,
		Source: Provenance{Kind: SourceRuntime, Key: KeyRuntime, Item: "tcp://db.example.test:5432", Network: "net1"}}, r)

	r, err = ParseRuntimeRule(`{"dst":"Evil.Example.test","action":"deny"}`, "net1")
	require.NoError(t, err)
	require.Equal(t, rule("evil.example.test", ProtoHTTPS, 443, 443, Deny), stripSource([]EgressRule{r})[0])

	_, err = ParseRuntimeRule("exa mple.com", "net1")
	requireFieldError(t, err, KeyRuntime, "exa mple.com", "invalid character ' '")
	_, err = ParseRuntimeRule(`{"dst":"a.example","port":"x"}`, "net1")
	requireFieldError(t, err, "runtime.port", "x", "invalid port")
	_, err = ParseRuntimeRule(`{"dst":"a.example"} {}`, "net1")
	requireFieldError(t, err, KeyRuntime, `{"dst":"a.example"} {}`, "data after the rule")
}

func TestFormatRuleRoundTrip(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"github.com", "github.com"},
		{"https://github.com:443", "github.com"},
		{"tls://github.com", "github.com"},
		{".npmjs.org", ".npmjs.org"},
		{"ssh://github.com", "ssh://github.com"},
		{"ssh://github.com:2222", "ssh://github.com:2222"},
		{"http://example.com", "http://example.com"},
		{"http://example.com:8080", "http://example.com:8080"},
		{"tcp://db.example.test:5432", "tcp://db.example.test:5432"},
		{"udp://db.example.test:7000-7010", "udp://db.example.test:7000-7010"},
		{"10.1.0.0/16", "10.1.0.0/16"},
		{"192.0.2.7", "192.0.2.7"},
		{"tcp://192.0.2.7:22", "tcp://192.0.2.7:22"},
		{"2001:db8::1", "[2001:db8::1]"},
		{"[2001:db8::1]:8443", "[2001:db8::1]:8443"},
		{"[2001:db8::/32]:443", "[2001:db8::/32]"},
		{"2001:db8::/32", "[2001:db8::/32]"},
		{"https://api.example.test:8443-8444", "api.example.test:8443-8444"},
		{`{"dst":"a.example","action":"deny"}`, `{"dst":"a.example","action":"deny"}`},
		{`{"dst":"a.example","proto":"tcp","port":"5000-5001","action":"deny"}`, `{"dst":"a.example","proto":"tcp","port":"5000-5001","action":"deny"}`},
		{`{"dst":"a.example","inspect":true}`, `{"dst":"a.example","inspect":true}`},
		{`{"dst":"a.example","paths":[{"path":"/v1/","methods":["get"]},{"path":"~/adm<in>","action":"deny"}]}`,
			`{"dst":"a.example","paths":[{"path":"/v1/","methods":["GET"]},{"path":"~/adm<in>","action":"deny"}],"path_default":"deny","inspect":true}`},
		{`{"dst":"a.example","port":8080,"proto":"http","paths":[{"path":"/x","action":"deny"}]}`,
			`{"dst":"a.example","proto":"http","port":8080,"paths":[{"path":"/x","action":"deny"}],"path_default":"allow","inspect":true}`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseRuntimeRule(tc.in, "")
			require.NoError(t, err)
			f := FormatRule(r)
			require.Equal(t, tc.want, f)
			back, err := ParseRuntimeRule(f, "")
			require.NoError(t, err)
			require.Equal(t, stripSource([]EgressRule{r}), stripSource([]EgressRule{back}))
		})
	}
}
