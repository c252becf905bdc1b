package e2e

// End-to-end tests of admission and operations: the authz plugin (invariants
// 6 and 8) and the admin CLI (runtime rules, bypass, denials, status, CA).
//
// Each top-level test installs the plugin from the build directory (unless
// another test already did) on the package's shared environment, and removes
// what it created. Authz is switched on only while a test needs it, and
// always off again before the plugin is disabled or killed (a configured authz
// plugin that is dead blocks the Docker API ~30 s per call).
//
//	cd /work/main && make plugin && \
//	  CLAWKER_E2E=1 go test -count=1 -v -run 'TestOps' ./e2e/
//
// CLAWKER_E2E_PLUGIN_DIR overrides the plugin build directory
// (default <repo>/build/plugin).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// opsFixture is one test's view of the shared environment with the plugin.
type opsFixture struct {
	e   *harness.Env
	img string
	cli string
}

var (
	opsCLIOnce sync.Once
	opsCLIPath string
	opsCLIErr  error
)

// opsRepoRoot is the module root (the e2e package runs in <root>/e2e).
func opsRepoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	return root
}

// opsBuildCLI builds the admin CLI once per test binary from the current
// source, so the test never runs a stale build/bin.
func opsBuildCLI(t *testing.T) string {
	t.Helper()
	opsCLIOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cfw-ops-cli-")
		if err != nil {
			opsCLIErr = err
			return
		}
		opsCLIPath = filepath.Join(dir, "clawker-fw")
		cmd := exec.Command("go", "build", "-o", opsCLIPath, "./cmd/clawker-fw")
		cmd.Dir = opsRepoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			opsCLIErr = fmt.Errorf("build clawker-fw CLI: %v: %s", err, out)
		}
	})
	require.NoError(t, opsCLIErr)
	return opsCLIPath
}

// opsSetup returns the shared environment with busybox imported and the
// plugin enabled. When it installed the plugin it removes it at the end of
// t, with the BPF pins and nft tables the plugin leaves by design.
func opsSetup(t *testing.T) *opsFixture {
	t.Helper()
	e := env(t)
	img, err := e.ImportBusybox()
	require.NoError(t, err)
	f := &opsFixture{e: e, img: img, cli: opsBuildCLI(t)}

	// Restore daemon.json as it was (authz off unless someone else set it).
	cfgBefore, _ := os.ReadFile(filepath.Join(e.Dir(), "daemon.json"))
	t.Cleanup(func() { f.restoreDaemonConfig(t, cfgBefore) })

	if out, _, err := e.Docker("plugin", "inspect", "-f", "{{.Enabled}}", harness.PluginName); err == nil {
		if strings.TrimSpace(out) != "true" {
			e.MustDocker(t, "plugin", "enable", "--timeout", "60", harness.PluginName)
		}
		t.Logf("plugin %s already installed: reusing it", harness.PluginName)
	} else {
		dir := os.Getenv("CLAWKER_E2E_PLUGIN_DIR")
		if dir == "" {
			dir = filepath.Join(opsRepoRoot(t), "build", "plugin")
		}
		_, err := os.Stat(filepath.Join(dir, "rootfs", "bin", "clawker-fw-plugin"))
		require.NoError(t, err, "build the plugin first: make plugin")
		start := time.Now()
		require.NoError(t, e.InstallPlugin(dir))
		t.Logf("plugin installed from %s in %v", dir, time.Since(start).Round(time.Millisecond))
		t.Cleanup(func() { f.removePlugin(t) })
	}
	f.waitAdmin(t, 30*time.Second)
	return f
}

func (f *opsFixture) restoreDaemonConfig(t *testing.T, before []byte) {
	now, _ := os.ReadFile(filepath.Join(f.e.Dir(), "daemon.json"))
	if string(now) == string(before) {
		return
	}
	var cfg map[string]any
	if len(before) > 0 {
		if err := json.Unmarshal(before, &cfg); err != nil {
			t.Errorf("restore daemon.json: %v", err)
			return
		}
	}
	if err := f.e.WriteDaemonConfig(cfg); err != nil {
		t.Errorf("restore daemon.json: %v", err)
		return
	}
	if err := f.e.ReloadDockerd(); err != nil {
		t.Errorf("reload dockerd: %v", err)
	}
}

// removePlugin turns authz off, removes every container and clawker-fw
// network, disables and removes the plugin, and removes what the plugin
// leaves on the host by design (pins, nft tables) so the machine is clean.
func (f *opsFixture) removePlugin(t *testing.T) {
	e := f.e
	f.setAuthz(t, false)
	if out, _, err := e.Docker("ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = e.Docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...)
	}
	if out, _, err := e.Docker("network", "ls", "-q", "--filter", "driver="+harness.PluginName); err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = e.Docker(append([]string{"network", "rm"}, strings.Fields(out)...)...)
	}
	if err := e.RemovePlugin(); err != nil {
		t.Errorf("remove plugin: %v", err)
	}
	opsCleanHost(t)
}

// opsCleanHost removes the plugin's pins (unpinning detaches its cgroup
// programs) and nft tables.
func opsCleanHost(t *testing.T) {
	if err := os.RemoveAll("/sys/fs/bpf/clawker-fw"); err != nil {
		t.Errorf("remove pins: %v", err)
	}
	for _, fam := range []string{"inet", "bridge"} {
		if exec.Command("nft", "list", "table", fam, "clawker_fw").Run() == nil {
			if out, err := exec.Command("nft", "delete", "table", fam, "clawker_fw").CombinedOutput(); err != nil {
				t.Errorf("nft delete table %s clawker_fw: %v: %s", fam, err, out)
			}
		}
	}
}

// cfw runs the admin CLI against the plugin's admin socket.
func (f *opsFixture) cfw(args ...string) (string, string, error) {
	cmd := exec.Command(f.cli, append([]string{"--socket", filepath.Join(f.e.StateDir(), "admin.sock")}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			err = fmt.Errorf("clawker-fw %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
		}
		return out.String(), errb.String(), err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), errb.String(), fmt.Errorf("clawker-fw %s: timed out", strings.Join(args, " "))
	}
}

func (f *opsFixture) mustCFW(t *testing.T, args ...string) string {
	t.Helper()
	out, _, err := f.cfw(args...)
	require.NoError(t, err)
	return out
}

// waitAdmin waits until the admin API answers status.
func (f *opsFixture) waitAdmin(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last error
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, _, last = f.cfw("status"); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("admin API not answering after %v: %v", timeout, last)
}

// network creates a clawker-fw network and returns its id.
func (f *opsFixture) network(t *testing.T, name, subnet string, opts ...string) string {
	t.Helper()
	args := []string{"network", "create", "-d", harness.PluginName, "--subnet", subnet}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	id := f.e.MustDocker(t, append(args, name)...)
	t.Cleanup(func() {
		_, _, _ = f.e.Docker("network", "rm", name)
	})
	return id
}

// run starts a detached busybox container and returns its id.
func (f *opsFixture) run(t *testing.T, name, network string, extra []string, cmd ...string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--network", network}, extra...)
	args = append(args, f.img)
	args = append(args, cmd...)
	id := f.e.MustDocker(t, args...)
	t.Cleanup(func() { _, _, _ = f.e.Docker("rm", "-f", name) })
	return id
}

// httpScript fetches http://host/path with busybox nc (its wget segfaults)
// and prints the response.
func httpScript(host, path string) string {
	return fmt.Sprintf(`printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' | nc -w 2 %s 80`, path, host, host)
}

// reach reports whether container c gets the fake internet's answer for
// http://host/path.
func (f *opsFixture) reach(c, host, path string) (bool, string) {
	out, errOut, _ := f.e.Docker("exec", c, "sh", "-c", httpScript(host, path)+" 2>&1")
	return strings.Contains(out, "path="+path), out + errOut
}

// pollReach polls until reachability of host from c equals want.
func (f *opsFixture) pollReach(t *testing.T, c, host, path string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < timeout {
		var ok bool
		if ok, last = f.reach(c, host, path); ok == want {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s -> http://%s%s: reachable=%v not reached within %v; last output: %q", c, host, path, want, timeout, last)
	return 0
}

// opsDockerCmd is a docker CLI command against the test dockerd (for
// streaming output, which Env.Docker does not offer).
func opsDockerCmd(e *harness.Env, args ...string) *exec.Cmd {
	docker, err := exec.LookPath("docker")
	if err != nil {
		docker = "/usr/bin/docker"
	}
	cmd := exec.Command(docker, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.DockerHost(), "DOCKER_CONFIG="+filepath.Join(e.Dir(), "cli"))
	return cmd
}

// poller runs a reachability loop inside a container (20 ms between
// attempts) and reports when the state flips to want: it measures rule
// latency without docker exec overhead per attempt.
type poller struct {
	cmd     *exec.Cmd
	started chan struct{}
	result  chan pollResult
}

type pollResult struct {
	at       time.Time
	line     string
	attempts int
}

func (f *opsFixture) startPoller(t *testing.T, c, host, path string, want bool, attempts int) *poller {
	t.Helper()
	neg := ""
	if !want {
		neg = "! "
	}
	script := fmt.Sprintf(`echo START; i=0; while [ $i -lt %d ]; do if %s{ %s 2>/dev/null | grep -q path=%s; }; then echo FLIPPED $i; exit 0; fi; i=$((i+1)); usleep 20000; done; echo TIMEOUT $i`,
		attempts, neg, httpScript(host, path), path)
	cmd := opsDockerCmd(f.e, "exec", c, "sh", "-c", script)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &poller{cmd: cmd, started: make(chan struct{}), result: make(chan pollResult, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		res := pollResult{line: "exec ended without a result"}
		for sc.Scan() {
			line := sc.Text()
			if line == "START" {
				close(p.started)
				continue
			}
			if strings.HasPrefix(line, "FLIPPED") || strings.HasPrefix(line, "TIMEOUT") {
				res = pollResult{at: time.Now(), line: line}
				res.attempts, _ = strconv.Atoi(strings.TrimSpace(strings.Fields(line + " 0")[1]))
				break
			}
		}
		_ = cmd.Wait()
		p.result <- res
	}()
	select {
	case <-p.started:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("poller did not start in 15 s")
	}
	return p
}

func (p *poller) wait(t *testing.T, timeout time.Duration) pollResult {
	t.Helper()
	select {
	case r := <-p.result:
		return r
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		t.Fatalf("poller did not finish in %v", timeout)
		return pollResult{}
	}
}

// pluginPIDs returns the PIDs of processes whose executable ends in suffix
// and that descend from a process of this environment (the containerd shim
// whose command line names the Env directory), so nothing outside this
// environment ever matches.
func (f *opsFixture) pluginPIDs(suffix string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", d.Name(), "exe"))
		if err != nil {
			continue
		}
		if strings.HasSuffix(exe, suffix) && f.descendsFromEnv(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (f *opsFixture) descendsFromEnv(pid int) bool {
	for i := 0; i < 6 && pid > 1; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		// pid (comm) state ppid ...
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) < 2 {
			return false
		}
		pid, _ = strconv.Atoi(fields[1])
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), f.e.Dir()) {
			return true
		}
	}
	return false
}

// killPlugin kills the plugin process with SIGKILL and waits until docker
// restarted it and its admin API answers. Authz must be off.
func (f *opsFixture) killPlugin(t *testing.T) time.Duration {
	t.Helper()
	pids := f.pluginPIDs("/bin/clawker-fw-plugin")
	require.Len(t, pids, 1, "one plugin process")
	start := time.Now()
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	deadline := start.Add(60 * time.Second)
	for {
		now := f.pluginPIDs("/bin/clawker-fw-plugin")
		if len(now) == 1 && now[0] != pids[0] {
			if _, _, err := f.cfw("status"); err == nil {
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "plugin not restarted by docker within 60 s")
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("plugin pid %d killed (SIGKILL); restarted by docker, admin API up after %v", pids[0], took.Round(time.Millisecond))
	return took
}

// setAuthz switches the authz plugin on or off in daemon.json (keeping the
// other keys), reloads dockerd and waits until the change is in effect.
func (f *opsFixture) setAuthz(t *testing.T, on bool) {
	t.Helper()
	e := f.e
	cfg := map[string]any{}
	if b, err := os.ReadFile(filepath.Join(e.Dir(), "daemon.json")); err == nil && len(b) > 0 {
		require.NoError(t, json.Unmarshal(b, &cfg))
	}
	_, had := cfg["authorization-plugins"]
	delete(cfg, "authorization-plugins")
	if on {
		cfg["authorization-plugins"] = []string{harness.PluginName}
	} else if !had {
		return
	}
	require.NoError(t, e.WriteDaemonConfig(cfg))
	require.NoError(t, e.ReloadDockerd())
	// A bad label on a --network none create is the cheapest probe: denied
	// (nothing created) with authz on, created without.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, errOut, err := e.Docker("create", "--network", "none", "--label", "clawker.allow=exa..mple", f.img, "true")
		if err == nil {
			_, _, _ = e.Docker("rm", "-f", strings.TrimSpace(out))
		}
		denied := err != nil && strings.Contains(errOut, "clawker-fw")
		if denied == on {
			return
		}
		require.True(t, time.Now().Before(deadline), "authz=%v not in effect after reload: %v %s", on, err, errOut)
		time.Sleep(200 * time.Millisecond)
	}
}

func (f *opsFixture) containerCount(t *testing.T) int {
	t.Helper()
	return len(strings.Fields(f.e.MustDocker(t, "ps", "-aq")))
}

// waitIdentified waits until the admin status lists container name as an
// enrolled endpoint (the authz checks read the same snapshot).
func (f *opsFixture) waitIdentified(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var st string
	for time.Now().Before(deadline) {
		st, _, _ = f.cfw("status")
		for _, l := range strings.Split(st, "\n") {
			if strings.Contains(l, " "+name+":") && strings.Contains(l, "enrolled") && !strings.Contains(l, "not enrolled") {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("container %s not enrolled in 15 s; status:\n%s", name, st)
}

// 1. Runtime rules apply within a second, keep other connections open, and
// survive plugin restarts.
func TestOpsRuntimeRules(t *testing.T) {
	f := opsSetup(t)
	netID := f.network(t, "cfw-ops-rt", "10.231.1.0/24",
		"clawker.allow=http://"+harness.AllowedHost+",tcp://"+harness.TCPHost+":5432")
	// A long-lived TCP stream through the proxy in another container on the
	// same network: a line every 100 ms, echoed back into /tmp/echo.log.
	f.run(t, "cfw-ops-stream", "cfw-ops-rt", nil, "sh", "-c",
		"i=0; while true; do echo tick-$i; i=$((i+1)); usleep 100000; done | nc "+harness.TCPHost+" 5432 > /tmp/echo.log")
	f.run(t, "cfw-ops-rt-c", "cfw-ops-rt", nil, "sleep", "3600")
	f.waitIdentified(t, "cfw-ops-rt-c")

	lastTick := func() (int, int) {
		out, _, _ := f.e.Docker("exec", "cfw-ops-stream", "sh", "-c", "tail -n 1 /tmp/echo.log; echo; pidof nc")
		m := regexp.MustCompile(`tick-(\d+)\s+(\d+)`).FindStringSubmatch(out)
		if m == nil {
			return -1, -1
		}
		n, _ := strconv.Atoi(m[1])
		pid, _ := strconv.Atoi(m[2])
		return n, pid
	}
	var tick0, ncPID int
	require.Eventually(t, func() bool { tick0, ncPID = lastTick(); return tick0 > 0 }, 15*time.Second, 100*time.Millisecond,
		"the tcp stream echoes")
	t.Logf("stream up: tick %d, nc pid %d", tick0, ncPID)

	// Before: alt is not allowed.
	ok, out := f.reach("cfw-ops-rt-c", harness.AltHost, "/rt")
	require.False(t, ok, "alt reachable before any rule: %s", out)
	ok, out = f.reach("cfw-ops-rt-c", harness.AllowedHost, "/rt")
	require.True(t, ok, "allowed host reachable: %s", out)

	rule := "http://" + harness.AltHost
	t.Run("add applies within 1s", func(t *testing.T) {
		p := f.startPoller(t, "cfw-ops-rt-c", harness.AltHost, "/rt", true, 250)
		start := time.Now()
		f.mustCFW(t, "rules", "add", netID[:12], rule)
		ack := time.Now()
		r := p.wait(t, 20*time.Second)
		require.True(t, strings.HasPrefix(r.line, "FLIPPED"), "alt not reachable after rules add: %s", r.line)
		t.Logf("rules add: CLI took %v; reachable %v after the ack (%v after the command started, poller attempt %d)",
			ack.Sub(start).Round(time.Millisecond), r.at.Sub(ack).Round(time.Millisecond), r.at.Sub(start).Round(time.Millisecond), r.attempts)
		require.Less(t, r.at.Sub(ack), time.Second, "rule applied within a second of the ack")
		require.Contains(t, f.mustCFW(t, "rules", "ls", netID[:12]), harness.AltHost)
	})

	t.Run("rm denies again within 1s", func(t *testing.T) {
		p := f.startPoller(t, "cfw-ops-rt-c", harness.AltHost, "/rt", false, 250)
		start := time.Now()
		f.mustCFW(t, "rules", "rm", netID[:12], rule)
		ack := time.Now()
		r := p.wait(t, 20*time.Second)
		require.True(t, strings.HasPrefix(r.line, "FLIPPED"), "alt still reachable after rules rm: %s", r.line)
		t.Logf("rules rm: CLI took %v; denied %v after the ack", ack.Sub(start).Round(time.Millisecond), r.at.Sub(ack).Round(time.Millisecond))
		require.Less(t, r.at.Sub(ack), time.Second)
		require.NotContains(t, f.mustCFW(t, "rules", "ls", netID[:12]), harness.AltHost)
	})

	t.Run("open stream survived both changes", func(t *testing.T) {
		// The stream must keep echoing: same nc process, new ticks.
		var tick1, pid1 int
		require.Eventually(t, func() bool { tick1, pid1 = lastTick(); return tick1 > tick0+5 }, 10*time.Second, 100*time.Millisecond,
			"stream still echoing after the rule changes (tick %d -> %d)", tick0, tick1)
		require.Equal(t, ncPID, pid1, "same nc process: the connection was not re-made")
		require.Equal(t, "true", f.e.MustDocker(t, "inspect", "-f", "{{.State.Running}}", "cfw-ops-stream"))
		t.Logf("stream: tick %d -> %d across the changes, nc pid %d unchanged", tick0, tick1, pid1)
	})

	t.Run("add survives plugin restart", func(t *testing.T) {
		f.mustCFW(t, "rules", "add", netID[:12], rule)
		f.pollReach(t, "cfw-ops-rt-c", harness.AltHost, "/rt", true, 5*time.Second)
		f.killPlugin(t)
		require.Contains(t, f.mustCFW(t, "rules", "ls", netID[:12]), harness.AltHost)
		took := f.pollReach(t, "cfw-ops-rt-c", harness.AltHost, "/rt", true, 15*time.Second)
		t.Logf("alt reachable %v after the restarted plugin answered", took.Round(time.Millisecond))
	})

	t.Run("rm survives plugin restart", func(t *testing.T) {
		f.mustCFW(t, "rules", "rm", netID[:12], rule)
		f.pollReach(t, "cfw-ops-rt-c", harness.AltHost, "/rt", false, 5*time.Second)
		f.killPlugin(t)
		require.NotContains(t, f.mustCFW(t, "rules", "ls", netID[:12]), harness.AltHost)
		for i := 0; i < 3; i++ {
			ok, out := f.reach("cfw-ops-rt-c", harness.AltHost, "/rt")
			require.False(t, ok, "alt reachable after rm + restart: %s", out)
		}
		// The network rules are back too.
		f.pollReach(t, "cfw-ops-rt-c", harness.AllowedHost, "/rt", true, 15*time.Second)
	})

	t.Run("bad rule is rejected and changes nothing", func(t *testing.T) {
		before := f.mustCFW(t, "rules", "ls", netID[:12])
		_, errOut, err := f.cfw("rules", "add", netID[:12], "exa..mple")
		require.Error(t, err)
		require.Contains(t, errOut, "exa..mple")
		require.Contains(t, errOut, "what to do")
		require.Equal(t, before, f.mustCFW(t, "rules", "ls", netID[:12]))
	})
}
