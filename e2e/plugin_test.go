package e2e

// Acceptance tests of the Docker plugin (issue "The Docker plugin"): the real
// plugin from build/plugin in the harness's dockerd, real containers, the
// fake internet. The tests share the package's default environment (env in
// main_test.go); the plugin is installed into it once (pluginEnv).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/stretchr/testify/require"
)

// Driver is the network driver name of the installed plugin.
const driver = harness.PluginName

// Fake-internet addresses used below (see harness.DefaultHosts).
const (
	allowedIP = "10.220.0.10"
	deniedIP  = "10.220.0.11"
	altIP     = "10.220.0.14"
)

// pluginFixture is an Env with the plugin installed and both images imported.
type pluginFixture struct {
	e       *harness.Env
	busybox string
	debian  string
	cli     string // host admin CLI (build/bin/clawker-fw)
}

var (
	pluginMu    sync.Mutex
	installs    int // plugin installs so far (only the first is timed)
	timingsMu   sync.Mutex
	timingLines []string
)

// repoRoot is the module root (the tests run in e2e/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	return root
}

// pluginEnv returns the package's shared environment (dockerd + fake
// internet, see env in main_test.go) with the plugin installed for t. At the
// end of t it removes the containers, the clawker-fw networks, the plugin and
// what the plugin leaves on the host by design (pins, nft tables), so every
// test starts from a fresh plugin and the machine is clean whichever subset
// of tests runs (TestMain is not ours to extend). An install costs ~4.5 s.
func pluginEnv(t *testing.T) *pluginFixture {
	t.Helper()
	e := env(t)
	pluginMu.Lock()
	defer pluginMu.Unlock()
	f := installPlugin(t, e)
	t.Cleanup(func() { removePluginAndClean(t, e) })
	return f
}

// installPlugin imports the images and installs the plugin from a private
// copy of build/plugin (a concurrent `make plugin` replaces that directory).
func installPlugin(t *testing.T, e *harness.Env) *pluginFixture {
	t.Helper()
	root := repoRoot(t)
	build := filepath.Join(root, "build", "plugin")
	if _, err := os.Stat(filepath.Join(build, "rootfs", "bin", "clawker-fw-plugin")); err != nil {
		t.Fatalf("plugin not built (run `make plugin` in %s): %v", root, err)
	}
	cli := filepath.Join(root, "build", "bin", "clawker-fw")
	if _, err := os.Stat(cli); err != nil {
		t.Fatalf("admin CLI not built (run `make build`): %v", err)
	}
	copyDir, err := os.MkdirTemp("", "cfw-e2e-plugin-build-")
	require.NoError(t, err)
	defer os.RemoveAll(copyDir)
	out, err := exec.Command("cp", "-a", build+"/.", copyDir).CombinedOutput()
	require.NoError(t, err, "copy plugin build: %s", out)
	cliCopy := filepath.Join(e.Dir(), "clawker-fw")
	out, err = exec.Command("cp", cli, cliCopy).CombinedOutput()
	require.NoError(t, err, "copy cli: %s", out)

	bb, err := e.ImportBusybox()
	require.NoError(t, err)
	deb, err := e.ImportDebian()
	require.NoError(t, err)

	// The BPF pin directory and the nft tables are machine-wide: a plugin
	// of another dockerd (a demo, a developer's install) would share them.
	// One that still serves (it holds the transparent listener) would make
	// this run meaningless and be broken by it.
	if _, others := processesByArgv0(pluginArgv0, e); len(others) > 0 {
		ss, _ := exec.Command("ss", "-Hltnp", "sport = :15001").Output()
		for _, pid := range others {
			if strings.Contains(string(ss), fmt.Sprintf("pid=%d,", pid)) {
				t.Fatalf("another clawker-fw plugin serves on this machine (pid %d, not this Env's): it shares /sys/fs/bpf/clawker-fw, the nft tables and the listener ports; stop it first", pid)
			}
		}
		t.Logf("WARNING: clawker-fw plugin processes of another dockerd run (pids %v) without listeners: orphans? ignoring them", others)
	}
	// Start from a fresh plugin: drop one left installed (with its networks,
	// which must go while it still runs), and the pins and nft tables that
	// outlive a removed plugin by design.
	if out, _, _ := e.Docker("plugin", "ls", "--format", "{{.Name}}"); strings.Contains(out, "clawker-fw") {
		removePluginAndClean(t, e)
	} else if err := harness.CleanPluginHostState(); err != nil {
		t.Errorf("clean plugin host state: %v", err)
	}
	start := time.Now()
	require.NoError(t, e.InstallPlugin(copyDir))
	if installs++; installs == 1 {
		recordTiming(t, "plugin_install", time.Since(start))
	}
	require.Equal(t, "true", e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", driver))
	return &pluginFixture{e: e, busybox: bb, debian: deb, cli: cliCopy}
}

// removePluginAndClean uninstalls the plugin and what it leaves behind.
func removePluginAndClean(t *testing.T, e *harness.Env) {
	t.Helper()
	if err := e.UninstallPlugin(); err != nil {
		t.Errorf("uninstall plugin: %v", err)
	}
}

// recordTiming logs a greppable TIMING line and keeps it for the results file.
func recordTiming(t *testing.T, name string, d time.Duration) {
	t.Helper()
	line := fmt.Sprintf("TIMING name=%s ms=%.1f", name, float64(d.Microseconds())/1000)
	t.Log(line)
	timingsMu.Lock()
	timingLines = append(timingLines, line)
	timingsMu.Unlock()
}

// netSpec is a clawker-fw network for one test.
type netSpec struct {
	ID, Name, Gateway, Subnet string
}

// createNet creates a clawker-fw network 10.231.<octet>.0/24 with -o opts
// and removes it (and its containers) at cleanup.
func (f *pluginFixture) createNet(t *testing.T, name string, octet int, opts ...string) netSpec {
	t.Helper()
	n := netSpec{Name: name, Subnet: fmt.Sprintf("10.231.%d.0/24", octet), Gateway: fmt.Sprintf("10.231.%d.1", octet)}
	// A bridge left by an earlier run with the same subnet would take the
	// replies to this network's containers (two connected routes).
	if out, _ := exec.Command("ip", "-o", "route", "show", n.Subnet).Output(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("the host already routes %s (leftover of an earlier run?): %s", n.Subnet, out)
	}
	args := []string{"network", "create", "-d", driver, "--subnet", n.Subnet, "--gateway", n.Gateway}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	args = append(args, name)
	n.ID = f.e.MustDocker(t, args...)
	t.Cleanup(func() { f.removeNet(name) })
	return n
}

// removeNet removes a network and every container attached to it.
func (f *pluginFixture) removeNet(name string) {
	out, _, err := f.e.Docker("ps", "-aq", "--filter", "network="+name)
	if err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = f.e.Docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...)
	}
	_, _, _ = f.e.Docker("network", "rm", name)
}

// run is `docker run --rm` with args; it returns combined output and error.
func (f *pluginFixture) run(args ...string) (string, error) {
	stdout, stderr, err := f.e.Docker(append([]string{"run", "--rm"}, args...)...)
	return stdout + stderr, err
}

// detached starts `docker run -d` and removes the container at cleanup.
func (f *pluginFixture) detached(t *testing.T, args ...string) string {
	t.Helper()
	id := f.e.MustDocker(t, append([]string{"run", "-d"}, args...)...)
	t.Cleanup(func() { _, _, _ = f.e.Docker("rm", "-f", id) })
	return id
}

// exec runs a command in a running container; combined output.
func (f *pluginFixture) exec(id string, cmd ...string) (string, error) {
	stdout, stderr, err := f.e.Docker(append([]string{"exec", id}, cmd...)...)
	return stdout + stderr, err
}

// admin runs the host admin CLI against the plugin's admin socket.
func (f *pluginFixture) admin(args ...string) (string, error) {
	full := append([]string{"--socket", filepath.Join(f.e.StateDir(), "admin.sock")}, args...)
	out, err := exec.Command(f.cli, full...).CombinedOutput()
	return string(out), err
}

// containerIP is the container's address on network.
func (f *pluginFixture) containerIP(t *testing.T, id, network string) string {
	t.Helper()
	return f.e.MustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").IPAddress}}", id)
}

// dockerdLog returns dockerd's log (which carries the plugin's log lines).
func (f *pluginFixture) dockerdLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.e.DockerdLog())
	require.NoError(t, err)
	return string(b)
}

// pluginLogSince returns the plugin lines of dockerd's log after offset.
func (f *pluginFixture) logTail(t *testing.T, offset int) string {
	t.Helper()
	l := f.dockerdLog(t)
	if offset > len(l) {
		return l
	}
	return l[offset:]
}

// resetLeaks clears the fakenet log so requireNoLeaks checks only this test.
func (f *pluginFixture) resetLeaks(t *testing.T) {
	t.Helper()
	require.NoError(t, f.e.ResetFakenetLog())
}

// requireNoLeaks fails when anything reached the fake internet from an
// address other than the host side (the plugin's upstream flows).
func (f *pluginFixture) requireNoLeaks(t *testing.T) {
	t.Helper()
	leaks, err := f.e.Leaks()
	require.NoError(t, err)
	require.Empty(t, leaks, "fake internet saw traffic not from %s", harness.HostIP)
}

// pidOf returns the PID of the process of this Env whose argv[0] is
// exactly argv0 (the plugin's processes run in the host PID namespace), or
// 0. A process belongs to the Env when an ancestor's command line mentions
// the Env directory (the containerd shim of the test dockerd does).
func pidOf(t *testing.T, e *harness.Env, argv0 string) int {
	t.Helper()
	mine, _ := processesByArgv0(argv0, e)
	require.LessOrEqual(t, len(mine), 1, "several %s processes: %v", argv0, mine)
	if len(mine) == 0 {
		return 0
	}
	return mine[0]
}

// processesByArgv0 splits the processes whose argv[0] is argv0 into those
// of the Env (Env.Owns) and the others. A child of such a process that
// shows the same command line is left out: it is a fork that has not yet
// exec'd what it was forked to run (the plugin starting its DNS sidecar;
// caught in 3 of 36 plugin restarts of TestPluginRunRightAfterRestart, 0.4 s
// after the plugin started).
func processesByArgv0(argv0 string, e *harness.Env) (mine, others []int) {
	out, _ := exec.Command("pgrep", "-f", "^"+regexp.QuoteMeta(argv0)+"( |$)").Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if slices.Contains(pids, harness.ParentOf(pid)) {
			continue
		}
		if e.Owns(pid) {
			mine = append(mine, pid)
		} else {
			others = append(others, pid)
		}
	}
	return mine, others
}

const (
	pluginArgv0  = "/bin/clawker-fw-plugin"
	corednsArgv0 = "/bin/clawker-coredns"
)

// waitPluginRestart waits until a plugin process other than old runs and
// its admin API answers status.
func (f *pluginFixture) waitPluginRestart(t *testing.T, old int) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		pid = pidOf(t, f.e, pluginArgv0)
		if pid == 0 || pid == old {
			return false
		}
		_, err := f.admin("status")
		return err == nil
	}, 90*time.Second, 200*time.Millisecond, "plugin did not come back after pid %d", old)
	return pid
}

// httpGet is a busybox shell snippet fetching http://host/path with nc.
// The request is written by nc -e's program, which then copies the answer
// to stderr: `printf ... | nc` half-closes the connection at the end of
// stdin, and the builtin proxy (Go's http.Server cancels the request context
// when the client half-closes) then answers an empty 200 (see the report).
func httpGet(host, path string) string {
	return fmt.Sprintf(`nc -w 5 %s 80 -e sh -c "printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n'; cat >&2" 2>&1`, host, path, host)
}

func TestPluginInstallNetworkAndRun(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	start := time.Now()
	n := f.createNet(t, "cfw-pt-basic", 100,
		"clawker.allow=allowed.example.test,http://allowed.example.test",
		"clawker.deny=denied.example.test")
	recordTiming(t, "network_create_plugin", time.Since(start))
	require.Equal(t, driver, f.e.MustDocker(t, "network", "inspect", "-f", "{{.Driver}}", n.ID))

	// Evidence for the report, not asserted: a client that half-closes after
	// its request (`printf ... | nc`) gets an empty 200 from the builtin proxy.
	out, _ := f.run("--network", n.Name, f.busybox, "sh", "-c",
		`printf 'GET /half-close HTTP/1.0\r\nHost: allowed.example.test\r\n\r\n' | nc -w 5 allowed.example.test 80`)
	t.Logf("HALF-CLOSE printf|nc through the proxy:\n%s", out)

	// busybox: a network rule (http) and a label rule (tcp echo).
	out, err := f.run("--network", n.Name, "--label", "clawker.allow=tcp://tcp.example.test:5432", f.busybox, "sh", "-c",
		httpGet(harness.AllowedHost, "/basic-busybox")+"; echo ping | nc -w 5 tcp.example.test 5432")
	require.NoError(t, err, out)
	require.Contains(t, out, "fakenet host=allowed.example.test path=/basic-busybox")
	require.Contains(t, out, "ping")

	// Debian: network rule (https passthrough, test CA in the system store)
	// and a label rule for alt:8443.
	out, err = f.run("--network", n.Name, "--label", "clawker.allow=https://alt.example.test:8443", f.debian, "sh", "-c",
		"curl -sS --max-time 10 https://allowed.example.test/basic-debian && curl -sS --max-time 10 https://alt.example.test:8443/basic-alt")
	require.NoError(t, err, out)
	require.Contains(t, out, "fakenet host=allowed.example.test path=/basic-debian")
	require.Contains(t, out, "fakenet host=alt.example.test path=/basic-alt")

	// The label rule is that container's only: a second one gets NXDOMAIN.
	out, _ = f.run("--network", n.Name, f.busybox, "nslookup", harness.AltHost)
	require.Contains(t, out, "NXDOMAIN")
	f.requireNoLeaks(t)
}

// Invariant 2: the first connection works, in many fresh containers whose
// only permission comes from their own label.
func TestPluginFirstConnectionFreshContainers(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-first", 101) // no network rules at all
	const runs = 50
	label := "clawker.allow=allowed.example.test,http://allowed.example.test"

	type failure struct {
		i   int
		out string
	}
	check := func(name string, args func(i int) []string, ok func(out string) bool) {
		var fails []failure
		var durs []time.Duration
		for i := range runs {
			start := time.Now()
			out, err := f.run(args(i)...)
			durs = append(durs, time.Since(start))
			if err != nil || !ok(out) {
				fails = append(fails, failure{i, out})
			}
		}
		slices.Sort(durs)
		t.Logf("FIRST-TRY %s: %d/%d succeeded on the first try (container run p50 %v, max %v)",
			name, runs-len(fails), runs, durs[len(durs)/2].Round(time.Millisecond), durs[len(durs)-1].Round(time.Millisecond))
		recordTiming(t, "first_try_"+name+"_run_p50", durs[len(durs)/2])
		if len(fails) > 0 {
			t.Logf("plugin log tail:\n%s", tailLines(f.dockerdLog(t), 60))
		}
		for _, fl := range fails {
			t.Errorf("%s run %d failed on the first try: %s", name, fl.i, fl.out)
		}
	}
	ca := f.e.CAFile()
	check("debian-https+http", func(i int) []string {
		return []string{"--network", n.Name, "--label", label, "-v", ca + ":/ca.crt:ro", f.debian, "sh", "-c",
			fmt.Sprintf("curl -sS --max-time 10 --cacert /ca.crt https://allowed.example.test/first-%d && curl -sS --max-time 10 http://allowed.example.test/first-http-%d", i, i)}
	}, func(out string) bool {
		return strings.Contains(out, "path=/first-") && strings.Contains(out, "proto=HTTP/") &&
			strings.Count(out, "fakenet host=allowed.example.test") == 2
	})
	check("busybox-http", func(i int) []string {
		return []string{"--network", n.Name, "--label", label, f.busybox, "sh", "-c", httpGet(harness.AllowedHost, fmt.Sprintf("/bb-%d", i))}
	}, func(out string) bool { return strings.Contains(out, "fakenet host=allowed.example.test path=/bb-") })
	f.requireNoLeaks(t)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Denied names are NXDOMAIN, denied IP literals EPERM, and a denied SNI on
// an allowed name's address does not get through.
func TestPluginDenials(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-deny", 102, "clawker.allow=allowed.example.test,http://allowed.example.test")

	out, _ := f.run("--network", n.Name, f.busybox, "nslookup", harness.DeniedHost)
	require.Contains(t, out, "NXDOMAIN")
	out, _ = f.run("--network", n.Name, f.debian, "dig", "+time=3", "+tries=1", harness.DeniedHost)
	require.Contains(t, out, "status: NXDOMAIN")

	// EPERM is the answer of an identified container's hooks. Until the
	// plugin knows which container joined (its labels may allow the
	// address), a connection is redirected to the proxy, which waits for the
	// identity and then accepts and closes a denied one: no EPERM, nothing
	// leaks (requireNoLeaks below). On Docker 20.10 the hooks come when the
	// veth moves in, on the current engine at Join, but on both the identity
	// comes from the container list after Join, which under load can come
	// after the container's first instruction (seen in CI on both engines).
	// So a fresh container is only checked for leaks, and every port must be
	// refused with EPERM once a long-lived container is identified.
	out, _ = f.run("--network", n.Name, f.busybox, "sh", "-c", "nc -w 3 "+deniedIP+" 443 </dev/null; echo rc=$?")
	t.Logf("fresh container, IP literal at once: %s", strings.TrimSpace(out))
	c := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	ncDenied := func(port string) (string, error) {
		return f.exec(c, "sh", "-c", "nc -w 3 "+deniedIP+" "+port+" </dev/null")
	}
	require.Eventually(t, func() bool {
		out, _ := ncDenied("80")
		return strings.Contains(out, "Operation not permitted")
	}, 15*time.Second, 200*time.Millisecond, "IP literal never refused with EPERM: container not identified?")
	for _, port := range []string{"80", "443", "22", "5432"} {
		out, err := ncDenied(port)
		require.Error(t, err, out)
		require.Contains(t, out, "Operation not permitted", "port %s", port)
	}
	py := f.detached(t, "--network", n.Name, f.debian, "sleep", "300")
	pyConnect := "import socket\ntry:\n socket.create_connection(('" + deniedIP + "', 443), timeout=3); print('CONNECTED')\nexcept OSError as e: print('errno', e.errno, e.strerror)"
	require.Eventually(t, func() bool {
		out, _ := f.exec(py, "python3", "-c", pyConnect)
		return strings.Contains(out, "errno 1 Operation not permitted")
	}, 15*time.Second, 200*time.Millisecond, "python's connect to an IP literal never refused with EPERM")
	out, _ = f.exec(py, "python3", "-c", pyConnect)
	require.Contains(t, out, "errno 1 Operation not permitted")

	// Denied SNI towards an allowed name's address.
	out, err := f.run("--network", n.Name, "-v", f.e.CAFile()+":/ca.crt:ro", f.debian, "curl", "-sS", "--max-time", "10", "--cacert", "/ca.crt",
		"--resolve", harness.DeniedHost+":443:"+allowedIP, "https://"+harness.DeniedHost+"/sni-smuggle")
	require.Error(t, err, out)
	require.NotContains(t, out, "fakenet host=")
	log, lerr := f.e.FakenetLog()
	require.NoError(t, lerr)
	for _, en := range log {
		require.NotEqual(t, harness.DeniedHost, en.SNI, "denied SNI reached the fake internet: %+v", en)
		require.NotEqual(t, "/sni-smuggle", en.Path, "smuggled request reached the fake internet: %+v", en)
	}
	// The allowed name still works from the same network (positive control).
	out, err = f.run("--network", n.Name, "-v", f.e.CAFile()+":/ca.crt:ro", f.debian, "curl", "-sS", "--max-time", "10", "--cacert", "/ca.crt",
		"https://"+harness.AllowedHost+"/control")
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/control")
	f.requireNoLeaks(t)
}

// Path rules under inspection: the container fetches the plugin's CA from
// its gateway and trusts only it.
func TestPluginPathRulesInspection(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-path", 103,
		`clawker.rules=[{"dst":"path.example.test","paths":[{"path":"/ok/","methods":["GET"]}]}]`)
	script := fmt.Sprintf(`set -e
curl -sS --max-time 5 -o /tmp/pca.crt http://%s/ca.crt
grep -c 'BEGIN CERTIFICATE' /tmp/pca.crt
for v in --http1.1 --http2; do
  echo "== $v ok"; curl -sS --max-time 10 $v --cacert /tmp/pca.crt -w ' code=%%{http_code} ver=%%{http_version}\n' https://path.example.test/ok/curl
  echo "== $v denied"; curl -sS --max-time 10 $v --cacert /tmp/pca.crt -o /dev/null -w 'code=%%{http_code} ver=%%{http_version}\n' https://path.example.test/nope
  echo "== $v post"; curl -sS --max-time 10 $v --cacert /tmp/pca.crt -o /dev/null -w 'code=%%{http_code}\n' -X POST https://path.example.test/ok/post
done
echo "== node"
NODE_EXTRA_CA_CERTS=/tmp/pca.crt node -e '
const https = require("https");
for (const p of ["/ok/node", "/nope/node"]) {
  https.get({host: "path.example.test", path: p}, r => {
    let b = ""; r.on("data", d => b += d);
    r.on("end", () => console.log("NODE " + p + " " + r.statusCode + " " + (r.headers["x-clawker-denied"] || "") + " " + b.trim().split("\n")[0]));
  }).on("error", e => console.log("NODE " + p + " ERR " + e.message));
}'
`, n.Gateway)
	out, err := f.run("--network", n.Name, f.debian, "bash", "-c", script)
	require.NoError(t, err, out)
	t.Logf("path rules output:\n%s", out)
	sections := outputSections(out)
	require.Contains(t, sections["--http1.1 ok"], "fakenet host=path.example.test path=/ok/curl")
	require.Contains(t, sections["--http1.1 ok"], "code=200 ver=1.1")
	require.Contains(t, sections["--http1.1 denied"], "code=403 ver=1.1")
	require.Contains(t, sections["--http1.1 post"], "code=403")
	require.Contains(t, sections["--http2 ok"], "fakenet host=path.example.test path=/ok/curl")
	require.Contains(t, sections["--http2 ok"], "code=200 ver=2")
	require.Contains(t, sections["--http2 denied"], "code=403 ver=2")
	require.Contains(t, sections["--http2 post"], "code=403")
	require.Regexp(t, `NODE /ok/node 200 +fakenet host=path.example.test path=/ok/node`, sections["node"])
	require.Regexp(t, `NODE /nope/node 403 \S`, sections["node"])

	// Denied requests never reached the fake internet.
	log, err := f.e.FakenetLog()
	require.NoError(t, err)
	for _, en := range log {
		if en.Kind == fakenet.KindHTTP {
			require.True(t, strings.HasPrefix(en.Path, "/ok/") && en.Path != "/ok/post", "request reached upstream: %+v", en)
		}
	}
	f.requireNoLeaks(t)
}

// ssh (full login with the harness's key) and a tcp rule.
func TestPluginSSHAndTCP(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-ssh", 104, "clawker.allow=ssh://ssh.example.test,tcp://tcp.example.test:5432")
	out, err := f.run("--network", n.Name, "-v", f.e.SSHKeyFile()+":/key:ro", f.debian, "ssh", "-i", "/key",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@"+harness.SSHHost, "echo clawker-ssh-ok")
	require.NoError(t, err, out)
	require.Contains(t, out, "clawker-ssh-ok")

	out, err = f.run("--network", n.Name, f.busybox, "sh", "-c", "echo tcp-echo-ok | nc -w 5 tcp.example.test 5432")
	require.NoError(t, err, out)
	require.Contains(t, out, "tcp-echo-ok")
	// Another port of the same name is not allowed.
	out, _ = f.run("--network", n.Name, f.busybox, "sh", "-c", "echo nope | nc -w 3 tcp.example.test 7000; echo rc=$?")
	require.NotContains(t, out, "nope\n")

	log, err := f.e.FakenetLog()
	require.NoError(t, err)
	_, ok := findEntry(log, func(en fakenet.Entry) bool {
		return en.Kind == fakenet.KindConn && en.Service == "ssh" && en.Src == harness.HostIP
	})
	require.True(t, ok, "ssh connection from the plugin recorded")
	_, ok = findEntry(log, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindConn && en.DstPort == 7000 })
	require.False(t, ok, "port 7000 reached")
	f.requireNoLeaks(t)
}

// Containers on the same network resolve each other's names.
func TestPluginContainerNames(t *testing.T) {
	f := pluginEnv(t)
	n := f.createNet(t, "cfw-pt-names", 105)
	a := f.detached(t, "--network", n.Name, "--name", "cfw-pt-name-a", "--network-alias", "alias-a", f.busybox, "sleep", "300")
	aIP := f.containerIP(t, a, n.Name)
	require.NotEmpty(t, aIP)
	out, err := f.run("--network", n.Name, "--name", "cfw-pt-name-b", f.busybox, "nslookup", "cfw-pt-name-a")
	require.NoError(t, err, out)
	require.Contains(t, out, aIP)
	// And the other way round, from a long-running A.
	b := f.detached(t, "--network", n.Name, "--name", "cfw-pt-name-c", f.busybox, "sleep", "300")
	bIP := f.containerIP(t, b, n.Name)
	out, err = f.exec(a, "nslookup", "cfw-pt-name-c")
	require.NoError(t, err, out)
	require.Contains(t, out, bIP)
	// Known gap (reported): --network-alias names are not answered; the
	// plugin learns names from the container list, which has no aliases.
	out, _ = f.run("--network", n.Name, f.busybox, "nslookup", "alias-a")
	t.Logf("network alias lookup (not required): %s", strings.TrimSpace(out))
}

// Per-container labels: a name allowed only for A is NXDOMAIN for B, and B
// cannot use A's destination address.
func TestPluginPerContainerLabels(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-labels", 106)
	a := f.detached(t, "--network", n.Name, "--label", "clawker.allow=http://alt.example.test", f.busybox, "sleep", "300")
	b := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")

	require.Eventually(t, func() bool {
		out, _ := f.exec(a, "sh", "-c", httpGet(harness.AltHost, "/label-a"))
		return strings.Contains(out, "fakenet host=alt.example.test path=/label-a")
	}, 10*time.Second, 200*time.Millisecond, "A reaches its label's name")
	out, _ := f.exec(b, "nslookup", harness.AltHost)
	require.Contains(t, out, "NXDOMAIN")
	out, _ = f.exec(b, "sh", "-c", "nc -w 3 "+altIP+" 80 </dev/null")
	require.Contains(t, out, "Operation not permitted")
	f.requireNoLeaks(t)
}

// Bad input: an invalid option fails the create naming it; an invalid label
// (authz off) leaves the container without egress, with a log line.
func TestPluginBadInput(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	for _, tc := range []struct {
		opt, want string
	}{
		{"clawker.allow=exa mple.test", `clawker.allow: "exa mple.test"`},
		{"clawker.bogus=1", "clawker.bogus: unknown clawker key"},
		{"clawker.allow=tcp://tcp.example.test:99999", "out of range"},
		{"color=blue", "color: unknown option"},
	} {
		_, stderr, err := f.e.Docker("network", "create", "-d", driver, "--subnet", "10.231.107.0/24", "-o", tc.opt, "cfw-pt-bad")
		if err == nil {
			_, _, _ = f.e.Docker("network", "rm", "cfw-pt-bad")
		}
		require.Error(t, err, tc.opt)
		require.Contains(t, stderr, tc.want, tc.opt)
		out, _, _ := f.e.Docker("network", "ls", "-q", "--filter", "name=cfw-pt-bad")
		require.Empty(t, strings.TrimSpace(out), "nothing created")
	}

	n := f.createNet(t, "cfw-pt-badlabel", 108, "clawker.allow=allowed.example.test,http://allowed.example.test")
	off := len(f.dockerdLog(t))
	id := f.detached(t, "--network", n.Name, "--name", "cfw-pt-badlabel-c", "--label", "clawker.allow=bad host.test", f.busybox, "sleep", "300")
	require.Eventually(t, func() bool {
		return strings.Contains(f.logTail(t, off), "invalid clawker label")
	}, 15*time.Second, 200*time.Millisecond, "log line about the invalid label")
	var line string
	for _, l := range strings.Split(f.logTail(t, off), "\n") {
		if strings.Contains(l, "invalid clawker label") {
			line = l
		}
	}
	require.Contains(t, line, "clawker.allow", "log line names the label: %s", line)
	// The denial of its connection names the label too.
	defer func() {
		var mine []string
		require.Eventually(t, func() bool {
			d, _ := f.admin("denials")
			mine = mine[:0]
			for _, l := range strings.Split(d, "\n") {
				if strings.Contains(l, "cfw-pt-badlabel-c") {
					mine = append(mine, l)
				}
			}
			return strings.Contains(strings.Join(mine, "\n"), `clawker.allow: "bad host.test"`)
		}, 10*time.Second, 200*time.Millisecond, "denial names the label: %v", mine)
		t.Logf("DENIALS of the invalid-label container:\n%s", strings.Join(mine, "\n"))
	}()
	out, _ := f.exec(id, "nslookup", harness.AllowedHost)
	require.Contains(t, out, "NXDOMAIN")
	out, _ = f.exec(id, "sh", "-c", "nc -w 3 "+allowedIP+" 80 </dev/null")
	require.Contains(t, out, "Operation not permitted")
	// A valid sibling on the same network has the network's rules.
	out, err := f.run("--network", n.Name, f.busybox, "sh", "-c", httpGet(harness.AllowedHost, "/sibling"))
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/sibling")
	f.requireNoLeaks(t)
}

// Runtime rules through the admin CLI: live within a second, no data-plane
// restart, durable across a plugin restart.
func TestPluginRuntimeRules(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-runtime", 109)
	out, err := f.admin("rules", "ls", n.ID[:12])
	require.NoError(t, err, out)
	require.NotContains(t, out, harness.AltHost)

	id := f.detached(t, "--network", n.Name, "-v", f.e.CAFile()+":/ca.crt:ro", f.debian, "bash", "-c",
		`echo waiting; for i in $(seq 1 1000); do if curl -s -o /dev/null --max-time 2 --cacert /ca.crt https://alt.example.test/runtime; then echo "REACHED $(date +%s.%N)"; exit 0; fi; sleep 0.02; done; echo GAVEUP`)
	// Wait until the loop runs and is failing.
	require.Eventually(t, func() bool {
		o, _, _ := f.e.Docker("logs", id)
		return strings.Contains(o, "waiting")
	}, 20*time.Second, 100*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // several failed attempts
	logs, _, _ := f.e.Docker("logs", id)
	require.NotContains(t, logs, "REACHED", "alt reachable before the rule")

	pluginPID, corednsPID := pidOf(t, f.e, pluginArgv0), pidOf(t, f.e, corednsArgv0)
	require.NotZero(t, pluginPID)
	require.NotZero(t, corednsPID)
	t0 := time.Now()
	out, err = f.admin("rules", "add", n.ID[:12], harness.AltHost)
	t1 := time.Now()
	require.NoError(t, err, out)
	recordTiming(t, "runtime_rule_add_cli", t1.Sub(t0))
	var reached time.Time
	require.Eventually(t, func() bool {
		o, _, _ := f.e.Docker("logs", id)
		for _, l := range strings.Split(o, "\n") {
			if v, ok := strings.CutPrefix(l, "REACHED "); ok {
				sec, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err == nil {
					reached = time.Unix(0, int64(sec*1e9))
					return true
				}
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "alt never became reachable")
	prop := reached.Sub(t0)
	t.Logf("RULE-PROPAGATION from CLI start %v, after CLI returned %v", prop.Round(time.Millisecond), reached.Sub(t1).Round(time.Millisecond))
	recordTiming(t, "runtime_rule_propagation", prop)
	require.Less(t, prop, time.Second+200*time.Millisecond, "rule applied within a second (+ loop granularity)")
	require.Equal(t, pluginPID, pidOf(t, f.e, pluginArgv0), "plugin process unchanged")
	require.Equal(t, corednsPID, pidOf(t, f.e, corednsArgv0), "CoreDNS sidecar unchanged")
	out, err = f.admin("rules", "ls", n.ID[:12])
	require.NoError(t, err, out)
	require.Contains(t, out, harness.AltHost)

	// Durable: after kill -9 of the plugin the rule still applies.
	require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pluginPID)).Run())
	f.waitPluginRestart(t, pluginPID)
	out, err = f.admin("rules", "ls", n.ID[:12])
	require.NoError(t, err, out)
	require.Contains(t, out, harness.AltHost)
	out, err = f.run("--network", n.Name, "-v", f.e.CAFile()+":/ca.crt:ro", f.debian, "curl", "-sS", "--max-time", "10", "--cacert", "/ca.crt", "https://alt.example.test/after-restart")
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/after-restart")

	// Removing it takes it away again.
	out, err = f.admin("rules", "rm", n.ID[:12], harness.AltHost)
	require.NoError(t, err, out)
	require.Eventually(t, func() bool {
		o, _ := f.run("--network", n.Name, f.busybox, "nslookup", harness.AltHost)
		return strings.Contains(o, "NXDOMAIN")
	}, 10*time.Second, 200*time.Millisecond)
	f.requireNoLeaks(t)
}

// A container started right after the plugin restarts joins: the current
// engine registers a new driver object for the restarted plugin and forgets
// the endpoints that joined through the old one ("remote network driver:
// endpoint ... not found" in ProgramExternalConnectivity, the plugin never
// asked); the plugin holds CreateEndpoint and Join until that registration
// (plugin/engine.go). Without the hold about one run in twelve failed here.
func TestPluginRunRightAfterRestart(t *testing.T) {
	f := pluginEnv(t)
	n := f.createNet(t, "cfw-pt-rerun", 118)
	const rounds = 12
	held := func() int {
		log, err := os.ReadFile(f.e.DockerdLog())
		require.NoError(t, err)
		return strings.Count(string(log), "held until the engine registered")
	}
	before := held()
	for i := 0; i < rounds; i++ {
		pid := pidOf(t, f.e, pluginArgv0)
		require.NotZero(t, pid)
		require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pid)).Run())
		f.waitPluginRestart(t, pid)
		stdout, stderr, err := f.e.Docker("run", "--rm", "--network", n.Name, f.busybox, "true")
		require.NoError(t, err, "round %d: %s%s", i, stdout, stderr)
	}
	t.Logf("%d driver calls of %d runs were held until the engine registered the restarted driver", held()-before, rounds)
}

// failClosedLoop is a busybox loop: allowed http by name, a denied IP
// literal, a denied name, ICMP to a denied address. Lines: A-OK n / A-FAIL n
// / D-LEAK-* n.
const failClosedLoop = `get() { nc -w 2 $1 80 -e sh -c "printf 'GET /loop HTTP/1.0\r\nHost: $2\r\n\r\n'; cat >&2" 2>&1; }
i=0; while [ $i -lt 3000 ]; do i=$((i+1));
if get allowed.example.test allowed.example.test | grep -q 'fakenet host'; then echo "A-OK $i"; else echo "A-FAIL $i"; fi
if get 10.220.0.11 denied.example.test | grep -q fakenet; then echo "D-LEAK-IP $i"; fi
if get denied.example.test denied.example.test | grep -q fakenet; then echo "D-LEAK-NAME $i"; fi
if ping -c 1 -W 1 10.220.0.11 >/dev/null 2>&1; then echo "D-LEAK-ICMP $i"; fi
sleep 0.1; done`

// Fail closed while the plugin process is dead, and recovery after docker
// restarts it; the same across a dockerd restart.
func TestPluginFailClosedRestart(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-failclosed", 110, "clawker.allow=http://allowed.example.test")
	id := f.detached(t, "--network", n.Name, f.busybox, "sh", "-c", failClosedLoop)

	lines := func() []string {
		o, _, _ := f.e.Docker("logs", id)
		return strings.Split(strings.TrimSpace(o), "\n")
	}
	// okAfter waits for an A-OK line after the first `after` lines.
	okAfter := func(after int, what string) time.Time {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			ls := lines()
			for _, l := range ls[min(after, len(ls)):] {
				if strings.HasPrefix(l, "A-OK") {
					return time.Now()
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		o, _, _ := f.e.Docker("logs", "--tail", "20", id)
		var rel []string
		for _, l := range strings.Split(f.dockerdLog(t), "\n") {
			if strings.Contains(l, "allowed.example.test") || strings.Contains(l, "10.220.0.10") || strings.Contains(l, "level=error") && !strings.Contains(l, "denied.example") && !strings.Contains(l, "10.220.0.11") {
				rel = append(rel, l)
			}
		}
		t.Fatalf("allowed traffic did not work %s\ncontainer log tail:\n%s\nplugin log (allowed name/IP):\n%s", what, o, tailLines(strings.Join(rel, "\n"), 60))
		return time.Time{}
	}
	okAfter(0, "at start")

	// 1. kill -9 of the plugin.
	pid := pidOf(t, f.e, pluginArgv0)
	require.NotZero(t, pid)
	killed := time.Now()
	require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pid)).Run())
	newPID := f.waitPluginRestart(t, pid)
	t.Logf("plugin back as pid %d after %v", newPID, time.Since(killed).Round(time.Millisecond))
	recordTiming(t, "plugin_restart_after_kill", time.Since(killed))
	mark := len(lines())
	back := okAfter(mark, "after the plugin restart")
	t.Logf("allowed traffic works again %v after the kill", back.Sub(killed).Round(time.Millisecond))
	recordTiming(t, "allowed_traffic_back_after_kill", back.Sub(killed))

	// 2. dockerd restart (live-restore keeps the container and the plugin).
	restarted := time.Now()
	require.NoError(t, f.e.RestartDockerd())
	require.Equal(t, "true", f.e.MustDocker(t, "inspect", "-f", "{{.State.Running}}", id))
	mark = len(lines())
	back = okAfter(mark, "after the dockerd restart")
	recordTiming(t, "allowed_traffic_back_after_dockerd_restart", back.Sub(restarted))

	// 3. kill -9 again after the dockerd restart (the new dockerd must
	// still restart the plugin).
	pid = pidOf(t, f.e, pluginArgv0)
	require.NotZero(t, pid)
	require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pid)).Run())
	f.waitPluginRestart(t, pid)
	okAfter(len(lines()), "after the second plugin kill")

	// 4. docker plugin disable -f: the plugin stays down as long as we
	// want; the loop keeps probing the whole time.
	f.e.MustDocker(t, "plugin", "disable", "-f", driver)
	// Whatever happens below, enable it again before the network cleanup
	// (a network removed while its driver is disabled leaves its bridge).
	t.Cleanup(func() {
		if out, _, _ := f.e.Docker("plugin", "inspect", "-f", "{{.Enabled}}", driver); strings.TrimSpace(out) == "false" {
			_, _, _ = f.e.Docker("plugin", "enable", "--timeout", "60", driver)
		}
	})
	require.Zero(t, pidOf(t, f.e, pluginArgv0), "plugin process gone after disable")
	// Skip the line of the iteration that was in flight during disable.
	downAt := len(lines()) + 1
	require.Eventually(t, func() bool { return len(lines()) >= downAt+4 }, 90*time.Second, 200*time.Millisecond,
		"the loop kept running while the plugin was disabled")
	down := lines()[downAt:]
	require.NotContains(t, strings.Join(down, "\n"), "A-OK", "nothing is proxied while the plugin is disabled")
	t.Logf("while disabled: %d probe lines, all failed closed", len(down))
	enabled := time.Now()
	f.e.MustDocker(t, "plugin", "enable", "--timeout", "60", driver)
	back = okAfter(len(lines()), "after disable -f + enable")
	recordTiming(t, "allowed_traffic_back_after_enable", back.Sub(enabled))

	all := lines()
	var oks, fails int
	for _, l := range all {
		require.False(t, strings.HasPrefix(l, "D-LEAK"), "denied destination reached: %s", l)
		switch {
		case strings.HasPrefix(l, "A-OK"):
			oks++
		case strings.HasPrefix(l, "A-FAIL"):
			fails++
		}
	}
	t.Logf("FAIL-CLOSED loop: %d iterations, allowed ok %d, allowed failed (while down) %d, denied leaks 0", oks+fails, oks, fails)
	log, err := f.e.FakenetLog()
	require.NoError(t, err)
	for _, en := range log {
		require.Equal(t, harness.HostIP, en.Src, "fake internet saw a source other than the host: %+v", en)
		require.NotEqual(t, deniedIP, en.Dst, "denied address reached: %+v", en)
	}
}

// Cleanup: removing the containers and the network leaves no link, chain,
// listener or BPF map entry behind.
func TestPluginCleanup(t *testing.T) {
	f := pluginEnv(t)
	n := f.createNet(t, "cfw-pt-cleanup", 111, "clawker.allow=http://allowed.example.test,tcp://tcp.example.test:5432")
	a := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	b := f.detached(t, "--network", n.Name, "--label", "clawker.allow=ssh://ssh.example.test", f.busybox, "sleep", "300")
	require.Eventually(t, func() bool {
		out, _ := f.exec(a, "sh", "-c", httpGet(harness.AllowedHost, "/cleanup"))
		return strings.Contains(out, "path=/cleanup")
	}, 10*time.Second, 200*time.Millisecond)
	br := "cfw-" + n.ID[:11]
	own := []string{br}
	for _, id := range []string{a, b} {
		ep := f.e.MustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+n.Name+"\").EndpointID}}", id)
		require.Len(t, ep, 64)
		own = append(own, "cfwh"+ep[:11], "cfwc"+ep[:11])
	}
	links := hostRun(t, "ip", "-o", "link")
	require.Contains(t, links, br)
	require.Contains(t, links, own[1])
	require.Contains(t, hostRun(t, "nft", "list", "table", "inet", "clawker_fw"), br)
	require.NotEqual(t, "[]", strings.TrimSpace(mapDump(t, "endpoints")))

	// Remove every container and network of the plugin.
	out, _, _ := f.e.Docker("ps", "-aq")
	if ids := strings.Fields(out); len(ids) > 0 {
		f.e.MustDocker(t, append([]string{"rm", "-f"}, ids...)...)
	}
	out, _, _ = f.e.Docker("network", "ls", "-q", "--filter", "driver="+driver)
	if ids := strings.Fields(out); len(ids) > 0 {
		f.e.MustDocker(t, append([]string{"network", "rm"}, ids...)...)
	}
	start := time.Now()
	require.Eventually(t, func() bool {
		return len(cleanupLeftovers(t, own, n.Gateway)) == 0
	}, 15*time.Second, 200*time.Millisecond, "leftovers: %v", cleanupLeftovers(t, own, n.Gateway))
	t.Logf("everything gone %v after network rm", time.Since(start).Round(time.Millisecond))
}

// cleanupLeftovers lists what remains of bridge br / gateway gw.
// own is the bridge name followed by the endpoints' veth names.
func cleanupLeftovers(t *testing.T, own []string, gw string) []string {
	var left []string
	br := own[0]
	links, _ := exec.Command("ip", "-o", "link").Output()
	for _, l := range strings.Split(string(links), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if slices.Contains(own, name) {
			left = append(left, "link "+name)
		}
	}
	for _, fam := range []string{"inet", "bridge"} {
		out, _ := exec.Command("nft", "list", "table", fam, "clawker_fw").CombinedOutput()
		if strings.Contains(string(out), br) {
			left = append(left, "nft "+fam+" chains of "+br)
		}
	}
	addrs, _ := exec.Command("ip", "-o", "-4", "addr").Output()
	if strings.Contains(string(addrs), " "+gw+"/") {
		left = append(left, "gateway address "+gw)
	}
	ss, _ := exec.Command("ss", "-Hltun").Output()
	for _, l := range strings.Split(string(ss), "\n") {
		if strings.Contains(l, " "+gw+":") {
			left = append(left, "listener "+strings.Join(strings.Fields(l), " "))
		}
	}
	for _, m := range []string{"endpoints", "routes"} {
		if d := strings.TrimSpace(mapDump(t, m)); d != "[]" && d != "" {
			left = append(left, "bpf map "+m+": "+d)
		}
	}
	return left
}

// mapDump dumps a pinned map of the plugin as JSON.
func mapDump(t *testing.T, name string) string {
	out, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", "/sys/fs/bpf/clawker-fw/"+name).CombinedOutput()
	if err != nil {
		return "error: " + strings.TrimSpace(string(out))
	}
	return string(out)
}

// Timings for the README: network create and container start, with and
// without the plugin.
func TestPluginTimings(t *testing.T) {
	f := pluginEnv(t)
	const reps = 5
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	measure := func(fn func(i int)) time.Duration {
		var ds []time.Duration
		for i := range reps {
			start := time.Now()
			fn(i)
			ds = append(ds, time.Since(start))
		}
		return median(ds)
	}
	recordTiming(t, "network_create_plugin_p50", measure(func(i int) {
		name := fmt.Sprintf("cfw-pt-time-%d", i)
		f.e.MustDocker(t, "network", "create", "-d", driver, "--subnet", fmt.Sprintf("10.231.%d.0/24", 120+i),
			"-o", "clawker.allow=allowed.example.test", name)
		t.Cleanup(func() { f.removeNet(name) })
	}))
	recordTiming(t, "network_create_bridge_p50", measure(func(i int) {
		name := fmt.Sprintf("cfw-pt-plain-%d", i)
		f.e.MustDocker(t, "network", "create", "--internal", "--subnet", fmt.Sprintf("10.231.%d.0/24", 130+i), name)
		t.Cleanup(func() { _, _, _ = f.e.Docker("network", "rm", name) })
	}))
	for _, c := range []struct{ name, network string }{
		{"container_run_plugin_busybox", "cfw-pt-time-0"},
		{"container_run_bridge_busybox", "cfw-pt-plain-0"},
		{"container_run_none_busybox", "none"},
	} {
		recordTiming(t, c.name+"_p50", measure(func(int) {
			out, err := f.run("--network", c.network, f.busybox, "true")
			require.NoError(t, err, out)
		}))
	}
	for _, c := range []struct{ name, network string }{
		{"container_run_plugin_debian", "cfw-pt-time-0"},
		{"container_run_none_debian", "none"},
	} {
		recordTiming(t, c.name+"_p50", measure(func(int) {
			out, err := f.run("--network", c.network, f.debian, "true")
			require.NoError(t, err, out)
		}))
	}
	writeTimings(t, f.e.Engine())
}

// writeTimings writes every TIMING line recorded so far to
// build/plugin-timings-<engine>.txt (a run never writes into the tracked
// tree; bench/results/plugin-timings.txt is a copy kept by hand).
func writeTimings(t *testing.T, eng harness.Engine) {
	timingsMu.Lock()
	lines := slices.Clone(timingLines)
	timingsMu.Unlock()
	sort.Stable(sort.StringSlice(lines))
	host, _ := os.Hostname()
	head := fmt.Sprintf("# clawker-fw plugin timings (e2e/plugin_test.go), %s, host %s, engine %s (API %s), %d cores\n",
		time.Now().UTC().Format(time.RFC3339), host, eng.Name, eng.APIVersion, runtime.NumCPU())
	path := filepath.Join(repoRoot(t), "build", "plugin-timings-"+eng.Name+".txt")
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(head+strings.Join(lines, "\n")+"\n"), 0o644))
}

// With a loopback host resolver (Docker forwards from dockerd's netns), a
// query for a denied name never reaches any upstream. It needs its own
// Env, so it runs last.
func TestPluginLoopbackResolverNoDNSTunnel(t *testing.T) {
	requireE2E(t)
	e := ownEnv(t, harness.Options{LoopbackResolver: true, NoSSH: true})
	f := installPlugin(t, e)
	t.Cleanup(func() { removePluginAndClean(t, e) })
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-loop", 112, "clawker.allow=http://allowed.example.test")
	tunnel := "tunnel-secret.denied.example.test"
	out, _ := f.run("--network", n.Name, f.busybox, "sh", "-c",
		"cat /etc/resolv.conf; nslookup "+harness.DeniedHost+"; nslookup "+tunnel+"; nslookup "+tunnel+" 127.0.0.11; "+httpGet(harness.AllowedHost, "/loopback"))
	t.Logf("container output:\n%s", out)
	require.Contains(t, out, "NXDOMAIN")
	require.Contains(t, out, "fakenet host=allowed.example.test path=/loopback", "allowed name works (positive control)")
	for _, en := range e.LoopbackDNSLog() {
		require.NotContains(t, en.Name, "denied.example.test", "loopback relay saw %+v", en)
	}
	log, err := e.FakenetLog()
	require.NoError(t, err)
	for _, en := range log {
		if en.Kind == fakenet.KindDNS {
			require.NotContains(t, en.Name, "denied.example.test", "fake DNS saw %+v", en)
		}
	}
	f.requireNoLeaks(t)
}
