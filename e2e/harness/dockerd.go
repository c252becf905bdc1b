package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dockerd is Debian's docker.io 20.10, the default engine (EngineDebian).
const Dockerd = "/usr/sbin/dockerd"

const (
	dockerdStartTimeout = 30 * time.Second
	dockerdStopTimeout  = 20 * time.Second
)

// hostState is what dockerd changes host-wide, saved before its first start:
// the forwarding sysctls and the FORWARD policies.
type hostState struct {
	sysctls  map[string]string
	policies map[string]string // "iptables" / "ip6tables" -> ACCEPT or DROP
}

func readHostState() *hostState {
	s := &hostState{sysctls: map[string]string{}, policies: map[string]string{}}
	for _, p := range hostSysctls {
		if b, err := os.ReadFile(p); err == nil {
			s.sysctls[p] = strings.TrimSpace(string(b))
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(bin, "-w", "-S", "FORWARD").Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "-P" && f[1] == "FORWARD" {
				s.policies[bin] = f[2]
			}
		}
	}
	return s
}

func (s *hostState) restore() error {
	var errs []error
	for _, p := range hostSysctls {
		if v, ok := s.sysctls[p]; ok {
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
			}
		}
	}
	for bin, policy := range s.policies {
		if err := run(bin, "-w", "-P", "FORWARD", policy); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// daemonConfigPath is the --config-file of the test dockerd.
func (e *Env) daemonConfigPath() string { return filepath.Join(e.dir, "daemon.json") }

// dockerdArgs are the flags of the test dockerd.
func (e *Env) dockerdArgs() []string {
	args := []string{
		"--data-root", e.DataRoot(),
		"--exec-root", e.ExecRoot(),
		"--pidfile", filepath.Join(e.dir, "dockerd.pid"),
		"-H", e.DockerHost(),
		"--config-file", e.daemonConfigPath(),
		// Never --bridge=none: it deletes the host's docker0 (class 10).
		"--bridge", DockerBridge,
		// Default-bridge traffic keeps its own source address, so the leak
		// detector sees it (a masqueraded flow would look like the host's).
		"--ip-masq=false",
		"--default-address-pool", fmt.Sprintf("base=%s,size=%d", DockerAddressPool, DockerAddressPoolSize),
		"--userland-proxy=false",
	}
	if !e.opts.NoLiveRestore {
		args = append(args, "--live-restore")
	}
	if !e.opts.NoDebug {
		args = append(args, "--debug")
	}
	if e.hostNameserver() == "" {
		// A hook that misses a query can only ever reach the fake DNS.
		args = append(args, "--dns", FakenetIP)
	}
	return append(args, e.opts.DockerdArgs...)
}

// hostNameserver is the nameserver of dockerd's private resolv.conf ("":
// dockerd runs with --dns FakenetIP and the host's resolv.conf).
func (e *Env) hostNameserver() string {
	if e.opts.LoopbackResolver {
		return LoopbackResolverIP
	}
	return e.opts.HostNameserver
}

// WriteDaemonConfig replaces daemon.json; ReloadDockerd applies it.
func (e *Env) WriteDaemonConfig(cfg map[string]any) error {
	if cfg == nil {
		cfg = map[string]any{}
	}
	onDisk := cfg
	if !e.engine.Current() {
		if _, ok := cfg["deprecated-key-path"]; !ok {
			// Docker 20.10 creates its identity key /etc/docker/key.json
			// when missing: the host's Docker would adopt ours (class 10).
			// Only daemon.json can move it.
			onDisk = maps.Clone(cfg)
			onDisk["deprecated-key-path"] = filepath.Join(e.dir, "key.json")
		}
	}
	b, err := json.MarshalIndent(onDisk, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal daemon.json: %w", err)
	}
	if err := os.WriteFile(e.daemonConfigPath(), b, 0o644); err != nil {
		return fmt.Errorf("write daemon.json: %w", err)
	}
	e.mu.Lock()
	e.opts.DaemonConfig = cfg
	e.mu.Unlock()
	return nil
}

// ReloadDockerd sends SIGHUP so dockerd reloads daemon.json (authorization
// plugins, debug, labels, ... are reloadable), and waits until the API
// answers again.
func (e *Env) ReloadDockerd() error {
	pid := e.DockerdPID()
	if pid == 0 {
		return errors.New("reload dockerd: not running")
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload dockerd: %w", err)
	}
	// dockerd logs the reload asynchronously; give it a moment, then ping.
	time.Sleep(300 * time.Millisecond)
	return e.waitDockerd(dockerdStartTimeout)
}

// DockerdPID is the PID of the running test dockerd (0 if none).
func (e *Env) DockerdPID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dockerd == nil || e.dockerd.Process == nil {
		return 0
	}
	return e.dockerd.Process.Pid
}

func (e *Env) startDockerd() error {
	e.mu.Lock()
	if e.hostState == nil {
		e.hostState = readHostState()
	}
	e.mu.Unlock()
	if err := e.setupDockerBridge(); err != nil {
		return err
	}
	for _, d := range []string{e.DataRoot(), e.ExecRoot(), e.StateDir(), filepath.Join(e.dir, "cli")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := e.shareNetnsDir(); err != nil {
		return err
	}
	if e.opts.TmpfsDataRoot {
		var st unix.Statfs_t
		if err := unix.Statfs(e.DataRoot(), &st); err != nil {
			return fmt.Errorf("statfs %s: %w", e.DataRoot(), err)
		}
		if st.Type != unix.TMPFS_MAGIC {
			if err := unix.Mount("cfw-e2e-data", e.DataRoot(), "tmpfs", 0, "mode=0711"); err != nil {
				return fmt.Errorf("mount tmpfs on %s: %w", e.DataRoot(), err)
			}
		}
	}
	if _, err := os.Stat(e.daemonConfigPath()); err != nil {
		if err := e.WriteDaemonConfig(e.opts.DaemonConfig); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(e.DockerdLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open dockerd log: %w", err)
	}
	defer logf.Close()

	var cmd *exec.Cmd
	if ns := e.hostNameserver(); ns != "" {
		// dockerd reads /etc/resolv.conf at every container start, so the
		// replacement must stay visible to it, and to it only: run dockerd
		// (and the containerd it starts) in a private mount namespace with a
		// bind mount over /etc/resolv.conf. Mounts dockerd makes there
		// (netns files, overlays) stay in that namespace and vanish with it.
		resolv := filepath.Join(e.dir, "resolv.conf")
		if err := os.WriteFile(resolv, []byte("nameserver "+ns+"\noptions ndots:0\n"), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
		script := `mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`
		args := append([]string{"-m", "--propagation", "private", "--", "sh", "-c", script, "sh", resolv, e.engine.Dockerd}, e.dockerdArgs()...)
		cmd = exec.Command("unshare", args...)
	} else {
		cmd = exec.Command(e.engine.Dockerd, e.dockerdArgs()...)
	}
	cmd.Env = e.engine.dockerdEnv()
	if e.opts.NoLiveRestore {
		// Swarm: never ask a registry for a service's image (moby's
		// executor pulls before every task otherwise, and the CLI's digest
		// lookup is skipped with --no-resolve-image): the images are local.
		cmd.Env = append(cmd.Env, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Put dockerd in its own process group so a terminal's Ctrl-C goes to
	// the test only; end it if the test process dies without Close.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	e.mu.Lock()
	e.dockerd, e.dockerdCh = cmd, done
	e.mu.Unlock()
	return e.waitDockerd(dockerdStartTimeout)
}

// shareNetnsDir makes NetnsDir a shared mount (once), as it is on hosts
// whose / is shared (systemd): the netns files dockerd bind-mounts there then
// reach the plugin's rslave mount of that directory. These machines' / is
// private, where the plugin would see only empty files. The mount is under
// the Env directory (Close unmounts it).
func (e *Env) shareNetnsDir() error { return shareDir(e.NetnsDir()) }

// shareDir bind-mounts dir on itself (once) and makes it a shared mount.
func shareDir(dir string) error {
	if slices.Contains(mountsUnder(dir), dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// unixClient talks HTTP to a dockerd's API socket.
func unixClient(socket string) *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

func (e *Env) waitDockerd(timeout time.Duration) error {
	e.mu.Lock()
	done := e.dockerdCh
	e.mu.Unlock()
	return waitPing(e.Socket(), done, e.DockerdLog(), timeout)
}

// waitPing waits until the dockerd on socket answers /_ping, or done is
// closed (it exited), or timeout; errors carry the tail of its log.
func waitPing(socket string, done <-chan struct{}, log string, timeout time.Duration) error {
	client := unixClient(socket)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get("http://docker/_ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("dockerd exited; log %s:\n%s", log, tail(log, 20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd not answering after %v; log %s:\n%s", timeout, log, tail(log, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stopDockerd ends the test dockerd (SIGTERM, then SIGKILL after 20 s).
// With --live-restore the containers and enabled plugins keep running.
func (e *Env) stopDockerd() error {
	e.mu.Lock()
	cmd, done := e.dockerd, e.dockerdCh
	e.dockerd = nil
	e.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(dockerdStopTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("dockerd did not stop within %v (killed)", dockerdStopTimeout)
	}
}

// RestartDockerd stops and starts the test dockerd with the same flags and
// daemon.json. Containers survive (--live-restore).
func (e *Env) RestartDockerd() error {
	start := time.Now()
	if err := e.stopDockerd(); err != nil {
		return err
	}
	if err := e.startDockerd(); err != nil {
		return err
	}
	e.logf("dockerd restarted in %v", time.Since(start).Round(time.Millisecond))
	return nil
}

// stopDockerEnv removes what lives in the test dockerd, stops it, ends the
// processes it left (its containerd and shims, found by the Env directory
// in their command line), unmounts what is left under the Env directory and
// restores the host settings dockerd changed.
func (e *Env) stopDockerEnv() error {
	var errs []error
	if e.DockerdPID() != 0 {
		errs = append(errs, e.emptyDockerd())
		errs = append(errs, e.stopDockerd())
	}
	killProcessesUsing(e.dir)
	errs = append(errs, unmountUnder(e.dir))
	errs = append(errs, e.removeDockerBridge())
	if e.hostBefore != nil && e.hostState != nil { // a dockerd ran
		errs = append(errs, restoreDockerChains(e.hostBefore))
	}
	if e.hostState != nil {
		errs = append(errs, e.hostState.restore())
	}
	return errors.Join(errs...)
}

// emptyDockerd removes containers, user networks and plugins, so nothing
// keeps running after dockerd stops (live-restore would keep it alive).
// Authorization plugins are dropped from daemon.json first: a plugin being
// disabled must not be asked to authorize its own removal.
func (e *Env) emptyDockerd() error {
	var errs []error
	e.mu.Lock()
	cfg := e.opts.DaemonConfig
	e.mu.Unlock()
	if _, ok := cfg["authorization-plugins"]; ok {
		rest := map[string]any{}
		for k, v := range cfg {
			if k != "authorization-plugins" {
				rest[k] = v
			}
		}
		if err := e.WriteDaemonConfig(rest); err == nil {
			errs = append(errs, e.ReloadDockerd())
		}
	}
	if out, _, err := e.Docker("ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
		if _, _, err := e.Docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if out, _, err := e.Docker("network", "ls", "-q", "--filter", "type=custom"); err == nil && strings.TrimSpace(out) != "" {
		if _, _, err := e.Docker(append([]string{"network", "rm"}, strings.Fields(out)...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if out, _, err := e.Docker("plugin", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _, _ = e.Docker("plugin", "disable", "-f", id)
			if _, _, err := e.Docker("plugin", "rm", "-f", id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// killProcessesUsing ends (SIGKILL, by PID) the processes whose command
// line mentions dir: the test dockerd's containerd and shims, all started
// by this Env.
//
// Their children are ended first: a shim's child is a container's (or
// plugin's) init, and ending a PID namespace's init ends the whole
// container; killing only the shim would orphan it.
func killProcessesUsing(dir string) {
	procs := processesUsing(dir)
	for pid := range procs {
		for _, child := range childrenOf(pid) {
			if _, own := procs[child]; !own {
				_ = syscall.Kill(child, syscall.SIGKILL)
			}
		}
	}
	for pid := range procs {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// childrenOf lists the direct children of pid.
func childrenOf(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// mountsUnder lists the mount points at or below dir in this mount
// namespace, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// unmountUnder lazily unmounts everything mounted under dir.
func unmountUnder(dir string) error {
	var errs []error
	for _, mp := range mountsUnder(dir) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// cleanStaleEnvs removes what an Env of a test process that died without
// Close left behind. It runs under the machine lock, so no other Env is
// live: a /tmp/cfw-e2e-* directory where neither a dockerd nor a fakenet
// runs any more is stale. It ends the processes started from that directory
// (containers and plugins, their shims, containerd) by PID, unmounts and
// removes it. A directory kept after a failed Close goes too.
func cleanStaleEnvs(logf func(string, ...any)) {
	dirs, _ := filepath.Glob("/tmp/cfw-e2e-*")
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			continue
		}
		alive := false
		for _, argv0 := range processesUsing(dir) {
			if strings.HasSuffix(argv0, "dockerd") || strings.HasSuffix(argv0, "clawker-fakenet") {
				alive = true
			}
		}
		if alive {
			logf("not removing %s: its dockerd or fakenet still runs", dir)
			continue
		}
		logf("removing stale environment %s", dir)
		killProcessesUsing(dir)
		_ = unmountUnder(dir)
		if err := removeTree(dir); err != nil {
			logf("stale environment: %v", err)
		}
	}
}

// processesUsing returns pid -> argv[0] of the processes whose command line
// mentions dir.
func processesUsing(dir string) map[int]string {
	out := map[int]string{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), dir+"/") {
			continue
		}
		argv0, _, _ := strings.Cut(string(b), "\x00")
		out[pid] = argv0
	}
	return out
}

// SetAuthzPlugins sets daemon.json's "authorization-plugins" to names (none:
// removes the key) and reloads dockerd. Enable a plugin before naming it
// here, and call SetAuthzPlugins() before disabling it: dockerd refuses
// unknown authz plugins and a dead one blocks the API (DESIGN.md).
func (e *Env) SetAuthzPlugins(names ...string) error {
	e.mu.Lock()
	cfg := map[string]any{}
	for k, v := range e.opts.DaemonConfig {
		cfg[k] = v
	}
	e.mu.Unlock()
	delete(cfg, "authorization-plugins")
	if len(names) > 0 {
		cfg["authorization-plugins"] = names
	}
	if err := e.WriteDaemonConfig(cfg); err != nil {
		return err
	}
	return e.ReloadDockerd()
}

// Owns reports whether process pid belongs to this Env: it, or one of its
// ancestors within six generations (a plugin under its containerd shim, a
// container's process under runc), has the Env directory in its command
// line. Nothing outside this environment ever matches.
//
// A Node's processes (its directory is under the Env's) belong to the Env
// too; Node.Owns tells them apart.
func (e *Env) Owns(pid int) bool { return ownedBy(e.dir, pid) }

// ownedBy reports whether pid or one of its six nearest ancestors has dir
// in its command line.
func ownedBy(dir string, pid int) bool {
	dir += "/"
	for range 6 {
		if pid <= 1 {
			return false
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), dir) {
			return true
		}
		if pid = ParentOf(pid); pid == 0 {
			return false
		}
	}
	return false
}

// ParentOf is pid's parent process, from /proc (0 when it cannot be read).
func ParentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces; cut after ')'.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}
