package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// cfwCode runs the admin CLI and returns its exit code and outputs.
func (f *opsFixture) cfwCode(args ...string) (int, string, string) {
	out, errOut, err := f.cfw(args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out, errOut
	case errors.As(err, &ee):
		return ee.ExitCode(), out, errOut
	}
	return -1, out, errOut + err.Error()
}

// TestCLIDockerManners: the CLI against the real plugin: networks and
// containers by name, names in status, rules and denials (the fix's command
// names the network), denial filters, JSON output, usage errors, and the
// CLI that ships in the plugin's rootfs.
func TestCLIDockerManners(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	const net, c, other = "cfw-cli-net", "cfw-cli-c", "cfw-cli-d"
	netID := f.network(t, net, "10.231.140.0/24", "clawker.allow=http://"+harness.AllowedHost)
	e.MustDocker(t, "network", "create", "--internal", "--subnet", "10.231.141.0/24", "cfw-cli-plain")
	t.Cleanup(func() { _, _, _ = e.Docker("network", "rm", "cfw-cli-plain") })
	f.run(t, c, net, nil, "sleep", "3600")
	f.run(t, other, net, nil, "sleep", "3600")
	f.waitIdentified(t, c)
	f.waitIdentified(t, other)

	t.Run("the CLI in the plugin's rootfs", func(t *testing.T) {
		// What README tells a user who installed the plugin from a registry.
		id := e.MustDocker(t, "plugin", "inspect", "-f", "{{.Id}}", e.PluginRef())
		root := e.MustDocker(t, "info", "-f", "{{.DockerRootDir}}")
		bin := filepath.Join(root, "plugins", id, "rootfs", "bin", "clawker-fw")
		st, err := os.Stat(bin)
		require.NoError(t, err, "the plugin carries the CLI")
		require.NotZero(t, st.Mode()&0o111, "executable")
		out, err := exec.Command(bin, "--socket", filepath.Join(e.StateDir(), "admin.sock"), "version", "--json").CombinedOutput()
		require.NoError(t, err, "%s", out)
		var v struct{ Client, Server api.Version }
		require.NoError(t, json.Unmarshal(out, &v), "%s", out)
		t.Logf("rootfs CLI: client %+v, server %+v", v.Client, v.Server)
		require.NotEmpty(t, v.Server.Version)
		require.Equal(t, v.Client.Version, v.Server.Version, "the CLI and the plugin are one build")
		require.Equal(t, v.Client.Commit, v.Server.Commit)
		require.Equal(t, "builtin", v.Server.Engine)
	})

	t.Run("networks by name", func(t *testing.T) {
		st := f.mustCFW(t, "status")
		require.Regexp(t, `network `+netID[:12]+` \(`+net+`\) `, st, "status names the network")
		require.Regexp(t, `proxy\s+healthy builtin; kernel splice after 1048576 bytes through the proxy`, st, "status says how decided flows are relayed (the default)")
		rule := "http://" + harness.AltHost
		require.False(t, func() bool { ok, _ := f.reach(c, harness.AltHost, "/cli"); return ok }())
		// By name, the global flag after the command.
		out := f.mustCFW(t, "rules", "add", net, rule)
		require.Contains(t, out, "added: "+rule)
		f.pollReach(t, c, harness.AltHost, "/cli", true, 5*time.Second)
		var rules api.RulesResponse
		require.NoError(t, json.Unmarshal([]byte(f.mustCFW(t, "rules", "ls", "--json", net)), &rules))
		require.Equal(t, api.RulesResponse{Network: netID, Name: net, Rules: []string{rule}}, rules)
		// By a short id prefix (unique among Docker's networks), and by id.
		require.Contains(t, f.mustCFW(t, "rules", "ls", netID[:6]), rule)
		f.mustCFW(t, "rules", "rm", netID, rule)
		f.pollReach(t, c, harness.AltHost, "/cli", false, 5*time.Second)

		code, _, errOut := f.cfwCode("rules", "ls", "cfw-cli-plain")
		require.Equal(t, 1, code)
		require.Contains(t, errOut, "is not a clawker-fw network")
		require.Contains(t, errOut, "NETWORK_NOT_FOUND")
		code, _, errOut = f.cfwCode("rules", "add", "no-such-net", rule)
		require.Equal(t, 1, code)
		require.Contains(t, errOut, "NETWORK_NOT_FOUND")
	})

	t.Run("denials with names, filters and JSON", func(t *testing.T) {
		start := time.Now()
		ok, out := f.reach(c, harness.DeniedHost, "/cli-denied")
		require.False(t, ok, out)
		ok, out = f.reach(other, harness.AltHost, "/cli-other")
		require.False(t, ok, out)
		var mine []api.Denial
		opsEventually(t, 10*time.Second, func() (bool, string) {
			out := f.mustCFW(t, "denials", "--container", c, "--network", net, "--since", "2m", "--json")
			mine = mine[:0]
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				var d api.Denial
				if json.Unmarshal([]byte(l), &d) == nil {
					mine = append(mine, d)
				}
			}
			for _, d := range mine {
				if d.Destination == harness.DeniedHost {
					return true, ""
				}
			}
			return false, "no denial of " + harness.DeniedHost + " for " + c + ":\n" + out
		})
		for _, d := range mine {
			require.Equal(t, c, d.Container, "only that container's denials")
			require.Equal(t, netID, d.Network)
			require.Equal(t, net, d.NetworkName)
			if d.Destination == harness.DeniedHost && strings.Contains(d.Fix, "clawker-fw rules add") {
				require.Contains(t, d.Fix, "`clawker-fw rules add "+net+" ", "the fix names the network")
				require.NotContains(t, d.Fix, "NETWORK")
			}
		}
		// The table: full timestamps, the network's name.
		table := f.mustCFW(t, "denials", "--container", c)
		lines := strings.Split(strings.TrimSpace(table), "\n")
		require.Regexp(t, `^TIME +SOURCE +CONTAINER +NETWORK +DESTINATION +REASON +FIX$`, lines[0])
		found := false
		for _, l := range lines[1:] {
			require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) `, l)
			require.Contains(t, l, " "+c+" ")
			if strings.Contains(l, harness.DeniedHost) {
				found = true
				require.Contains(t, l, " "+net+" ")
			}
		}
		require.True(t, found, table)
		// --since after everything: nothing.
		out = f.mustCFW(t, "denials", "--since", time.Now().Add(time.Minute).Format(time.RFC3339), "--json")
		require.Empty(t, strings.TrimSpace(out))
		// The other container's denial is its own.
		theirs := strings.TrimSpace(f.mustCFW(t, "denials", "--container", other, "--since", start.Add(-time.Second).Format(time.RFC3339Nano), "--json"))
		require.NotEmpty(t, theirs)
		for _, l := range strings.Split(theirs, "\n") {
			var d api.Denial
			require.NoError(t, json.Unmarshal([]byte(l), &d))
			require.Equal(t, other, d.Container)
		}
		code, _, errOut := f.cfwCode("denials", "--container", "no-such-container")
		require.Equal(t, 1, code)
		require.Contains(t, errOut, "CONTAINER_GONE")
	})

	t.Run("flags after the command, help and usage errors", func(t *testing.T) {
		var st api.StatusReport
		require.NoError(t, json.Unmarshal([]byte(f.mustCFW(t, "status", "--format", "json")), &st))
		require.True(t, st.Running)
		code, out, _ := f.cfwCode("denials", "--help")
		require.Equal(t, 0, code)
		require.Contains(t, out, "--since")
		code, _, errOut := f.cfwCode("status", "--no-such-flag")
		require.Equal(t, 2, code)
		require.Contains(t, errOut, "unknown flag: --no-such-flag")
		require.Contains(t, errOut, "Usage:  clawker-fw status")
		code, out, _ = f.cfwCode("bypass", "--for", "2s", c)
		require.Equal(t, 0, code, "the flag before the argument")
		require.Contains(t, out, "bypass for "+c+" until")
	})
}

// TestCLIExplain: explain on a real container says what the data planes do
// (each verdict checked against real traffic), names the rule that decided
// with its origin, and for a denial the smallest rule; adding that rule with
// `rules add` makes explain, and the traffic, allowed.
func TestCLIExplain(t *testing.T) {
	f := opsSetup(t)
	const net, c = "cfw-cli-ex", "cfw-cli-ex-c"
	f.network(t, net, "10.231.142.0/24", "clawker.allow=http://"+harness.AllowedHost)
	f.run(t, c, net, []string{"--label", "clawker.allow=tcp://" + harness.TCPHost + ":5432"}, "sleep", "3600")
	f.waitIdentified(t, c)
	explain := func(dst string) api.ExplainResponse {
		t.Helper()
		var ex api.ExplainResponse
		out := f.mustCFW(t, "explain", c, dst, "--json")
		require.NoError(t, json.Unmarshal([]byte(out), &ex), out)
		require.Equal(t, c, ex.Container)
		require.Equal(t, net, ex.NetworkName)
		return ex
	}
	echo := func(port int) string {
		out, errOut, _ := f.e.Docker("exec", c, "sh", "-c", fmt.Sprintf("echo hi-%d | nc -w 2 %s %d 2>&1", port, harness.TCPHost, port))
		return out + errOut
	}

	// Allowed by the network's option: plain HTTP, the Host checked.
	ex := explain("http://" + harness.AllowedHost + "/x")
	require.True(t, ex.Allowed, "%+v", ex)
	require.Equal(t, "http", ex.Mode)
	require.Equal(t, &api.ExplainRule{Rule: "http://" + harness.AllowedHost, Origin: api.OriginOption, Key: "clawker.allow", Item: "http://" + harness.AllowedHost}, ex.Rule)
	f.pollReach(t, c, harness.AllowedHost, "/x", true, 10*time.Second)

	// Allowed by the container's label: a tcp rule.
	ex = explain("tcp://" + harness.TCPHost + ":5432")
	require.True(t, ex.Allowed, "%+v", ex)
	require.Equal(t, api.OriginLabel, ex.Rule.Origin)
	require.Equal(t, "tcp://"+harness.TCPHost+":5432", ex.Rule.Item)
	require.Contains(t, echo(5432), "hi-5432")
	ex = explain("tcp://" + harness.TCPHost + ":5433")
	require.False(t, ex.Allowed)
	require.Equal(t, "port-not-allowed", ex.Reason)
	require.Equal(t, "tcp://"+harness.TCPHost+":5433", ex.Fix.Rule)
	require.NotContains(t, echo(5433), "hi-5433")

	// An IP literal: denied, as the socket hook does.
	ex = explain("10.220.0.11:80")
	require.False(t, ex.Allowed)
	require.Equal(t, "tcp://10.220.0.11:80", ex.Fix.Rule)
	out, _, _ := f.e.Docker("exec", c, "sh", "-c", "nc -w 2 10.220.0.11 80 </dev/null 2>&1; echo rc=$?")
	require.Contains(t, out, "rc=1")

	// Denied: no rule; the fix, as people read it.
	human := f.mustCFW(t, "explain", c, "http://"+harness.AltHost+"/y")
	t.Logf("explain:\n%s", human)
	require.Regexp(t, `(?m)^verdict +DENIED \(no-rule\)$`, human)
	require.Regexp(t, `(?m)^to allow it +--label clawker\.allow=http://`+harness.AltHost+` +\(this container, at docker run\)$`, human)
	require.Regexp(t, `(?m)^ +clawker-fw rules add `+net+` http://`+harness.AltHost+` +\(every container of the network, now\)$`, human)
	ex = explain("http://" + harness.AltHost + "/y")
	require.False(t, ex.Allowed)
	require.Equal(t, "no-rule", ex.Reason)
	require.Nil(t, ex.Rule)
	require.Equal(t, "http://"+harness.AltHost, ex.Fix.Rule)
	require.Equal(t, "clawker-fw rules add "+net+" http://"+harness.AltHost, ex.Fix.Command)
	ok, why := f.reach(c, harness.AltHost, "/y")
	require.False(t, ok, why)

	// The suggested command, run as printed: explain and traffic agree it
	// is allowed now, by a runtime rule.
	args := strings.Fields(strings.TrimPrefix(ex.Fix.Command, "clawker-fw "))
	f.mustCFW(t, args...)
	ex = explain("http://" + harness.AltHost + "/y")
	require.True(t, ex.Allowed, "%+v", ex)
	require.Equal(t, api.OriginRuntime, ex.Rule.Origin)
	f.pollReach(t, c, harness.AltHost, "/y", true, 5*time.Second)
	human = f.mustCFW(t, "explain", c, "http://"+harness.AltHost+"/y")
	require.Regexp(t, `(?m)^verdict +ALLOWED \(http\)$`, human)
	require.Regexp(t, `(?m)^rule +http://`+harness.AltHost+` \(runtime rule of the network\)$`, human)

	code, _, errOut := f.cfwCode("explain", "no-such-container", "x.example.test")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "CONTAINER_GONE")
	code, _, errOut = f.cfwCode("explain", c, "tcp://db:1-9")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "INVALID_REQUEST")
}

// TestCLIExplainPaths: on an inspected rule with path rules, explain's
// verdict for each spelling of a path is the proxy's (curl through the
// firewall: 200 or the proxy's 403), and the path rule explain suggests for a
// denied path lets that path through once added.
func TestCLIExplainPaths(t *testing.T) {
	f := opsSetup(t)
	deb, err := f.e.ImportDebian()
	require.NoError(t, err)
	const net, c = "cfw-cli-exp", "cfw-cli-exp-c"
	netID := f.network(t, net, "10.231.143.0/24",
		`clawker.rules=[{"dst":"`+harness.PathHost+`","paths":[{"path":"/public/"},{"path":"/public/secret/","action":"deny"}]}]`)
	f.e.MustDocker(t, "run", "-d", "--name", c, "--network", net, deb, "sleep", "3600")
	t.Cleanup(func() { _, _, _ = f.e.Docker("rm", "-f", c) })
	f.waitIdentified(t, c)
	var st api.StatusReport
	require.NoError(t, json.Unmarshal([]byte(f.mustCFW(t, "status", "--json")), &st))
	gw := ""
	for _, n := range st.Networks {
		if n.ID == netID {
			gw = n.Gateway
		}
	}
	require.NotEmpty(t, gw)
	out, _, err := f.e.Docker("exec", c, "curl", "-sS", "--max-time", "5", "-o", "/tmp/pca.crt", "http://"+gw+"/ca.crt")
	require.NoError(t, err, out)
	code := func(path string) string {
		out, _, _ := f.e.Docker("exec", c, "curl", "-sS", "--max-time", "10", "--path-as-is", "--cacert", "/tmp/pca.crt",
			"-o", "/dev/null", "-w", "%{http_code}", "https://"+harness.PathHost+path)
		return strings.TrimSpace(out)
	}
	explain := func(path string) api.ExplainResponse {
		var ex api.ExplainResponse
		out := f.mustCFW(t, "explain", c, "https://"+harness.PathHost+path, "--json")
		require.NoError(t, json.Unmarshal([]byte(out), &ex), out)
		return ex
	}
	for _, p := range []string{"/public/x", "/public/a/../b", "/public/group%2Fproject", "/private/x", "/private/../public/x",
		"/public/..%2fprivate", "/public/%2e%2e/private", "/public/secret/x", "/public/SECRET/x", "/public/secret;x/y", "/"} {
		ex := explain(p)
		got := code(p)
		t.Logf("%-28s explain %-5v %-12s %-6s rule %v; proxy %s", p, ex.Allowed, ex.Reason, ex.Mode, ex.Rule, got)
		if ex.Allowed {
			require.Equal(t, "200", got, "explain allows %s: so does the proxy", p)
			require.Equal(t, "inspect", ex.Mode)
			require.Equal(t, api.OriginOption, ex.Rule.Origin)
			require.Equal(t, "path /public/ allow", ex.Rule.Path)
		} else {
			require.Equal(t, "403", got, "explain denies %s: so does the proxy", p)
			require.Equal(t, "path-rule", ex.Reason)
			require.NotNil(t, ex.Fix)
		}
	}
	require.Contains(t, explain("/public/secret/x").Fix.Note, "deny path rule", "no allow can open a denied path")

	ex := explain("/private/x")
	require.NotEmpty(t, ex.Fix.Rule, "%+v", ex.Fix)
	f.mustCFW(t, "rules", "add", net, ex.Fix.Rule)
	require.True(t, explain("/private/x").Allowed)
	opsEventually(t, 5*time.Second, func() (bool, string) {
		got := code("/private/x")
		return got == "200", "proxy answers " + got
	})
	require.Equal(t, "403", code("/public/secret/x"), "the deny still holds")
}
