package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// swarmNode is a two-node swarm on this machine: the Env's dockerd (no
// live-restore) as manager, and harness node 1 (a second dockerd in its own
// network namespace) as worker, each with the plugin installed from
// build/plugin.
type swarmNode struct {
	*pluginFixture
	node *harness.Node
	// global: the plugin has the CLAWKER_SCOPE setting and both plugins
	// run with CLAWKER_SCOPE=global, so a swarm network's options reach
	// every node.
	global bool
}

// setupSwarmNode starts the manager Env, the worker node, installs the
// plugin on both and joins the worker. Cleanups run in reverse: the worker
// leaves (and is removed from the manager), the manager leaves, the plugin
// goes, the Env closes.
func setupSwarmNode(t *testing.T) *swarmNode {
	t.Helper()
	start := time.Now()
	e := ownEnv(t, harness.Options{NoLiveRestore: true})
	f := installPlugin(t, e)
	t.Cleanup(func() { removePluginAndClean(t, e) })

	build := filepath.Join(repoRoot(t), "build", "plugin")
	cfg, err := os.ReadFile(filepath.Join(build, "config.json"))
	require.NoError(t, err)
	s := &swarmNode{pluginFixture: f, global: strings.Contains(string(cfg), `"CLAWKER_SCOPE"`)}
	var scope []string
	if s.global {
		scope = []string{"CLAWKER_SCOPE=global"}
		e.MustDocker(t, "plugin", "disable", driver)
		e.MustDocker(t, "plugin", "set", driver, scope[0])
		e.MustDocker(t, "plugin", "enable", driver)
	} else {
		t.Log("this plugin has no CLAWKER_SCOPE setting: swarm network options do not reach the nodes; testing task labels only")
	}

	t.Cleanup(func() {
		if err := e.SwarmLeave(); err != nil {
			t.Errorf("manager leaves the swarm: %v", err)
		}
	})
	s.node = e.SetupNode(t, 1)
	require.NoError(t, s.node.CopyImage(f.busybox))
	copyDir := t.TempDir()
	out, err := exec.Command("cp", "-a", build+"/.", copyDir).CombinedOutput()
	require.NoError(t, err, "copy plugin build: %s", out)
	require.NoError(t, s.node.InstallPlugin(driver, copyDir, append(s.node.PluginSettings(), scope...)...))

	// The manager listens and advertises on its address on the worker's
	// link (harness.SwarmPort, Swarm's own address pool).
	require.NoError(t, e.SwarmInit(harness.NodeHostIP(1)))
	require.NoError(t, s.node.JoinSwarm())
	// Each plugin pins in its own directory (two on one kernel must not
	// share maps).
	for _, dir := range []string{harness.DefaultPinDir, s.node.PinDir()} {
		_, err := os.Stat(filepath.Join(dir, "meta"))
		require.NoError(t, err, "pins of a plugin")
	}
	recordTiming(t, "swarm_node_setup", time.Since(start))
	return s
}

// workerTasks waits until the worker runs want containers of service (ids,
// sorted), none of them in old.
func (s *swarmNode) workerTasks(t *testing.T, service string, want int, old []string) []string {
	t.Helper()
	var ids []string
	require.Eventually(t, func() bool {
		out, _, err := s.node.Docker("ps", "-q", "--no-trunc", "--filter", "label=com.docker.swarm.service.name="+service)
		if err != nil {
			return false
		}
		ids = strings.Fields(out)
		for _, id := range ids {
			if slices.Contains(old, id) {
				return false
			}
		}
		return len(ids) == want
	}, 3*time.Minute, time.Second, "worker never ran %d new tasks of %s; manager says:\n%s", want, service, s.serviceTasks(service))
	slices.Sort(ids)
	return ids
}

func (s *swarmNode) serviceTasks(service string) string {
	out, errOut, _ := s.e.Docker("service", "ps", "--no-trunc", service)
	return out + errOut
}

// nodeExec runs a command in a container of the worker.
func (s *swarmNode) nodeExec(id string, cmd ...string) (string, error) {
	stdout, stderr, err := s.node.Docker(append([]string{"exec", id}, cmd...)...)
	return stdout + stderr, err
}

// requireEnforced checks one task container on the worker: the names of
// allowHosts reachable over plain HTTP (path), the denied name NXDOMAIN, an
// IP literal refused with EPERM. Docker 20.10 enrolls a container after
// its first instruction may have run: the first connection is polled.
func (s *swarmNode) requireEnforced(t *testing.T, id, path string, allowHosts ...string) {
	t.Helper()
	for _, h := range allowHosts {
		require.Eventually(t, func() bool {
			out, _ := s.nodeExec(id, "sh", "-c", httpGet(h, path))
			return strings.Contains(out, "fakenet host="+h+" path="+path)
		}, 30*time.Second, 300*time.Millisecond, "task %.12s on the worker never reached %s", id, h)
	}
	out, _ := s.nodeExec(id, "nslookup", harness.DeniedHost)
	require.Contains(t, out, "NXDOMAIN", "task %.12s", id)
	require.Eventually(t, func() bool {
		out, _ := s.nodeExec(id, "sh", "-c", "nc -w 3 "+deniedIP+" 80 </dev/null")
		return strings.Contains(out, "Operation not permitted")
	}, 30*time.Second, 300*time.Millisecond, "task %.12s: IP literal never refused with EPERM", id)
	for _, port := range []string{"443", "5432"} {
		out, err := s.nodeExec(id, "sh", "-c", "nc -w 3 "+deniedIP+" "+port+" </dev/null")
		require.Error(t, err, out)
		require.Contains(t, out, "Operation not permitted", "task %.12s port %s", id, port)
	}
}

// TestSwarmNodeWorker: a service on a swarm-scoped clawker-fw network, its
// two replicas placed on the worker (a second dockerd in its own netns), is
// enforced there by the worker's own plugin exactly like a container: the
// network's option (with CLAWKER_SCOPE=global) and the task label reach the
// worker, the denied name is NXDOMAIN, an IP literal EPERM. A rule added on
// the manager by `docker service update --container-label-add` (the swarm
// path for runtime rules) reaches the worker's new tasks, and only them.
// Nothing leaks: the worker's plugin reaches the fake internet as the host.
func TestSwarmNodeWorker(t *testing.T) {
	s := setupSwarmNode(t)
	s.resetLeaks(t)
	start := time.Now()

	netArgs := []string{"network", "create", "-d", driver, "--scope", "swarm", "--subnet", "10.231.150.0/24", "--gateway", "10.231.150.1"}
	allow := []string{harness.AltHost}
	if s.global {
		netArgs = append(netArgs, "-o", "clawker.allow=http://"+harness.AllowedHost)
		allow = append(allow, harness.AllowedHost)
	}
	s.e.MustDocker(t, append(netArgs, "cfw-sn-net")...)
	t.Cleanup(func() {
		_, _, _ = s.e.Docker("service", "rm", "cfw-sn-svc")
		require.Eventually(t, func() bool {
			out, _, err := s.node.Docker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name=cfw-sn-svc")
			return err == nil && strings.TrimSpace(out) == ""
		}, time.Minute, 500*time.Millisecond, "the worker kept the service's containers")
		_, _, _ = s.e.Docker("network", "rm", "cfw-sn-net")
	})

	s.e.MustDocker(t, "service", "create", "--detach", "--no-resolve-image", "--name", "cfw-sn-svc",
		"--replicas", "2", "--constraint", "node.role==worker", "--network", "cfw-sn-net",
		// busybox sleep as PID 1 ignores SIGTERM: without these an update
		// waits 10 s per task for the kill.
		"--stop-grace-period", "1s", "--update-parallelism", "2",
		"--container-label", "clawker.allow=http://"+harness.AltHost, s.busybox, "sleep", "3600")
	tasks := s.workerTasks(t, "cfw-sn-svc", 2, nil)
	t.Logf("2 tasks running on the worker %v after the create", time.Since(start).Round(time.Millisecond))
	require.Empty(t, strings.TrimSpace(s.e.MustDocker(t, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=cfw-sn-svc")),
		"a task ran on the manager")
	for _, id := range tasks {
		s.requireEnforced(t, id, "/sn-worker", allow...)
		// shared.example.test is in neither the option nor the label.
		out, _ := s.nodeExec(id, "nslookup", harness.SharedHost)
		require.Contains(t, out, "NXDOMAIN", "task %.12s before the update", id)
	}
	if s.global {
		// The worker's network carries the manager's options (what the
		// driver echoed at allocation).
		opts := s.node.MustDocker(t, "network", "inspect", "-f", "{{json .Options}}", "cfw-sn-net")
		require.Contains(t, opts, "clawker.allow", "worker's network options: %s", opts)
	}

	// The runtime path on a swarm network: the service's labels, updated on
	// the manager, replace every task on the worker with the new rules.
	s.e.MustDocker(t, "service", "update", "--detach", "--no-resolve-image",
		"--container-label-add", "clawker.allow=http://"+harness.AltHost+",http://"+harness.SharedHost, "cfw-sn-svc")
	phase := time.Now()
	updated := s.workerTasks(t, "cfw-sn-svc", 2, tasks)
	t.Logf("2 updated tasks running on the worker %v after the update", time.Since(phase).Round(time.Millisecond))
	for _, id := range updated {
		label := s.node.MustDocker(t, "inspect", "-f", `{{index .Config.Labels "clawker.allow"}}`, id)
		require.Contains(t, label, harness.SharedHost)
		s.requireEnforced(t, id, "/sn-updated", append(allow, harness.SharedHost)...)
	}

	// A second plugin on this kernel with the manager plugin's pin
	// directory refuses to start (it would rebuild and rewrite the other's
	// maps), and takes nothing down with it.
	s.requirePinClashRefused(t)

	// The worker's plugin restarted (killed; its dockerd starts it again)
	// keeps enforcing the updated tasks' rules: they come from Swarm's
	// spec, not from the plugin's store.
	s.restartNodePlugin(t)
	for _, id := range updated {
		s.requireEnforced(t, id, "/sn-after-restart", append(allow, harness.SharedHost)...)
	}
	recordTiming(t, "swarm_node_worker", time.Since(start))

	log, err := s.e.FakenetLog()
	require.NoError(t, err)
	seen := 0
	for _, en := range log {
		if en.Path == "/sn-worker" || en.Path == "/sn-updated" || en.Path == "/sn-after-restart" {
			seen++
		}
	}
	require.NotZero(t, seen, "no request of the worker's tasks reached the fake internet")
	s.requireNoLeaks(t)
}

// requirePinClashRefused creates a second plugin on the worker (a rootfs
// differing by one file: Docker refuses two plugins of identical content)
// with its own state directory but the manager plugin's pin directory, and
// requires that enabling it fails with the pin lock's message while the
// manager's pins stay.
func (s *swarmNode) requirePinClashRefused(t *testing.T) {
	t.Helper()
	const ref = "cfw-pin-clash:latest"
	dir := t.TempDir()
	out, err := exec.Command("cp", "-a", filepath.Join(repoRoot(t), "build", "plugin")+"/.", dir).CombinedOutput()
	require.NoError(t, err, "copy plugin build: %s", out)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rootfs", "pin-clash"), []byte("pin clash\n"), 0o644))
	state := filepath.Join(s.node.Dir(), "state-clash")
	require.NoError(t, os.MkdirAll(state, 0o755))
	var settings []string
	for _, kv := range s.node.PluginSettings() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "state.source":
			kv = k + "=" + state
		case "CLAWKER_BPF_PIN_DIR":
			kv = k + "=" + harness.DefaultPinDir
		}
		settings = append(settings, kv)
	}
	s.node.MustDocker(t, "plugin", "create", ref, dir)
	defer func() {
		_, _, _ = s.node.Docker("plugin", "disable", "-f", ref)
		_, _, _ = s.node.Docker("plugin", "rm", "-f", ref)
	}()
	s.node.MustDocker(t, append([]string{"plugin", "set", ref}, settings...)...)
	stdout, stderr, err := s.node.Docker("plugin", "enable", "--timeout", "15", ref)
	require.Error(t, err, "a second plugin on the manager plugin's pins was enabled: %s%s", stdout, stderr)
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(s.node.DockerdLog())
		return strings.Contains(string(b), "by another clawker-fw on this kernel")
	}, 15*time.Second, 200*time.Millisecond, "the refused plugin never said why (node dockerd log %s)", s.node.DockerdLog())
	_, err = os.Stat(filepath.Join(harness.DefaultPinDir, "meta"))
	require.NoError(t, err, "the manager's pins")
}

// restartNodePlugin kills the worker's plugin (SIGKILL) and waits until the
// worker's dockerd started it again and its admin API answers.
func (s *swarmNode) restartNodePlugin(t *testing.T) {
	t.Helper()
	const exe = "/bin/clawker-fw-plugin"
	pids := processesOf(exe, s.node.Owns)
	require.Len(t, pids, 1, "one plugin process on the worker")
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	start := time.Now()
	require.Eventually(t, func() bool {
		now := processesOf(exe, s.node.Owns)
		if len(now) != 1 || now[0] == pids[0] {
			return false
		}
		return exec.Command(s.cli, "--socket", filepath.Join(s.node.StateDir(), "admin.sock"), "status").Run() == nil
	}, 90*time.Second, 200*time.Millisecond, "the worker's plugin was not restarted by its dockerd")
	t.Logf("worker plugin pid %d killed; restarted, admin API up after %v", pids[0], time.Since(start).Round(time.Millisecond))
	// As killPlugin: let Docker 20.10's post-start window pass.
	time.Sleep(2 * time.Second)
}
