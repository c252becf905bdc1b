package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// swarmTasks returns the running task containers of service svc that carry
// label (key=value; "" = any), once there are n of them and no other task
// container of svc runs.
func swarmTasks(t *testing.T, e *harness.Env, svc, label string, n int) []string {
	t.Helper()
	var tasks []string
	var last string
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		all, _, err := e.Docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc)
		if err == nil {
			args := []string{"ps", "-q", "--filter", "status=running", "--filter", "label=com.docker.swarm.service.name=" + svc}
			if label != "" {
				args = append(args, "--filter", "label="+label)
			}
			out, _, err := e.Docker(args...)
			if err == nil {
				tasks = strings.Fields(out)
				if len(tasks) == n && len(strings.Fields(all)) == n {
					return tasks
				}
			}
		}
		last, _, _ = e.Docker("service", "ps", "--no-trunc", "--format", "{{.Name}} {{.CurrentState}} {{.Error}}", svc)
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("service %s: not %d running tasks with label %q within 120 s; tasks: %s", svc, n, label, last)
	return nil
}

// swarmReach polls until task c fetches http://host/path through the
// firewall (a task can start while the swarm agent is still attaching it).
func swarmReach(t *testing.T, f *pluginFixture, c, host, path string) {
	t.Helper()
	var out string
	require.Eventually(t, func() bool {
		out, _ = f.exec(c, "sh", "-c", httpGet(host, path))
		return strings.Contains(out, "fakenet host="+host+" path="+path)
	}, 30*time.Second, 300*time.Millisecond, "task %s never reached %s%s; last: %s", c, host, path, out)
}

// swarmDenied checks that task c gets NXDOMAIN for each name and EPERM for
// an IP literal (polled: on Docker 20.10 a task is enrolled in the socket
// hooks when its veth moves, which under load can follow its start; until
// then the closed network redirects and nothing leaks).
func swarmDenied(t *testing.T, f *pluginFixture, c string, names ...string) {
	t.Helper()
	for _, name := range names {
		var out string
		require.Eventually(t, func() bool {
			out, _ = f.exec(c, "nslookup", name)
			return strings.Contains(out, "NXDOMAIN")
		}, 20*time.Second, 300*time.Millisecond, "task %s: %s not NXDOMAIN; last: %s", c, name, out)
	}
	var out string
	require.Eventually(t, func() bool {
		out, _ = f.exec(c, "sh", "-c", "nc -w 3 "+deniedIP+" 443 </dev/null")
		return strings.Contains(out, "Operation not permitted")
	}, 20*time.Second, 300*time.Millisecond, "task %s: IP literal not refused with EPERM; last: %s", c, out)
}

// TestSwarmSingleNode (issue 15): a single-node swarm on a dockerd without
// --live-restore, the plugin installed with CLAWKER_SCOPE=global. A
// swarm-scoped clawker-fw network carries its -o options to the node
// through Swarm (the driver echoes them at AllocateNetwork); a service of
// two replicas on it is enforced like containers: the network's rule and
// each task's --container-label rule apply, a denied name is NXDOMAIN, an
// IP literal EPERM. Runtime rules are refused on the swarm network with a
// message pointing to `docker service update --container-label-add`; that
// path replaces the tasks with the new rule, which holds through a plugin
// restart. A `docker stack deploy` Compose file does the same. With authz
// on, invalid network options, --attachable and the service escapes are
// refused with the container messages.
func TestSwarmSingleNode(t *testing.T) {
	begin := time.Now()
	e := ownEnv(t, harness.Options{NoLiveRestore: true})
	f := installPlugin(t, e)
	t.Cleanup(func() { removePluginAndClean(t, e) })
	of := &opsFixture{e: e, img: f.busybox, cli: opsBuildCLI(t)}
	cfgBefore, _ := os.ReadFile(filepath.Join(e.Dir(), "daemon.json"))
	t.Cleanup(func() { of.restoreDaemonConfig(t, cfgBefore) })
	f.resetLeaks(t)

	// The swarm setting, as README says: set while disabled.
	e.MustDocker(t, "plugin", "disable", driver)
	e.MustDocker(t, "plugin", "set", driver, "CLAWKER_SCOPE=global")
	e.MustDocker(t, "plugin", "enable", "--timeout", "60", driver)
	of.waitAdmin(t, 30*time.Second)

	// Measured, for README: a global-scope driver outside a swarm.
	out, errOut, err := e.Docker("network", "create", "-d", driver, "--subnet", "10.231.160.0/24", "-o", "clawker.allow="+harness.AllowedHost, "cfw-sw-standalone")
	t.Logf("MEASURED standalone create, CLAWKER_SCOPE=global, no swarm: err=%v out=%q stderr=%q", err, strings.TrimSpace(out), strings.TrimSpace(errOut))
	if err == nil {
		scope := e.MustDocker(t, "network", "inspect", "-f", "{{.Scope}} {{.Options}}", "cfw-sw-standalone")
		t.Logf("MEASURED standalone network: scope and options %s", scope)
		e.MustDocker(t, "network", "rm", "cfw-sw-standalone")
	}

	require.NoError(t, e.SwarmInit(""))
	t.Cleanup(func() { require.NoError(t, e.SwarmLeave()) })
	t.Logf("swarm up after %v", time.Since(begin).Round(time.Second))

	of.setAuthz(t, true)
	authzOn := true
	t.Cleanup(func() {
		if authzOn {
			of.setAuthz(t, false)
		}
	})

	// Network creation on the manager.
	_, errOut, err = e.Docker("network", "create", "-d", driver, "--scope", "swarm", "-o", "clawker.allow=exa mple", "cfw-sw-bad")
	require.Error(t, err)
	require.Contains(t, errOut, "invalid network option")
	require.Contains(t, errOut, "clawker.allow")
	_, errOut, err = e.Docker("network", "create", "-d", driver, "--scope", "swarm", "--attachable", "-o", "clawker.allow="+harness.AllowedHost, "cfw-sw-attach")
	require.Error(t, err)
	require.Contains(t, errOut, "cannot be --attachable")
	netName := "cfw-sw-agents"
	netID := e.MustDocker(t, "network", "create", "-d", driver, "--scope", "swarm", "--subnet", "10.231.161.0/24", "--gateway", "10.231.161.1",
		"-o", "clawker.allow=http://"+harness.AllowedHost, netName)
	t.Cleanup(func() { _, _, _ = e.Docker("network", "rm", netName) })
	require.Equal(t, "swarm", e.MustDocker(t, "network", "inspect", "-f", "{{.Scope}}", netID))

	// Service escapes: refused with the container create messages.
	svcCreate := func(name string, extra ...string) (string, error) {
		args := append([]string{"service", "create", "--detach", "--no-resolve-image", "--name", name}, extra...)
		args = append(args, f.busybox, "sleep", "600")
		stdout, stderr, err := e.Docker(args...)
		if err == nil {
			t.Cleanup(func() { _, _, _ = e.Docker("service", "rm", name) })
		}
		return stdout + stderr, err
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cap NET_ADMIN", []string{"--network", netName, "--cap-add", "NET_ADMIN"}, "NET_ADMIN is not allowed on the clawker-fw network"},
		{"cap all", []string{"--network", netName, "--cap-add", "ALL"}, "ALL is not allowed on the clawker-fw network"},
		{"docker socket", []string{"--network", netName, "--mount", "type=bind,source=/var/run/docker.sock,target=/d.sock"}, "mounting the Docker socket"},
		{"host network too", []string{"--network", netName, "--network", "host"}, "cannot join other networks"},
		{"ingress port", []string{"--network", netName, "--publish", "8080:80"}, "cannot join other networks (ingress, for the published port 80)"},
		{"bad label", []string{"--network", netName, "--container-label", "clawker.allow=exa..mple"}, "invalid label"},
	} {
		out, err := svcCreate("cfw-sw-escape", tc.args...)
		require.Error(t, err, "%s: %s", tc.name, out)
		require.Contains(t, out, "authorization denied by plugin "+driver, tc.name)
		require.Contains(t, out, tc.want, tc.name)
	}

	// Two replicas: the network's rule (http allowed) and the tasks' label
	// rule (tcp) both apply.
	svc := "cfw-sw-agent"
	out, err = svcCreate(svc, "--replicas", "2", "--network", netName,
		"--container-label", "clawker.allow=tcp://"+harness.TCPHost+":5432")
	require.NoError(t, err, out)
	tasks := swarmTasks(t, e, svc, "", 2)
	for i, c := range tasks {
		swarmReach(t, f, c, harness.AllowedHost, "/swarm-net-"+string(rune('a'+i)))
		out, err := f.exec(c, "sh", "-c", "echo ping | nc -w 5 "+harness.TCPHost+" 5432")
		require.NoError(t, err, out)
		require.Contains(t, out, "ping", "task %s: label rule", c)
		swarmDenied(t, f, c, harness.DeniedHost, harness.PathHost)
	}
	t.Logf("service of 2 tasks enforced after %v", time.Since(begin).Round(time.Second))

	// Runtime rules: refused on the swarm network, pointing to Swarm's path.
	_, errOut, err = of.cfw("rules", "add", netName, "http://"+harness.PathHost)
	require.Error(t, err)
	require.Contains(t, errOut, "is a swarm network")
	require.Contains(t, errOut, "docker service update --container-label-add clawker.allow=")

	// A stack from a Compose file.
	stack := filepath.Join(t.TempDir(), "stack.yml")
	require.NoError(t, os.WriteFile(stack, []byte(`version: "3.8"
services:
  agent:
    image: `+f.busybox+`
    command: ["sleep", "600"]
    networks: [agents]
    labels:
      clawker.allow: tcp://`+harness.TCPHost+`:5432
networks:
  agents:
    driver: `+driver+`
    driver_opts:
      clawker.allow: http://`+harness.AllowedHost+`
    ipam:
      config: [{subnet: 10.231.162.0/24}]
`), 0o644))
	out, errOut, err = e.Docker("stack", "deploy", "--resolve-image", "never", "-c", stack, "cfwstack")
	require.NoError(t, err, out+errOut)
	t.Cleanup(func() { _, _, _ = e.Docker("stack", "rm", "cfwstack") })
	st := swarmTasks(t, e, "cfwstack_agent", "", 1)[0]
	swarmReach(t, f, st, harness.AllowedHost, "/swarm-stack")
	out, err = f.exec(st, "sh", "-c", "echo ping | nc -w 5 "+harness.TCPHost+" 5432")
	require.NoError(t, err, out)
	require.Contains(t, out, "ping")
	swarmDenied(t, f, st, harness.DeniedHost)
	_, _, _ = e.Docker("stack", "rm", "cfwstack")

	// The plugin is restarted below: a dead authz plugin blocks the API.
	of.setAuthz(t, false)
	authzOn = false

	// The rule changes through Swarm: the tasks are replaced with the new
	// label (a label key holds one value: tcp is gone, the path host is in).
	newRule := "clawker.allow=http://" + harness.PathHost
	out, errOut, err = e.Docker("service", "update", "--detach", "--update-parallelism", "2", "--container-label-add", newRule, svc)
	require.NoError(t, err, out+errOut)
	tasks = swarmTasks(t, e, svc, newRule, 2)
	for _, c := range tasks {
		swarmReach(t, f, c, harness.PathHost, "/swarm-updated")
		swarmReach(t, f, c, harness.AllowedHost, "/swarm-net-after-update")
		swarmDenied(t, f, c, harness.TCPHost, harness.DeniedHost)
	}

	// A plugin restart keeps all of it.
	of.killPlugin(t)
	for _, c := range tasks {
		swarmReach(t, f, c, harness.PathHost, "/swarm-after-restart")
		swarmReach(t, f, c, harness.AllowedHost, "/swarm-net-after-restart")
		swarmDenied(t, f, c, harness.TCPHost, harness.DeniedHost)
	}
	_, errOut, err = of.cfw("rules", "add", netName, "http://"+harness.AltHost)
	require.Error(t, err)
	require.Contains(t, errOut, "is a swarm network")

	f.requireNoLeaks(t)
	e.MustDocker(t, "service", "rm", svc)
	recordTiming(t, "swarm_single_node", time.Since(begin))
}
