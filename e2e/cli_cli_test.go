package e2e

import (
	"encoding/json"
	"errors"
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
