package e2e

// End-to-end tests of how operators install and run clawker-fw (issue 14 §7):
// a Compose project on a clawker-fw network (docs/compose.yml, run with
// Debian's docker-compose), reinstalling with scripts/install.sh (`make
// install`) keeping the `docker plugin set` settings, `docker plugin upgrade`
// from a local registry, and `make uninstall` with and without PURGE.
// docker-compose and the scripts talk to the Env's dockerd (DOCKER_HOST),
// never to the host's.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// dockerEnvCmd is a command (docker-compose, scripts/install.sh) run against
// the Env's dockerd with the Env's CLI config, from the repository root.
func dockerEnvCmd(t *testing.T, e *harness.Env, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.DockerHost(), "DOCKER_CONFIG="+filepath.Join(e.Dir(), "cli"),
		"DOCKER_DAEMON_JSON="+filepath.Join(e.Dir(), "daemon.json"), "PATH=/usr/local/go/bin:"+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// runCmd runs cmd with a time limit and returns its combined output.
func runCmd(t *testing.T, cmd *exec.Cmd, limit time.Duration) (string, error) {
	t.Helper()
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-done
		err = fmt.Errorf("%s: timed out after %v", strings.Join(cmd.Args, " "), limit)
	}
	t.Logf("$ %s\n%s", strings.Join(cmd.Args, " "), out)
	return string(out), err
}

// installFixture is the shared Env with the images imported and no plugin
// installed: each test installs it its own way. At the end the plugin (if
// any) is removed with its host state, as pluginEnv does.
func installFixture(t *testing.T) *pluginFixture {
	t.Helper()
	e := env(t)
	bb, err := e.ImportBusybox()
	require.NoError(t, err)
	if _, _, err := e.Docker("plugin", "inspect", e.PluginRef()); err == nil {
		removePluginAndClean(t, e)
	} else if err := harness.CleanPluginHostState(); err != nil {
		t.Errorf("clean plugin host state: %v", err)
	}
	// These tests install it as clawker-fw:latest (another test may have
	// used another reference last).
	e.SetPluginRef(harness.PluginName)
	t.Cleanup(func() {
		if _, _, err := e.Docker("plugin", "inspect", e.PluginRef()); err == nil {
			removePluginAndClean(t, e)
		} else if err := harness.CleanPluginHostState(); err != nil {
			t.Errorf("clean plugin host state: %v", err)
		}
	})
	return &pluginFixture{e: e, busybox: bb, cli: filepath.Join(repoRoot(t), "build", "bin", "clawker-fw")}
}

// pluginBuildCopy copies build/plugin to a directory of t (a concurrent
// `make plugin` replaces build/plugin).
func pluginBuildCopy(t *testing.T) string {
	t.Helper()
	build := filepath.Join(repoRoot(t), "build", "plugin")
	_, err := os.Stat(filepath.Join(build, "rootfs", "bin", "clawker-fw-plugin"))
	require.NoError(t, err, "plugin not built (run `make plugin`)")
	dir := t.TempDir()
	out, err := exec.Command("cp", "-a", build+"/.", dir).CombinedOutput()
	require.NoError(t, err, "copy plugin build: %s", out)
	return dir
}

// pluginSettings is the settings the plugin runs with: its environment and
// its mount sources (Docker mounts .Config.Mounts, where `docker plugin set
// MOUNT.source=` writes; .Settings.Mounts goes stale after an upgrade).
func pluginSettings(t *testing.T, e *harness.Env) string {
	t.Helper()
	return e.MustDocker(t, "plugin", "inspect", "-f",
		`{{range .Settings.Env}}{{println .}}{{end}}{{range .Config.Mounts}}{{.Name}}.source={{if .Source}}{{.Source}}{{end}}{{println}}{{end}}`,
		e.PluginRef()) + "\n" // one setting a line, each ending in a newline
}

// reachable polls until an http GET of the allowed host from container c
// is answered (the container may not be enrolled yet on Docker 20.10, and
// a plugin that was just enabled restores its networks first).
func (f *pluginFixture) requireReach(t *testing.T, c, path string) {
	t.Helper()
	var out string
	require.Eventually(t, func() bool {
		out, _ = f.exec(c, "sh", "-c", httpGet(harness.AllowedHost, path))
		return strings.Contains(out, "path="+path)
	}, 30*time.Second, 300*time.Millisecond, "allowed host not reachable from %s: %s", c, out)
}

// requireDenied checks that container c cannot resolve the denied host
// (NXDOMAIN) nor reach its address (refused, or accepted and closed by the
// proxy before enrollment: nothing may arrive, checked by requireNoLeaks).
func (f *pluginFixture) requireDenied(t *testing.T, c, path string) {
	t.Helper()
	out, _ := f.exec(c, "nslookup", harness.DeniedHost)
	require.Contains(t, out, "NXDOMAIN", "denied name resolved")
	out, _ = f.exec(c, "sh", "-c", httpGet(deniedIP, path))
	require.NotContains(t, out, "path="+path, "denied address answered")
}

// TestComposeNetworkEnforces runs the documented Compose file
// (docs/compose.yml) with Debian's docker-compose: the project's network
// gets the driver_opts rules, the service its label rules; an allowed name
// is reachable, a denied one is not; `down` removes the containers and the
// network and leaves no link, nft chain, listener or BPF entry behind.
func TestComposeNetworkEnforces(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("docker-compose not installed (scripts/deps.sh installs Debian's): %v", err)
	}
	f := pluginEnv(t)
	f.resetLeaks(t)
	file := filepath.Join(repoRoot(t), "docs", "compose.yml")
	const project = "cfwcompose"
	vars := []string{
		"AGENT_IMAGE=" + f.busybox,
		"AGENT_ALLOW=tcp://" + harness.TCPHost + ":5432",
		"NETWORK_ALLOW=http://" + harness.AllowedHost,
		"NETWORK_DENY=" + harness.DeniedHost,
	}
	dc := func(args ...string) (string, error) {
		return runCmd(t, dockerEnvCmd(t, f.e, vars, compose, append([]string{"-p", project, "-f", file}, args...)...), 3*time.Minute)
	}
	t.Cleanup(func() { _, _ = dc("down", "--timeout", "1") })
	out, err := dc("up", "-d")
	require.NoError(t, err, out)

	netName := project + "_agents"
	require.Equal(t, driver, f.e.MustDocker(t, "network", "inspect", "-f", "{{.Driver}}", netName))
	c := f.e.MustDocker(t, "ps", "-q", "--filter", "label=com.docker.compose.project="+project, "--filter", "label=com.docker.compose.service=agent")
	require.NotEmpty(t, c, "compose started no agent container")
	require.Equal(t, "tcp://"+harness.TCPHost+":5432", f.e.MustDocker(t, "inspect", "-f", `{{index .Config.Labels "clawker.allow"}}`, c))

	// Network rule (driver_opts): allowed over plain HTTP; denied name and
	// address refused; the service's label rule: the TCP echo on 5432.
	f.requireReach(t, c, "/compose")
	f.requireDenied(t, c, "/compose-denied")
	out, err = f.exec(c, "sh", "-c", "echo compose-tcp-ok | nc -w 5 "+harness.TCPHost+" 5432")
	require.NoError(t, err, out)
	require.Contains(t, out, "compose-tcp-ok")
	// The label is the service's own: another port of that name is not.
	out, _ = f.exec(c, "sh", "-c", "echo nope | nc -w 3 "+harness.TCPHost+" 7000")
	require.NotContains(t, out, "nope")
	f.requireNoLeaks(t)

	netID := f.e.MustDocker(t, "network", "inspect", "-f", "{{.ID}}", netName)
	gw := f.e.MustDocker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", netName)
	ep := f.e.MustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+netName+"\").EndpointID}}", c)
	own := []string{"cfw-" + netID[:11], "cfwh" + ep[:11], "cfwc" + ep[:11]}

	out, err = dc("down", "--timeout", "1")
	require.NoError(t, err, out)
	_, _, err = f.e.Docker("network", "inspect", netName)
	require.Error(t, err, "network left after compose down")
	out = f.e.MustDocker(t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+project)
	require.Empty(t, out, "containers left after compose down")
	require.Eventually(t, func() bool { return len(cleanupLeftovers(t, own, gw)) == 0 },
		15*time.Second, 200*time.Millisecond, "left after compose down: %v", cleanupLeftovers(t, own, gw))
	f.requireNoLeaks(t)
}

// TestInstallKeepsSettings reinstalls the plugin with scripts/install.sh
// (`make install`): every setting made with `docker plugin set` on the old
// install (the test dockerd's mount sources, the fake upstreams, a log level)
// is set again on the new one, a setting given on the command line wins,
// and a network created before the reinstall enforces after it.
func TestInstallKeepsSettings(t *testing.T) {
	f := installFixture(t)
	dir := pluginBuildCopy(t)
	install := func(args ...string) string {
		t.Helper()
		out, err := runCmd(t, dockerEnvCmd(t, f.e, nil, "./scripts/install.sh", append([]string{dir, driver}, args...)...), 5*time.Minute)
		require.NoError(t, err, out)
		return out
	}
	require.NoError(t, f.e.PreparePluginHost())
	install(append(f.e.PluginSettings(), "CLAWKER_LOG_LEVEL=debug", "CLAWKER_LOG_RATE=7")...)
	before := pluginSettings(t, f.e)
	require.Contains(t, before, "CLAWKER_LOG_LEVEL=debug")
	require.Contains(t, before, "state.source="+f.e.StateDir())

	f.resetLeaks(t)
	n := f.createNet(t, "cfw-inst-keep", 140, "clawker.allow=http://"+harness.AllowedHost)
	c := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	f.requireReach(t, c, "/before-reinstall")
	_, _, err := f.e.Docker("rm", "-f", c)
	require.NoError(t, err)

	// Reinstall with no settings given: all are kept.
	out := install()
	require.Contains(t, out, "replacing the existing "+driver)
	require.Contains(t, out, "kept setting CLAWKER_LOG_LEVEL")
	require.Contains(t, out, "kept setting netns.source")
	require.Equal(t, before, pluginSettings(t, f.e), "settings changed by a reinstall")
	require.Equal(t, "true", f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", driver))

	c = f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	f.requireReach(t, c, "/after-reinstall")
	f.requireDenied(t, c, "/after-reinstall-denied")

	// A setting on the command line wins over the kept one.
	_, _, err = f.e.Docker("rm", "-f", c)
	require.NoError(t, err)
	install("CLAWKER_LOG_RATE=9")
	after := pluginSettings(t, f.e)
	require.Contains(t, after, "CLAWKER_LOG_RATE=9\n")
	require.NotContains(t, after, "CLAWKER_LOG_RATE=7")
	require.Equal(t, strings.ReplaceAll(before, "CLAWKER_LOG_RATE=7", "CLAWKER_LOG_RATE=9"), after)
	f.requireNoLeaks(t)
}

// TestUninstallSaysWhatItLeavesAndPurges runs `make uninstall`'s script:
// without PURGE it removes the plugin and its enforcement state and names
// the networks, state directory and CA key it leaves (a reinstall uses
// them again); with PURGE it refuses while a container is attached to one
// of the networks, and otherwise removes them too.
func TestUninstallSaysWhatItLeavesAndPurges(t *testing.T) {
	f := installFixture(t)
	dir := pluginBuildCopy(t)
	script := func(args ...string) (string, error) {
		return runCmd(t, dockerEnvCmd(t, f.e, nil, "./scripts/install.sh", args...), 5*time.Minute)
	}
	require.NoError(t, f.e.PreparePluginHost())
	// PURGE removes the Env's state directory: give it back to the next test.
	t.Cleanup(func() { require.NoError(t, f.e.PreparePluginHost()) })
	out, err := script(append([]string{dir, driver}, f.e.PluginSettings()...)...)
	require.NoError(t, err, out)
	n := f.createNet(t, "cfw-inst-left", 141, "clawker.allow=http://"+harness.AllowedHost)
	c := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	f.requireReach(t, c, "/before-uninstall") // the CA exists once the plugin served
	_, _, err = f.e.Docker("rm", "-f", c)
	require.NoError(t, err)
	caKey := filepath.Join(f.e.StateDir(), "ca", "ca.key")
	require.FileExists(t, caKey)

	out, err = script("--uninstall", dir, driver)
	require.NoError(t, err, out)
	require.Contains(t, out, "removed with its BPF programs")
	require.Contains(t, out, "networks: "+n.Name)
	require.Contains(t, out, "state: "+f.e.StateDir())
	require.Contains(t, out, "CA key: "+caKey)
	require.Contains(t, out, "PURGE=1")
	_, _, err = f.e.Docker("plugin", "inspect", driver)
	require.Error(t, err, "plugin still installed")
	require.NoDirExists(t, "/sys/fs/bpf/clawker-fw")
	require.Equal(t, n.ID, f.e.MustDocker(t, "network", "inspect", "-f", "{{.ID}}", n.Name), "network not left")
	require.FileExists(t, caKey)

	// A reinstall (settings must be given again after an uninstall) serves
	// the network it left.
	out, err = script(append([]string{dir, driver}, f.e.PluginSettings()...)...)
	require.NoError(t, err, out)
	c = f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	f.requireReach(t, c, "/after-uninstall")

	// PURGE refuses while a container is attached, and removes nothing.
	out, err = script("--uninstall", "--purge", dir, driver)
	require.Error(t, err, out)
	require.Contains(t, out, "containers are attached")
	require.Contains(t, out, strings.TrimPrefix(f.e.MustDocker(t, "inspect", "-f", "{{.Name}}", c), "/"))
	require.Equal(t, "true", f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", driver))
	require.FileExists(t, caKey)

	_, _, err = f.e.Docker("rm", "-f", c)
	require.NoError(t, err)
	out, err = script("--uninstall", "--purge", dir, driver)
	require.NoError(t, err, out)
	require.Contains(t, out, "removed networks")
	require.Contains(t, out, "removed the state directory "+f.e.StateDir())
	_, _, err = f.e.Docker("network", "inspect", n.Name)
	require.Error(t, err, "network left by PURGE")
	require.NoDirExists(t, f.e.StateDir())
	_, _, err = f.e.Docker("plugin", "inspect", driver)
	require.Error(t, err, "plugin still installed")
	// The pins are gone (checked above): only links, nft chains, addresses
	// and listeners can be left.
	var left []string
	for _, l := range cleanupLeftovers(t, []string{"cfw-" + n.ID[:11]}, n.Gateway) {
		if !strings.HasPrefix(l, "bpf map ") {
			left = append(left, l)
		}
	}
	require.Empty(t, left)
}

// registryBinary is the distribution/distribution v3 registry, built from
// its Go module by scripts/registry.sh (cached), or CLAWKER_E2E_REGISTRY_BIN.
func registryBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CLAWKER_E2E_REGISTRY_BIN"); p != "" {
		return p
	}
	cmd := exec.Command("./scripts/registry.sh")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/go/bin:"+os.Getenv("PATH"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	require.NoError(t, err, "build the registry (scripts/registry.sh)")
	return strings.TrimSpace(string(out))
}

// startRegistry runs a registry on a free loopback port (Docker talks plain
// HTTP to registries on 127.0.0.0/8) and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	bin := registryBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: clawker-e2e\n",
		filepath.Join(dir, "data"), addr)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644))
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	require.NoError(t, err)
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Logf("registry log:\n%s", b)
		}
	})
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "registry did not listen on %s", addr)
	return addr
}

// TestPluginUpgradeFromRegistry pushes two versions of the plugin to a
// local registry, installs the first from it (as README's "Install from a
// registry" says), sets the test settings, creates a network with a running
// container, and upgrades to the second with scripts/install.sh --upgrade
// (`make upgrade`): the plugin keeps its id and every setting, runs the new
// rootfs, and the network (old and new containers) enforces as before. A
// bare `docker plugin upgrade` back to the first keeps the environment
// settings but resets the mount sources to the manifest's (Docker's
// behaviour, why the script exists); set again, the plugin serves again.
func TestPluginUpgradeFromRegistry(t *testing.T) {
	f := installFixture(t)
	reg := startRegistry(t)
	repo := reg + "/clawker/clawker-fw"
	// Two versions: the second's rootfs carries a marker (byte-identical
	// rootfs cannot be created twice, and the marker shows which one runs).
	v1 := pluginBuildCopy(t)
	v2 := pluginBuildCopy(t)
	const marker = "etc/clawker-fw-e2e-version"
	require.NoError(t, os.WriteFile(filepath.Join(v2, "rootfs", marker), []byte("2\n"), 0o644))
	for _, v := range []struct{ tag, dir string }{{"1", v1}, {"2", v2}} {
		f.e.MustDocker(t, "plugin", "create", repo+":"+v.tag, v.dir)
		f.e.MustDocker(t, "plugin", "push", repo+":"+v.tag)
		f.e.MustDocker(t, "plugin", "rm", repo+":"+v.tag)
	}

	require.NoError(t, f.e.PreparePluginHost())
	f.e.MustDocker(t, "plugin", "install", "--grant-all-permissions", "--disable", "--alias", driver, repo+":1")
	f.e.MustDocker(t, append([]string{"plugin", "set", driver}, append(f.e.PluginSettings(), "CLAWKER_LOG_LEVEL=debug")...)...)
	f.e.MustDocker(t, "plugin", "enable", "--timeout", "60", driver)
	id := f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.ID}}", driver)
	require.Equal(t, repo+":1", f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", driver))
	settings := pluginSettings(t, f.e)
	require.Contains(t, settings, "state.source="+f.e.StateDir()+"\n")
	rootfs := filepath.Join(f.e.DataRoot(), "plugins", id, "rootfs")
	require.NoFileExists(t, filepath.Join(rootfs, marker))

	f.resetLeaks(t)
	n := f.createNet(t, "cfw-upgrade", 142, "clawker.allow=http://"+harness.AllowedHost)
	old := f.detached(t, "--network", n.Name, f.busybox, "sleep", "600")
	f.requireReach(t, old, "/before-upgrade")

	start := time.Now()
	out, err := runCmd(t, dockerEnvCmd(t, f.e, nil, "./scripts/install.sh", "--upgrade", repo+":2", driver), 5*time.Minute)
	require.NoError(t, err, out)
	t.Logf("scripted upgrade took %v", time.Since(start).Round(time.Millisecond))
	require.Contains(t, out, "kept setting state.source")
	require.Equal(t, id, f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.ID}}", driver), "upgrade changed the plugin id")
	require.Equal(t, repo+":2", f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", driver))
	require.FileExists(t, filepath.Join(rootfs, marker), "the upgraded plugin does not run the new rootfs")
	require.Equal(t, settings, pluginSettings(t, f.e), "settings changed by the upgrade")
	require.Equal(t, "true", f.e.MustDocker(t, "plugin", "inspect", "-f", "{{.Enabled}}", driver))

	f.requireReach(t, old, "/after-upgrade-old")
	f.requireDenied(t, old, "/after-upgrade-old-denied")
	c := f.detached(t, "--network", n.Name, f.busybox, "sleep", "300")
	f.requireReach(t, c, "/after-upgrade-new")
	f.requireDenied(t, c, "/after-upgrade-new-denied")

	// A bare `docker plugin upgrade` (back to the first version).
	f.e.MustDocker(t, "plugin", "disable", "-f", driver)
	// Without --skip-remote-check and a remote other than the installed
	// reference, the CLI (28.2, no terminal) exited 0 and left the plugin on
	// the old reference: it asks for a confirmation first.
	f.e.MustDocker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", driver, repo+":1")
	require.NoFileExists(t, filepath.Join(rootfs, marker))
	bare := pluginSettings(t, f.e)
	require.Contains(t, bare, "CLAWKER_LOG_LEVEL=debug\n", "environment settings lost by docker plugin upgrade")
	require.Contains(t, bare, "state.source=/var/lib/clawker-fw\n", "docker plugin upgrade kept the mount sources (README says it does not)")
	var mountSets []string
	for _, kv := range f.e.PluginSettings() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasSuffix(k, ".source") {
			mountSets = append(mountSets, kv)
		}
	}
	f.e.MustDocker(t, append([]string{"plugin", "set", driver}, mountSets...)...)
	require.Equal(t, settings, pluginSettings(t, f.e))
	f.e.MustDocker(t, "plugin", "enable", "--timeout", "60", driver)
	f.requireReach(t, old, "/after-bare-upgrade")
	f.requireDenied(t, old, "/after-bare-upgrade-denied")
	f.requireNoLeaks(t)
}

// TestAuthzSwarmRequests: with authz on, a swarm-scope clawker-fw network
// given -o clawker.* is refused with the plugin's message before Docker
// looks at swarm (Swarm would not hand the options to the driver: its
// containers would silently run without the network's rules). Without the
// options the request reaches Docker (which answers that this node is no
// swarm manager), and a local network with rules is created as always;
// --attachable is refused (standalone containers could join it past the
// container checks). Service specs on a clawker-fw network get the
// container checks.
func TestAuthzSwarmRequests(t *testing.T) {
	f := opsSetup(t)
	f.setAuthz(t, true)
	t.Cleanup(func() { f.setAuthz(t, false) })

	_, errOut, err := f.e.Docker("network", "create", "-d", driver, "--scope", "swarm", "--attachable",
		"-o", "clawker.allow="+harness.AllowedHost, "cfw-swarm-rules")
	require.Error(t, err)
	t.Logf("-> %s", strings.TrimSpace(errOut))
	require.Contains(t, errOut, "authorization denied by plugin "+driver)
	require.Contains(t, errOut, "a swarm-scope clawker-fw network (cfw-swarm-rules) cannot carry network rules (clawker.allow) while the plugin reports local scope")

	_, errOut, err = f.e.Docker("network", "create", "-d", driver, "--scope", "swarm", "--attachable", "cfw-swarm-attach")
	require.Error(t, err)
	t.Logf("-> %s", strings.TrimSpace(errOut))
	require.Contains(t, errOut, "a swarm-scope clawker-fw network (cfw-swarm-attach) cannot be --attachable")

	_, errOut, err = f.e.Docker("network", "create", "-d", driver, "--scope", "swarm", "cfw-swarm-plain")
	require.Error(t, err, "no swarm here: Docker refuses it")
	t.Logf("-> %s", strings.TrimSpace(errOut))
	require.NotContains(t, errOut, "clawker-fw:")

	id := f.network(t, "cfw-swarm-local", "10.231.143.0/24", "clawker.allow="+harness.AllowedHost)
	require.NotEmpty(t, id)

	// Services: swarm creates their task containers past the container
	// checks, so authz checks the service spec. The CLI resolves --network
	// names through swarm (it finds none on a node that is no manager), so
	// the specs are posted to the API as the CLI would send them, networks
	// by id. This node is no swarm manager, so Docker refuses every service
	// after authz: a refusal by the plugin shows in the answer, an allowed
	// spec gets Docker's own error. The plain network's driver is resolved
	// through the plugin's real network inspect.
	plain := f.e.MustDocker(t, "network", "create", "--internal", "cfw-swarm-plainnet")
	t.Cleanup(func() { _, _, _ = f.e.Docker("network", "rm", plain) })
	spec := func(nets []string, cs map[string]any) string {
		cs["Image"] = f.img
		cs["Args"] = []string{"sleep", "300"}
		var targets []map[string]string
		for _, n := range nets {
			targets = append(targets, map[string]string{"Target": n})
		}
		b, err := json.Marshal(map[string]any{"Name": "cfw-swarm-svc", "TaskTemplate": map[string]any{"ContainerSpec": cs, "Networks": targets}})
		require.NoError(t, err)
		return string(b)
	}
	for _, tc := range []struct {
		name string
		body string
		want string // "" = allowed by the plugin
	}{
		{"cap NET_ADMIN", spec([]string{id}, map[string]any{"CapabilityAdd": []string{"CAP_NET_ADMIN"}}), "--cap-add CAP_NET_ADMIN is not allowed on the clawker-fw network " + id},
		{"docker socket", spec([]string{id}, map[string]any{"Mounts": []map[string]string{{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/d.sock"}}}), "mounting the Docker socket"},
		{"second network", spec([]string{id, plain}, map[string]any{}), "cannot join other networks"},
		{"bad container label", spec([]string{id}, map[string]any{"Labels": map[string]string{"clawker.allow": "exa..mple"}}), "invalid label"},
		{"labels on a plain network", spec([]string{plain}, map[string]any{"Labels": map[string]string{"clawker.allow": harness.AllowedHost}}), "on no clawker-fw network (network " + plain + ")"},
		{"fine", spec([]string{id}, map[string]any{"Labels": map[string]string{"clawker.allow": harness.AllowedHost}}), ""},
	} {
		t.Run("service "+tc.name, func(t *testing.T) {
			out, err := exec.Command("curl", "-sS", "--unix-socket", f.e.Socket(), "-H", "Content-Type: application/json",
				"-X", "POST", "--data-binary", tc.body, "http://docker/v1.41/services/create").CombinedOutput()
			require.NoError(t, err, "%s", out)
			t.Logf("-> %s", strings.TrimSpace(string(out)))
			if tc.want == "" {
				require.NotContains(t, string(out), "authorization denied")
				require.Contains(t, string(out), "swarm")
				return
			}
			require.Contains(t, string(out), "authorization denied by plugin "+driver)
			require.Contains(t, string(out), tc.want)
		})
	}
}
