// Package scalegen generates the rule set of the scale benchmark (issue 13
// §4): one network of 10,000 rules as `docker network create -o` options
// and each endpoint's label rules. bench/scale measures the plugin's commit
// path on it; policy's benchmarks compile the same rules.
package scalegen

import (
	"fmt"
	"strings"
)

// Rules is the number of network rules of the full workload.
const Rules = 10000

// NetworkOptions returns the 10,000 rules as docker network create -o
// options, and the names a query may ask (allowed by the network).
func NetworkOptions() (map[string]string, []string) { return NetworkOptionsN(Rules) }

// NetworkOptionsN is NetworkOptions scaled to about total rules, in the same
// proportions (60% exact https names, 30% wildcards, 5% CIDRs, 2% path
// rules, 1% plain-http names, 1.6% denies, 0.4% tcp/udp rules that take a
// listener port each), at least one of each kind: smoke tests use a few.
// NetworkOptionsN(Rules) is exactly NetworkOptions.
func NetworkOptionsN(total int) (map[string]string, []string) {
	part := func(per10k int) int { return max(1, total*per10k/Rules) }
	var allow, deny, full, names []string
	for i := range part(6000) {
		n := TLSName(i)
		allow, names = append(allow, n), append(names, n)
	}
	for i := range part(3000) {
		allow = append(allow, fmt.Sprintf(".z%d.example.io", i))
		names = append(names, fmt.Sprintf("api.z%d.example.io", i))
	}
	for i := range part(500) {
		allow = append(allow, fmt.Sprintf("100.%d.%d.0/24", 64+i/256, i%256))
	}
	for i := range part(100) {
		allow = append(allow, "http://"+PlainName(i))
		names = append(names, PlainName(i))
	}
	for i := range part(20) {
		allow = append(allow, fmt.Sprintf("tcp://db%d.example.net:%d", i, 5000+i))
		allow = append(allow, fmt.Sprintf("udp://u%d.example.net:%d", i, 6000+i))
	}
	for i := range part(160) {
		deny = append(deny, fmt.Sprintf("bad%d.z%d.example.io", i, i))
	}
	for i := range part(200) {
		full = append(full, fmt.Sprintf(`{"dst":"api%d.paths.test","paths":[{"path":"/v1/","methods":["GET"]}]}`, i))
		names = append(names, fmt.Sprintf("api%d.paths.test", i))
	}
	return map[string]string{
		"clawker.allow": strings.Join(allow, ","),
		"clawker.deny":  strings.Join(deny, ","),
		"clawker.rules": "[" + strings.Join(full, ",") + "]",
	}, names
}

// TLSName is the i-th exact https name of the network (i below 60% of its
// rules).
func TLSName(i int) string { return fmt.Sprintf("h%d.svc%d.example.com", i, i%97) }

// PlainName is the i-th plain-http name of the network (i below 1% of its
// rules).
func PlainName(i int) string { return fmt.Sprintf("plain%d.example.net", i) }

// Labels returns endpoint i's label rules (two names, a wildcard, a deny, a path rule).
func Labels(i int) map[string]string {
	return map[string]string{
		"clawker.allow": fmt.Sprintf("e%d.agent.test,pkg%d.agent.test,.team%d.example.org", i, i, i),
		"clawker.deny":  fmt.Sprintf("secret.team%d.example.org", i),
		"clawker.rules": fmt.Sprintf(`[{"dst":"api.e%d.test","paths":[{"path":"/v2/"}]}]`, i),
	}
}
