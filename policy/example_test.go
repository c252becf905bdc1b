package policy_test

import (
	"fmt"

	"github.com/clawker-fw/clawker-fw/policy"
)

func ExampleParseNetworkOptions() {
	cfg, err := policy.ParseNetworkOptions(map[string]string{
		"clawker.allow": "github.com, .npmjs.org, ssh://github.com, tcp://db.example.test:7000-7010",
		"clawker.deny":  "evil.npmjs.org",
		"clawker.icc":   "true",
	}, "net1")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range cfg.Rules {
		fmt.Println(r.Action, policy.FormatRule(r))
	}
	fmt.Println("icc:", cfg.Settings.ICC)
	// Output:
	// allow github.com
	// allow .npmjs.org
	// allow ssh://github.com
	// allow tcp://db.example.test:7000-7010
	// deny {"dst":"evil.npmjs.org","action":"deny"}
	// icc: true
}

func ExampleFieldError() {
	for _, opts := range []map[string]string{
		{"clawker.allow": "exa mple.com"},
		{"clawker.allow": "tcp://.example.test:5432"},
		{"clawker.allow": "tcp://db.example.test:1-1000"},
		{"clawker.rules": `[{"dst":"api.example.test","paths":[{"path":"~/v[0-9"}]}]`},
		{"com.docker.network.bridge.name": "br0"},
	} {
		_, err := policy.ParseNetworkOptions(opts, "net1")
		fmt.Println(err)
	}
	_, err := policy.ParseLabels(map[string]string{"clawker.tls.inspect": "all"}, "ctr")
	fmt.Println(err)
	// Output:
	// clawker.allow: "exa mple.com": invalid character ' ' in host name
	// clawker.allow: "tcp://.example.test:5432": tcp rules need an exact host name, not a wildcard
	// clawker.allow: "tcp://db.example.test:1-1000": port range 1-1000 holds 1000 ports; at most 256 are allowed per rule
	// clawker.rules[0].paths[0].path: "~/v[0-9": invalid regular expression: error parsing regexp: missing closing ]: `[0-9`
	// com.docker.network.bridge.name: unknown option (clawker-fw networks take only clawker.* options)
	// clawker.tls.inspect: network-wide setting; set it with docker network create -o
}

func ExampleCompile() {
	ids := policy.NewIdentityTable()
	network, _ := policy.ParseNetworkOptions(map[string]string{
		"clawker.allow": ".example.com",
		"clawker.deny":  "bad.example.com",
	}, "net1")
	labels, _ := policy.ParseLabels(map[string]string{"clawker.allow": "ssh://git.example.com"}, "ctr1")
	p, _ := policy.Compile(policy.CompileInput{Network: network.Rules, Label: labels, Generation: 1}, ids)
	for _, tc := range []struct {
		name string
		port uint16
	}{{"git.example.com", 22}, {"git.example.com", 443}, {"a.b.example.com", 443}, {"example.com", 22}, {"x.bad.example.com", 443}} {
		m := p.MatchName(tc.name, tc.port, policy.L4TCP)
		entry := "-"
		if m.Entry != nil {
			entry = fmt.Sprintf("%s#%d", m.Entry.Pattern, m.Entry.Identity)
		}
		fmt.Println(tc.name, tc.port, m.Reason, entry)
	}
	// Output:
	// git.example.com 22 allowed git.example.com#1
	// git.example.com 443 allowed git.example.com#1
	// a.b.example.com 443 allowed .example.com#2
	// example.com 22 port-not-allowed .example.com#2
	// x.bad.example.com 443 deny-rule -
}
