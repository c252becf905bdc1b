package e2e

// Hardening (issue 11), classes 3 and 5 on the real dockerd with authz on:
// shared namespaces that the checks must resolve through Docker (in any
// state, at create and at start), the plugin recognizing itself and its
// networks under a namespaced, tagged reference, and a firewalled container
// staying firewalled for its life.
//
//	cd /work/main && make plugin build && \
//	  CLAWKER_E2E=1 go test -count=1 -v -run 'TestHardeningAuthzns' ./e2e/

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// authznsRef is the reference the plugin is installed under for these
// tests: namespaced and tagged, as a registry install would name it.
const authznsRef = "ho/clawker-fw:1.0"

func TestHardeningAuthzns(t *testing.T) {
	f := opsSetupAs(t, authznsRef)
	e := f.e
	netID := f.network(t, "cfw-azns", "10.231.40.0/24", "clawker.allow=http://"+harness.AllowedHost)
	e.MustDocker(t, "network", "create", "--internal", "--subnet", "10.231.41.0/24", "cfw-azns-plain")
	e.MustDocker(t, "network", "create", "--internal", "--subnet", "10.231.42.0/24", "cfw-azns-plain2")
	t.Cleanup(func() { _, _, _ = e.Docker("network", "rm", "cfw-azns-plain", "cfw-azns-plain2") })
	pluginID := e.MustDocker(t, "plugin", "inspect", "-f", "{{.Id}}", authznsRef)

	f.setAuthz(t, true)
	t.Cleanup(func() { f.setAuthz(t, false) })

	// refused runs a docker command that must fail at authz with every
	// string of want in its error.
	refused := func(t *testing.T, want []string, args ...string) {
		t.Helper()
		_, errOut, err := e.Docker(args...)
		require.Error(t, err, "docker %s must be refused", strings.Join(args, " "))
		t.Logf("docker %s\n    -> %s", strings.Join(args, " "), strings.TrimSpace(errOut))
		require.Contains(t, errOut, "authorization denied by plugin "+authznsRef)
		for _, w := range want {
			require.Contains(t, errOut, w)
		}
	}
	// created creates a container that is removed at the end.
	created := func(t *testing.T, name string, args ...string) string {
		t.Helper()
		id := e.MustDocker(t, append(append([]string{"create", "--name", name}, args...), f.img, "sleep", "3600")...)
		t.Cleanup(func() { _, _, _ = e.Docker("rm", "-f", name) })
		return id
	}

	// The agent exists before it runs (as Compose creates every service
	// before it starts any).
	agentID := created(t, "cfw-azns-agent", "--network", "cfw-azns")

	t.Run("sidecar in a created agent's netns with escape capabilities", func(t *testing.T) {
		refused(t, []string{"NET_ADMIN is not allowed", "container:cfw-azns-agent"},
			"create", "--network", "container:cfw-azns-agent", "--cap-add", "NET_ADMIN", f.img, "true")
		refused(t, []string{"--cap-add ALL is not allowed"},
			"create", "--network", "container:"+agentID[:10], "--cap-add", "ALL", f.img, "true")
		refused(t, []string{"--privileged is not allowed"},
			"create", "--network", "container:"+agentID, "--privileged", f.img, "true")
	})

	t.Run("sidecar admitted before its target joined the firewall is refused at start", func(t *testing.T) {
		// X is on a plain network when the sidecar is created (nothing to
		// refuse then), and moves to the firewalled network before start.
		created(t, "cfw-azns-x", "--network", "cfw-azns-plain")
		created(t, "cfw-azns-x-sidecar", "--network", "container:cfw-azns-x", "--cap-add", "NET_ADMIN")
		e.MustDocker(t, "network", "disconnect", "cfw-azns-plain", "cfw-azns-x")
		e.MustDocker(t, "network", "connect", "cfw-azns", "cfw-azns-x")
		e.MustDocker(t, "start", "cfw-azns-x")
		refused(t, []string{"NET_ADMIN is not allowed", "of container cfw-azns-x"}, "start", "cfw-azns-x-sidecar")
		require.Equal(t, "false", e.MustDocker(t, "inspect", "-f", "{{.State.Running}}", "cfw-azns-x-sidecar"))
	})

	e.MustDocker(t, "start", "cfw-azns-agent")
	f.waitIdentified(t, "cfw-azns-agent")

	t.Run("control: a plain sidecar shares the agent's netns", func(t *testing.T) {
		require.Equal(t, "ok", e.MustDocker(t, "run", "--rm", "--network", "container:cfw-azns-agent", f.img, "echo", "ok"))
		// ... and its PID namespace too: one network namespace, one firewall.
		require.Equal(t, "ok", e.MustDocker(t, "run", "--rm", "--network", "container:cfw-azns-agent",
			"--pid", "container:cfw-azns-agent", f.img, "echo", "ok"))
	})

	t.Run("exec --privileged in a sidecar of the agent's netns", func(t *testing.T) {
		created(t, "cfw-azns-sidecar", "--network", "container:cfw-azns-agent")
		e.MustDocker(t, "start", "cfw-azns-sidecar")
		refused(t, []string{"exec --privileged is not allowed", "cfw-azns-sidecar"}, "exec", "--privileged", "cfw-azns-sidecar", "true")
		require.Equal(t, "ok", e.MustDocker(t, "exec", "cfw-azns-sidecar", "echo", "ok"))
	})

	t.Run("PID namespace shared across the firewall", func(t *testing.T) {
		created(t, "cfw-azns-plainc", "--network", "cfw-azns-plain")
		e.MustDocker(t, "start", "cfw-azns-plainc")
		// An operator's debugging sidecar on a normal network joining the
		// agent's PID namespace: the agent could ptrace it.
		refused(t, []string{"--pid container:cfw-azns-agent is not allowed", "is firewalled"},
			"run", "--rm", "--network", "cfw-azns-plain", "--pid", "container:cfw-azns-agent", f.img, "true")
		refused(t, []string{"is not allowed"},
			"run", "--rm", "--network", "cfw-azns-plain", "--pid", "container:"+agentID[:12], f.img, "true")
		// The reverse: a firewalled container joining a normal one's.
		refused(t, []string{"--pid container:cfw-azns-plainc is not allowed", "is not firewalled"},
			"run", "--rm", "--network", "cfw-azns", "--pid", "container:cfw-azns-plainc", f.img, "true")
		// Created while its target was on a normal network: the target
		// cannot join a firewall while they share a PID namespace ...
		yID := created(t, "cfw-azns-y", "--network", "cfw-azns-plain")
		pidLater := created(t, "cfw-azns-pidlater", "--network", "cfw-azns-plain", "--pid", "container:cfw-azns-y")
		t.Logf("Docker stores the shared PID namespace as %s", e.MustDocker(t, "inspect", "-f", "{{.HostConfig.PidMode}}", "cfw-azns-pidlater"))
		e.MustDocker(t, "network", "disconnect", "cfw-azns-plain", "cfw-azns-y")
		refused(t, []string{"shares a PID namespace", pidLater[:12]}, "network", "connect", "cfw-azns", "cfw-azns-y")
		// ... and when it joined one while authz was off (and was renamed),
		// the sharer's start is refused.
		f.setAuthz(t, false)
		e.MustDocker(t, "network", "connect", "cfw-azns", "cfw-azns-y")
		e.MustDocker(t, "rename", "cfw-azns-y", "cfw-azns-y2")
		f.setAuthz(t, true)
		e.MustDocker(t, "start", "cfw-azns-y2")
		refused(t, []string{"--pid container:" + yID[:12] + " is not allowed", "(cfw-azns-y2) is firewalled"}, "start", "cfw-azns-pidlater")
		_, _, _ = e.Docker("rm", "-f", "cfw-azns-y2")
		// Control: two containers on no firewalled network share a PID namespace.
		require.Equal(t, "ok", e.MustDocker(t, "run", "--rm", "--network", "cfw-azns-plain2", "--pid", "container:cfw-azns-plainc", f.img, "echo", "ok"))
	})

	t.Run("firewalled for life", func(t *testing.T) {
		created(t, "cfw-azns-life", "--network", "cfw-azns")
		e.MustDocker(t, "start", "cfw-azns-life")
		f.waitIdentified(t, "cfw-azns-life")
		refused(t, []string{"cannot join another network"}, "network", "connect", "cfw-azns-plain", "cfw-azns-life")
		// stop -> disconnect -> connect another network -> start
		e.MustDocker(t, "stop", "-t", "1", "cfw-azns-life")
		e.MustDocker(t, "network", "disconnect", "cfw-azns", "cfw-azns-life")
		refused(t, []string{"cannot join another network", "for its life"}, "network", "connect", "cfw-azns-plain", "cfw-azns-life")
		refused(t, []string{"cannot join another network"}, "network", "connect", "bridge", "cfw-azns-life")
		// create -> disconnect -> connect, never started.
		created(t, "cfw-azns-life2", "--network", "cfw-azns")
		e.MustDocker(t, "network", "disconnect", "cfw-azns", "cfw-azns-life2")
		refused(t, []string{"cannot join another network"}, "network", "connect", "cfw-azns-plain", "cfw-azns-life2")
		require.NotContains(t, e.MustDocker(t, "inspect", "-f", "{{json .NetworkSettings.Networks}}", "cfw-azns-life2"), "cfw-azns-plain")
		// Control: a container that never was firewalled moves freely, and
		// the firewalled one may rejoin its firewall.
		created(t, "cfw-azns-free", "--network", "cfw-azns-plain")
		e.MustDocker(t, "network", "connect", "cfw-azns-plain2", "cfw-azns-free")
		e.MustDocker(t, "network", "connect", "cfw-azns", "cfw-azns-life")
	})

	t.Run("the plugin under a namespaced, tagged reference", func(t *testing.T) {
		// Its networks are recognized by id, whatever the driver's name.
		refused(t, []string{"mounting the Docker socket", "cfw-azns"},
			"run", "--rm", "--network", "cfw-azns", "-v", "/var/run/docker.sock:/var/run/docker.sock", f.img, "true")
		refused(t, []string{"--privileged is not allowed"}, "create", "--network", netID[:12], "--privileged", f.img, "true")
		// Itself, under every spelling Docker resolves.
		for _, args := range [][]string{
			{"plugin", "disable", pluginID},
			{"plugin", "disable", "-f", pluginID},
			{"plugin", "disable", "-f", pluginID[:12]},
			{"plugin", "disable", "-f", pluginID[:5]},
			{"plugin", "disable", "-f", authznsRef},
			{"plugin", "disable", "-f", "docker.io/" + authznsRef},
			{"plugin", "rm", "-f", authznsRef},
			{"plugin", "rm", "-f", pluginID[:12]},
			{"plugin", "set", pluginID[:12], "CLAWKER_AUTHZ_OVERRIDE=true"},
		} {
			refused(t, []string{"still has", "docker network rm", pluginID[:12]}, args...)
		}
		require.Equal(t, "true", e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", authznsRef))
	})

	// Control: with no networks left, the plugin may be disabled (by id).
	for _, c := range strings.Fields(e.MustDocker(t, "ps", "-aq")) {
		e.MustDocker(t, "rm", "-f", c)
	}
	e.MustDocker(t, "network", "rm", "cfw-azns")
	_, errOut, err := e.Docker("plugin", "set", pluginID[:12], "CLAWKER_LOG_LEVEL=info")
	require.Error(t, err, "Docker itself refuses to set an enabled plugin")
	require.NotContains(t, errOut, "authorization denied", "authz let it through")
	e.MustDocker(t, "plugin", "disable", pluginID)
	require.Equal(t, "false", e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", authznsRef))
}
