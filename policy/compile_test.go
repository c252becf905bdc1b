package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// mustOptions parses network options or fails the test.
func mustOptions(t *testing.T, opts map[string]string) []EgressRule {
	t.Helper()
	cfg, err := ParseNetworkOptions(opts, "net")
	require.NoError(t, err)
	return cfg.Rules
}

func mustLabels(t *testing.T, labels map[string]string) []EgressRule {
	t.Helper()
	rules, err := ParseLabels(labels, "ctr")
	require.NoError(t, err)
	return rules
}

func mustCompile(t *testing.T, in CompileInput, alloc Allocator) *Policy {
	t.Helper()
	p, err := Compile(in, alloc)
	require.NoError(t, err)
	// The compiled policy is part of the seam in JSON: it must survive it.
	b, err := json.Marshal(p)
	require.NoError(t, err)
	var back Policy
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, p, &back)
	return p
}

func patterns(p *Policy) []string {
	var out []string
	for _, a := range p.Allows {
		out = append(out, a.Pattern)
	}
	return out
}

type nameCase struct {
	name    string
	port    uint16
	l4      L4
	allowed bool
	reason  Reason
	entry   string // pattern of the matched allow
	deny    string // pattern of the matched deny
}

func checkNames(t *testing.T, p *Policy, cases []nameCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s:%d/%d", tc.name, tc.port, tc.l4), func(t *testing.T) {
			l4 := tc.l4
			if l4 == 0 {
				l4 = L4TCP
			}
			m := p.MatchName(tc.name, tc.port, l4)
			require.Equal(t, tc.allowed, m.Allowed, "%+v", m)
			require.Equal(t, tc.reason, m.Reason)
			if tc.entry == "" {
				require.Nil(t, m.Entry)
			} else {
				require.NotNil(t, m.Entry)
				require.Equal(t, tc.entry, m.Entry.Pattern)
			}
			if tc.deny == "" {
				require.Nil(t, m.Deny)
			} else {
				require.NotNil(t, m.Deny)
				require.Equal(t, tc.deny, m.Deny.Pattern)
			}
		})
	}
}

func TestCompileExactVsWildcard(t *testing.T) {
	p := mustCompile(t, CompileInput{Network: mustOptions(t, map[string]string{
		KeyAllow: ".example.com,exact.test",
	})}, NewIdentityTable())
	checkNames(t, p, []nameCase{
		{name: "example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
		{name: "a.example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
		{name: "a.b.example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
		{name: "A.B.Example.COM.", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
		{name: "badexample.com", port: 443, reason: ReasonNoRule},
		{name: "example.com.evil.test", port: 443, reason: ReasonNoRule},
		{name: "exact.test", port: 443, allowed: true, reason: ReasonAllowed, entry: "exact.test"},
		{name: "exact.test", port: 0, allowed: true, reason: ReasonAllowed, entry: "exact.test"},
		{name: "a.exact.test", port: 443, reason: ReasonNoRule},
		{name: "a.b.exact.test", reason: ReasonNoRule},
		{name: "test", reason: ReasonNoRule},
	})
}

func TestCompileDenyOverAllow(t *testing.T) {
	t.Run("deny narrower than allow", func(t *testing.T) {
		p := mustCompile(t, CompileInput{Network: mustOptions(t, map[string]string{
			KeyAllow: ".example.com,10.0.0.0/8",
			KeyDeny:  "bad.example.com,10.1.0.0/16",
		})}, NewIdentityTable())
		require.Equal(t, []string{".example.com", "10.0.0.0/8"}, patterns(p), "a broader allow stays")
		require.Empty(t, p.Overridden)
		checkNames(t, p, []nameCase{
			{name: "bad.example.com", port: 443, reason: ReasonDenyRule, deny: "bad.example.com"},
			{name: "x.bad.example.com", port: 443, reason: ReasonDenyRule, deny: "bad.example.com"},
			{name: "bad.example.com", port: 0, reason: ReasonDenyRule, deny: "bad.example.com"},
			{name: "good.example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
			{name: "example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: ".example.com"},
		})
		m := p.MatchIP(netip.MustParseAddr("10.1.2.3"), 443, L4TCP)
		require.False(t, m.Allowed)
		require.Equal(t, ReasonDenyRule, m.Reason)
		m = p.MatchIP(netip.MustParseAddr("::ffff:10.2.0.1"), 443, L4TCP)
		require.True(t, m.Allowed)
		require.Equal(t, "10.0.0.0/8", m.Entry.Pattern)
	})
	t.Run("deny broader than allow", func(t *testing.T) {
		p := mustCompile(t, CompileInput{
			Network: mustOptions(t, map[string]string{KeyDeny: ".example.com,10.0.0.0/8"}),
			Label: mustLabels(t, map[string]string{
				KeyAllow: "api.example.com,.x.example.com,example.com,10.1.2.3,10.1.0.0/16,other.test",
				KeyRules: `[{"dst":"ok.example.com","paths":[{"path":"/"}]}]`,
			}),
		}, NewIdentityTable())
		require.Equal(t, []string{"other.test"}, patterns(p))
		var overridden []string
		for _, o := range p.Overridden {
			overridden = append(overridden, o.Allow.Dst+" by "+o.Deny.Dst)
		}
		require.Equal(t, []string{
			"api.example.com by .example.com", ".x.example.com by .example.com", "example.com by .example.com",
			"10.1.2.3/32 by 10.0.0.0/8", "10.1.0.0/16 by 10.0.0.0/8", "ok.example.com by .example.com",
		}, overridden)
		checkNames(t, p, []nameCase{
			{name: "api.example.com", port: 443, reason: ReasonDenyRule, deny: ".example.com"},
			{name: "example.com", port: 443, reason: ReasonDenyRule, deny: ".example.com"},
			{name: "other.test", port: 443, allowed: true, reason: ReasonAllowed, entry: "other.test"},
		})
		m := p.MatchIP(netip.MustParseAddr("10.1.2.3"), 443, L4TCP)
		require.Equal(t, ReasonDenyRule, m.Reason)
	})
	t.Run("exact deny covers its subtree on every port", func(t *testing.T) {
		p := mustCompile(t, CompileInput{
			Network: mustOptions(t, map[string]string{KeyDeny: "tcp://example.com:5432"}),
			Runtime: []EgressRule{mustRuntime(t, ".example.com"), mustRuntime(t, "ssh://git.example.com"), mustRuntime(t, "example.org")},
		}, NewIdentityTable())
		require.Equal(t, []string{"example.org"}, patterns(p))
		require.Len(t, p.Overridden, 2)
		checkNames(t, p, []nameCase{
			{name: "git.example.com", port: 22, reason: ReasonDenyRule, deny: "example.com"},
			{name: "example.com", port: 443, reason: ReasonDenyRule, deny: "example.com"},
		})
	})
	t.Run("ipv6 deny", func(t *testing.T) {
		p := mustCompile(t, CompileInput{Network: mustOptions(t, map[string]string{
			KeyAllow: "[2001:db8::1]:443,2001:db8:1::/48", KeyDeny: "2001:db8::/32",
		})}, NewIdentityTable())
		require.Empty(t, p.Allows)
		require.Len(t, p.Overridden, 2)
	})
}

func mustRuntime(t *testing.T, item string) EgressRule {
	t.Helper()
	r, err := ParseRuntimeRule(item, "net")
	require.NoError(t, err)
	return r
}

func TestCompilePortsAndOrder(t *testing.T) {
	ids := NewIdentityTable()
	p := mustCompile(t, CompileInput{
		Network: mustOptions(t, map[string]string{
			KeyAllow: ".example.com,ssh://git.example.com,http://.a.example.com,10.0.0.0/8,tcp://10.1.0.0/16:5432," +
				"tcp://db.example.test:7000-7010,udp://db.example.test:53,.b.a.example.com,z.example.com,192.0.2.1",
		}),
		Label: mustLabels(t, map[string]string{KeyAllow: "https://.example.com:8443"}),
	}, ids)
	require.Equal(t, []string{
		"db.example.test", "git.example.com", "z.example.com",
		".b.a.example.com", ".a.example.com", ".example.com",
		"192.0.2.1/32", "10.1.0.0/16", "10.0.0.0/8",
	}, patterns(p))

	byPattern := map[string]Allowed{}
	for _, a := range p.Allows {
		byPattern[a.Pattern] = a
		id, ok := ids.Lookup(a.Pattern)
		require.True(t, ok)
		require.Equal(t, id, a.Identity)
	}
	require.Equal(t, []PortRange{{ProtoSSH, 22, 22}, {ProtoHTTPS, 443, 443}, {ProtoHTTPS, 8443, 8443}}, byPattern["git.example.com"].Ports)
	require.Equal(t, []PortRange{{ProtoHTTP, 80, 80}, {ProtoHTTPS, 443, 443}, {ProtoHTTPS, 8443, 8443}}, byPattern[".b.a.example.com"].Ports)
	require.Equal(t, []PortRange{{ProtoUDP, 53, 53}, {ProtoTCP, 7000, 7010}}, byPattern["db.example.test"].Ports)
	require.Equal(t, []PortRange{{ProtoHTTPS, 443, 443}, {ProtoTCP, 5432, 5432}}, byPattern["10.1.0.0/16"].Ports)
	require.Len(t, byPattern["git.example.com"].Rules, 3, "own ssh rule plus the enclosing .example.com rules")
	require.Equal(t, "ssh://git.example.com", byPattern["git.example.com"].Rules[0].Source.Item)
	require.Equal(t, netip.MustParsePrefix("10.1.0.0/16"), byPattern["10.1.0.0/16"].Prefix)
	require.False(t, byPattern["git.example.com"].Prefix.IsValid())

	checkNames(t, p, []nameCase{
		{name: "git.example.com", port: 22, allowed: true, reason: ReasonAllowed, entry: "git.example.com"},
		{name: "git.example.com", port: 443, allowed: true, reason: ReasonAllowed, entry: "git.example.com"},
		{name: "git.example.com", port: 8443, allowed: true, reason: ReasonAllowed, entry: "git.example.com"},
		{name: "git.example.com", port: 80, reason: ReasonPortNotAllow, entry: "git.example.com"},
		{name: "git.example.com", port: 22, l4: L4UDP, reason: ReasonPortNotAllow, entry: "git.example.com"},
		{name: "other.example.com", port: 22, reason: ReasonPortNotAllow, entry: ".example.com"},
		{name: "x.b.a.example.com", port: 80, allowed: true, reason: ReasonAllowed, entry: ".b.a.example.com"},
		{name: "x.a.example.com", port: 80, allowed: true, reason: ReasonAllowed, entry: ".a.example.com"},
		{name: "x.example.com", port: 80, reason: ReasonPortNotAllow, entry: ".example.com"},
		{name: "db.example.test", port: 7000, allowed: true, reason: ReasonAllowed, entry: "db.example.test"},
		{name: "db.example.test", port: 7010, allowed: true, reason: ReasonAllowed, entry: "db.example.test"},
		{name: "db.example.test", port: 7011, reason: ReasonPortNotAllow, entry: "db.example.test"},
		{name: "db.example.test", port: 6999, reason: ReasonPortNotAllow, entry: "db.example.test"},
		{name: "db.example.test", port: 53, l4: L4UDP, allowed: true, reason: ReasonAllowed, entry: "db.example.test"},
		{name: "db.example.test", port: 53, l4: L4TCP, reason: ReasonPortNotAllow, entry: "db.example.test"},
	})
	ip := func(s string, port uint16) Match { return p.MatchIP(netip.MustParseAddr(s), port, L4TCP) }
	require.Equal(t, "10.1.0.0/16", ip("10.1.9.9", 5432).Entry.Pattern)
	require.True(t, ip("10.1.9.9", 5432).Allowed)
	require.True(t, ip("10.1.9.9", 443).Allowed, "the enclosing /8 adds 443")
	require.Equal(t, ReasonPortNotAllow, ip("10.2.9.9", 5432).Reason)
	require.True(t, ip("192.0.2.1", 443).Allowed)
	require.Equal(t, ReasonNoRule, ip("192.0.2.2", 443).Reason)
	gen := mustCompile(t, CompileInput{Generation: 7, Settings: NetworkSettings{InspectAll: true}}, ids)
	require.Equal(t, uint64(7), gen.Generation)
	require.True(t, gen.InspectAll)
	require.Equal(t, ReasonNoRule, gen.MatchName("example.com", 443, L4TCP).Reason)
}

func TestCompileIdentityStability(t *testing.T) {
	base := map[string]string{KeyAllow: ".example.com,api.example.com,10.0.0.0/8,tcp://db.example.test:5432"}
	ids := NewIdentityTable()
	p1 := mustCompile(t, CompileInput{Network: mustOptions(t, base)}, ids)
	idOf := func(p *Policy) map[string]Identity {
		m := map[string]Identity{}
		for _, a := range p.Allows {
			m[a.Pattern] = a.Identity
		}
		return m
	}
	first := idOf(p1)
	require.Len(t, first, 4)

	// Adding rules that sort before and after every existing pattern.
	p2 := mustCompile(t, CompileInput{
		Network: mustOptions(t, map[string]string{KeyAllow: base[KeyAllow] + ",a.example.com,.z.example.com,192.0.2.0/24"}),
		Label:   mustLabels(t, map[string]string{KeyAllow: "aaa.test"}),
	}, ids)
	second := idOf(p2)
	for pat, id := range first {
		require.Equal(t, id, second[pat], pat)
	}
	// Removing rules.
	p3 := mustCompile(t, CompileInput{Network: mustOptions(t, map[string]string{KeyAllow: "api.example.com"})}, ids)
	require.Equal(t, first["api.example.com"], idOf(p3)["api.example.com"])

	// A persisted table restores the same numbers and never reuses one.
	b, err := json.Marshal(ids)
	require.NoError(t, err)
	restored := NewIdentityTable()
	require.NoError(t, json.Unmarshal(b, restored))
	p4 := mustCompile(t, CompileInput{Network: mustOptions(t, base)}, restored)
	require.Equal(t, first, idOf(p4))
	require.Equal(t, Identity(ids.Len()+1), restored.Identity("new.example.test"))
	// Identity order is allocation order, from 1.
	fresh := NewIdentityTable()
	require.Equal(t, Identity(1), fresh.Identity("b"))
	require.Equal(t, Identity(2), fresh.Identity("a"))
	require.Equal(t, Identity(1), fresh.Identity("b"))
}

func TestIdentityTableJSON(t *testing.T) {
	var tbl IdentityTable
	require.NoError(t, json.Unmarshal([]byte(`{"next":3,"identities":{"a":1,"b":7}}`), &tbl))
	require.Equal(t, Identity(8), tbl.Identity("c"), "next is raised above the highest identity")
	require.ErrorContains(t, json.Unmarshal([]byte(`{"identities":{"a":0}}`), &tbl), "identity 0")
	require.ErrorContains(t, json.Unmarshal([]byte(`{"identities":{"a":1,"b":1}}`), &tbl), "identity 1 given to")
	require.ErrorContains(t, json.Unmarshal([]byte(`[]`), &tbl), "decode identity table")
	b, err := json.Marshal(&IdentityTable{})
	require.NoError(t, err)
	require.JSONEq(t, `{"next":1,"identities":{}}`, string(b))
}

func TestIdentityTableConcurrent(t *testing.T) {
	tbl := NewIdentityTable()
	const workers, patterns = 8, 200
	got := make([][]Identity, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range patterns {
				got[w] = append(got[w], tbl.Identity(fmt.Sprintf("p%d.example.test", i)))
				if i%50 == 0 {
					_, err := json.Marshal(tbl)
					require.NoError(t, err)
				}
			}
		}()
	}
	wg.Wait()
	require.Equal(t, patterns, tbl.Len())
	seen := map[Identity]bool{}
	for i := range patterns {
		for w := 1; w < workers; w++ {
			require.Equal(t, got[0][i], got[w][i])
		}
		require.False(t, seen[got[0][i]])
		seen[got[0][i]] = true
		require.True(t, got[0][i] >= 1 && got[0][i] <= patterns)
	}
}

func TestCompilePathMerge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rules   string // clawker.rules JSON
		allow   string // clawker.allow
		pattern string
		paths   []PathRule
		def     Action
		inspect bool
	}{
		{name: "one rule with allow paths", rules: `[{"dst":"api.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}]`,
			pattern: "api.example.test", paths: []PathRule{{Path: "/v1/", Methods: []string{"GET"}, Action: Allow}}, def: Deny, inspect: true},
		{name: "deny paths only", rules: `[{"dst":"api.example.test","paths":[{"path":"/admin","action":"deny"}]}]`,
			pattern: "api.example.test", paths: []PathRule{{Path: "/admin", Action: Deny}}, def: Allow, inspect: true},
		{name: "unrestricted rule on another port widens to all paths", allow: "api.example.test:8443",
			rules:   `[{"dst":"api.example.test","paths":[{"path":"/v1/"}]}]`,
			pattern: "api.example.test", paths: nil, def: "", inspect: true},
		{name: "deny path survives an unrestricted rule", allow: "api.example.test:8443",
			rules:   `[{"dst":"api.example.test","paths":[{"path":"/v1/"},{"path":"~/v1/admin","action":"deny"}]}]`,
			pattern: "api.example.test", paths: []PathRule{{Path: "~/v1/admin", Action: Deny}}, def: Allow, inspect: true},
		{name: "enclosing wildcard paths apply, denies first", rules: `[{"dst":".example.test","paths":[{"path":"/pub/"}]},` +
			`{"dst":"api.example.test","paths":[{"path":"/v1/"},{"path":"/v1/secret","action":"deny"}]}]`,
			pattern: "api.example.test", paths: []PathRule{{Path: "/v1/secret", Action: Deny}, {Path: "/v1/", Action: Allow}, {Path: "/pub/", Action: Allow}}, def: Deny, inspect: true},
		{name: "tcp rules do not open paths", allow: "tcp://api.example.test:5432",
			rules:   `[{"dst":".example.test","paths":[{"path":"/pub/"}]}]`,
			pattern: "api.example.test", paths: []PathRule{{Path: "/pub/", Action: Allow}}, def: Deny, inspect: true},
		{name: "tcp only", allow: "tcp://api.example.test:5432", pattern: "api.example.test"},
		{name: "explicit inspect", rules: `[{"dst":"api.example.test","inspect":true}]`, pattern: "api.example.test", inspect: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := map[string]string{}
			if tc.allow != "" {
				opts[KeyAllow] = tc.allow
			}
			if tc.rules != "" {
				opts[KeyRules] = tc.rules
			}
			p := mustCompile(t, CompileInput{Network: mustOptions(t, opts)}, NewIdentityTable())
			var a *Allowed
			for i := range p.Allows {
				if p.Allows[i].Pattern == tc.pattern {
					a = &p.Allows[i]
				}
			}
			require.NotNil(t, a)
			require.Equal(t, tc.paths, a.Paths)
			require.Equal(t, tc.def, a.PathDefault)
			require.Equal(t, tc.inspect, a.Inspect)
		})
	}
}

func TestCompileDedupAcrossSources(t *testing.T) {
	p := mustCompile(t, CompileInput{
		Network: mustOptions(t, map[string]string{KeyAllow: "example.com"}),
		Runtime: []EgressRule{mustRuntime(t, "https://example.com:443")},
		Label:   mustLabels(t, map[string]string{KeyAllow: "example.com"}),
	}, NewIdentityTable())
	require.Len(t, p.Allows, 1)
	require.Len(t, p.Allows[0].Rules, 1)
	require.Equal(t, SourceOption, p.Allows[0].Rules[0].Source.Kind)
}

func TestCompileRejectsInvalidRule(t *testing.T) {
	_, err := Compile(CompileInput{Runtime: []EgressRule{{Dst: "exa mple.com", Source: Provenance{Kind: SourceRuntime, Key: KeyRuntime, Item: "exa mple.com"}}}}, NewIdentityTable())
	require.ErrorContains(t, err, `compile rule runtime "exa mple.com"`)
}

func TestPolicyNilAndBypass(t *testing.T) {
	var p *Policy
	require.Equal(t, ReasonPending, p.MatchName("example.com", 443, L4TCP).Reason)
	bypass := &Policy{AllowAll: true}
	require.True(t, bypass.MatchName("anything.test", 1, L4UDP).Allowed)
}

func BenchmarkCompile(b *testing.B) {
	var items []string
	for i := range 500 {
		items = append(items, fmt.Sprintf("h%d.s%d.example.test", i, i%20), fmt.Sprintf(".s%d.example.test", i%20), fmt.Sprintf("10.%d.%d.0/24", i/250, i%250))
	}
	rules, err := ParseLabels(map[string]string{KeyAllow: joinItems(items)}, "c")
	require.NoError(b, err)
	ids := NewIdentityTable()
	b.ResetTimer()
	for b.Loop() {
		_, err := Compile(CompileInput{Label: rules}, ids)
		require.NoError(b, err)
	}
}

func joinItems(items []string) string {
	out := ""
	for i, it := range items {
		if i > 0 {
			out += ","
		}
		out += it
	}
	return out
}
