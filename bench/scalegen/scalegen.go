// Package scalegen generates the rule set of the scale benchmark (issue 13
// §4): one network of 10,000 rules as `docker network create -o` options
// and each endpoint's label rules. bench/scale measures the plugin's commit
// path on it; policy's benchmarks compile the same rules.
package scalegen

import (
	"fmt"
	"strings"
)

// NetworkOptions returns the 10,000 rules as docker network create -o
// options, and the names a query may ask (allowed by the network).
func NetworkOptions() (map[string]string, []string) {
	var allow, deny, full, names []string
	for i := range 6000 {
		n := fmt.Sprintf("h%d.svc%d.example.com", i, i%97)
		allow, names = append(allow, n), append(names, n)
	}
	for i := range 3000 {
		allow = append(allow, fmt.Sprintf(".z%d.example.io", i))
		names = append(names, fmt.Sprintf("api.z%d.example.io", i))
	}
	for i := range 500 {
		allow = append(allow, fmt.Sprintf("100.%d.%d.0/24", 64+i/256, i%256))
	}
	for i := range 100 {
		allow = append(allow, fmt.Sprintf("http://plain%d.example.net", i))
		names = append(names, fmt.Sprintf("plain%d.example.net", i))
	}
	for i := range 20 {
		allow = append(allow, fmt.Sprintf("tcp://db%d.example.net:%d", i, 5000+i))
		allow = append(allow, fmt.Sprintf("udp://u%d.example.net:%d", i, 6000+i))
	}
	for i := range 160 {
		deny = append(deny, fmt.Sprintf("bad%d.z%d.example.io", i, i))
	}
	for i := range 200 {
		full = append(full, fmt.Sprintf(`{"dst":"api%d.paths.test","paths":[{"path":"/v1/","methods":["GET"]}]}`, i))
		names = append(names, fmt.Sprintf("api%d.paths.test", i))
	}
	return map[string]string{
		"clawker.allow": strings.Join(allow, ","),
		"clawker.deny":  strings.Join(deny, ","),
		"clawker.rules": "[" + strings.Join(full, ",") + "]",
	}, names
}

// Labels returns endpoint i's label rules (two names, a wildcard, a deny, a path rule).
func Labels(i int) map[string]string {
	return map[string]string{
		"clawker.allow": fmt.Sprintf("e%d.agent.test,pkg%d.agent.test,.team%d.example.org", i, i, i),
		"clawker.deny":  fmt.Sprintf("secret.team%d.example.org", i),
		"clawker.rules": fmt.Sprintf(`[{"dst":"api.e%d.test","paths":[{"path":"/v2/"}]}]`, i),
	}
}
