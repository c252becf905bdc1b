package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// Class 1 (issue 11): path rules decide on every reading of the path and
// the proxy forwards the bytes as sent. With only /public/ allowed (and
// /public/secret/ denied), every spelling that some upstream would read
// outside /public/ or into the deny is refused by the proxy with a 403, and
// never reaches the upstream; plain and encoded-slash paths under /public/
// still work and arrive at the upstream byte for byte.
func TestHardeningPathsRules(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-hp-paths", 160,
		`clawker.rules=[{"dst":"path.example.test","paths":[{"path":"/public/"},{"path":"/public/secret/","action":"deny"}]}]`)
	allowed := []string{
		"/public/x",
		"/public/@scope%2fname",
		"/public/group%2Fproject/issues",
		"/public/a/../b",
	}
	refused := []string{
		"/private/../public/x",
		"/private/%2e%2e/public/x",
		"/private/.%2E/public/x",
		"/public/..%2fprivate",
		"/public/..%5cprivate",
		"/public/%2e%2e/private",
		"/public/%252e%252e/private",
		"/public/..;/private",
		"/admin;x/",
		"/public/secret;x/y",
		"/public/SECRET/x",
		"/public/Secret/x",
		"/public/%73ecret/x",
		"/public//secret/x",
		"/public/./secret/x",
		"/public/x/%c0%ae%c0%ae/%c0%ae%c0%ae/private",
		"/public/%00",
		"/public/%EF%BC%8E%EF%BC%8E/private", // fullwidth dots (NFKC)
	}
	var script strings.Builder
	fmt.Fprintf(&script, "set -e\ncurl -sS --max-time 5 -o /tmp/pca.crt http://%s/ca.crt\n", n.Gateway)
	curl := func(label, ver, path string) {
		// --path-as-is: curl would otherwise resolve dot segments itself.
		fmt.Fprintf(&script, "echo '== %s'; curl -sS --max-time 10 %s --path-as-is --cacert /tmp/pca.crt "+
			"-w ' code=%%{http_code} denied=%%header{x-clawker-denied}\\n' 'https://%s%s' || true\n",
			label, ver, harness.PathHost, path)
	}
	for _, p := range append(append([]string{}, allowed...), refused...) {
		curl("h1 "+p, "--http1.1", p)
	}
	curl("h2 /public/x", "--http2", "/public/x")
	curl("h2 /public/..%2fprivate", "--http2", "/public/..%2fprivate")
	out, err := f.run("--network", n.Name, f.debian, "bash", "-c", script.String())
	require.NoError(t, err, out)
	t.Logf("path spellings:\n%s", out)
	sections := outputSections(out)
	for _, p := range allowed {
		s := sections["h1 "+p]
		require.Contains(t, s, "code=200", "control %s works", p)
		require.Contains(t, s, " target="+p+"\n", "%s arrives byte for byte", p)
	}
	require.Contains(t, sections["h2 /public/x"], "code=200")
	require.Contains(t, sections["h2 /public/x"], "proto=HTTP/2.0")
	for _, p := range refused {
		s := sections["h1 "+p]
		require.Contains(t, s, "code=403", "%s refused", p)
		require.Contains(t, s, "(path-rule)", "%s refused by a path rule, saying so", p)
		require.Contains(t, s, "clawker-fw denied", "the proxy's own 403 body")
	}
	require.Contains(t, sections["h2 /public/..%2fprivate"], "code=403")

	// Nothing but the allowed paths reached the upstream, and they arrived
	// as sent.
	log, err := f.e.FakenetLog()
	require.NoError(t, err)
	got := map[string]bool{}
	for _, en := range log {
		if en.Kind != fakenet.KindHTTP || en.Name != harness.PathHost {
			continue
		}
		got[en.Target] = true
		require.Contains(t, append(allowed, ""), en.Target, "only allowed paths reach the upstream, as sent: %+v", en)
	}
	for _, p := range allowed {
		require.True(t, got[p], "upstream saw %s", p)
	}
	f.requireNoLeaks(t)
}

// A rule path with a bad escape is refused at network create, naming the
// field; one with an encoded slash is kept (GitLab-style project paths).
func TestHardeningPathsRuleValidation(t *testing.T) {
	f := pluginEnv(t)
	_, stderr, err := f.e.Docker("network", "create", "-d", driver, "--subnet", "10.231.161.0/24",
		"-o", `clawker.rules=[{"dst":"path.example.test","paths":[{"path":"/a/%2e%2e/b"}]}]`, "cfw-hp-badpath")
	require.Error(t, err)
	require.Contains(t, stderr, `clawker.rules[0].paths[0].path: "/a/%2e%2e/b": a path rule cannot hold the dot segment ".."`)
	_, stderr, err = f.e.Docker("network", "create", "-d", driver, "--subnet", "10.231.161.0/24",
		"-o", `clawker.rules=[{"dst":"path.example.test","paths":[{"path":"/a%zz"}]}]`, "cfw-hp-badpath")
	require.Error(t, err)
	require.Contains(t, stderr, `clawker.rules[0].paths[0].path: "/a%zz": bad percent-escape`)
}

// outputSections splits a script's output at its "== label" lines: label ->
// the lines that follow it.
func outputSections(out string) map[string]string {
	sections := map[string]string{}
	var cur string
	for _, line := range strings.Split(out, "\n") {
		if h, ok := strings.CutPrefix(line, "== "); ok {
			cur = h
			continue
		}
		sections[cur] += line + "\n"
	}
	return sections
}
