// Package harness runs clawker-fw's end-to-end environment: a fake internet
// in its own network namespace (cmd/clawker-fakenet), a private dockerd that
// can only see that fake internet, base images built from Debian packages,
// and the installation of the plugin from its build directory.
//
// Only one Env can run on a machine at a time: the namespace, link and
// address names are fixed (NetnsName, HostLink, Subnet).
//
// What it changes on the host, and gives back in Close:
//   - the link HostLink (10.220.0.1/24, its connected route, IPv6 off on it)
//     and the named netns NetnsName;
//   - a dockerd with its own data-root, exec-root, socket and containerd
//     under Env.Dir(), on a bridge and address pool of its own (DockerBridge,
//     DockerAddressPool; never --bridge=none, which deletes docker0); like
//     every dockerd it sets net.ipv4.ip_forward=1, the iptables FORWARD
//     policy to DROP, and removes and recreates Docker's DOCKER* chains (a
//     host dockerd's rules are gone while it runs). Close removes the bridge
//     and its rules, puts the DOCKER* chains back as they were (deleting
//     those that did not exist), restores the sysctls and FORWARD policies,
//     and fails when the host's Docker differs from before (HostDocker);
//   - bpffs on /sys/fs/bpf (InstallPlugin mounts it when missing; it stays).
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
)

// Fixed names and addresses of the fake internet.
const (
	NetnsName   = "cfw-inet"
	HostLink    = "cfw-inet0"
	Subnet      = "10.220.0.0/24"
	HostIP      = "10.220.0.1" // host side: every legitimate upstream flow comes from here
	FakenetIP   = "10.220.0.2" // fake DNS and control API
	ControlAddr = FakenetIP + ":9999"
	DNSUpstream = FakenetIP + ":53"
	// ServiceIPFirst..ServiceIPLast are all assigned inside the netns and
	// serve every TCP service, named or not (for IP-literal tests).
	ServiceIPFirst = 10
	ServiceIPLast  = 30
	// LoopbackResolverIP is the host-netns resolver dockerd sees in its
	// resolv.conf with Options.LoopbackResolver.
	LoopbackResolverIP = "127.0.0.153"
)

// Test zone names (see DefaultHosts).
const (
	AllowedHost     = "allowed.example.test"      // 10.220.0.10
	DeniedHost      = "denied.example.test"       // 10.220.0.11
	SharedHost      = "shared.example.test"       // 10.220.0.12, shared with SharedOtherHost
	SharedOtherHost = "shared-other.example.test" // 10.220.0.12
	PathHost        = "path.example.test"         // 10.220.0.13
	AltHost         = "alt.example.test"          // 10.220.0.14
	SSHHost         = "ssh.example.test"          // 10.220.0.15
	TCPHost         = "tcp.example.test"          // 10.220.0.16
	MultiHost       = "multi.example.test"        // 10.220.0.17 and 10.220.0.18
	WildcardSuffix  = "wild.example.test"         // *.wild.example.test -> 10.220.0.19
	CNAMEHost       = "cname.example.test"        // CNAME -> allowed.example.test
	// HostLocalHost sits under the wildcard and points at the host itself
	// (HostIP, the host side of the link): like cloud names that encode any
	// IP, it must never let the proxy reach the host.
	HostLocalHost = "host-local." + WildcardSuffix // 10.220.0.1 = HostIP
)

// Ports served on every service address.
var (
	HTTPSPorts = []int{443, 8443}
	HTTPPorts  = []int{80}
	EchoPorts  = []int{5432, 7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008, 7009, 7010}
)

// DefaultHosts is the fake zone's A records.
func DefaultHosts() []fakenet.Host {
	return []fakenet.Host{
		{Name: AllowedHost, IP: "10.220.0.10"},
		{Name: DeniedHost, IP: "10.220.0.11"},
		{Name: SharedHost, IP: "10.220.0.12"},
		{Name: SharedOtherHost, IP: "10.220.0.12"},
		{Name: PathHost, IP: "10.220.0.13"},
		{Name: AltHost, IP: "10.220.0.14"},
		{Name: SSHHost, IP: "10.220.0.15"},
		{Name: TCPHost, IP: "10.220.0.16"},
		{Name: MultiHost, IP: "10.220.0.17"},
		{Name: MultiHost, IP: "10.220.0.18"},
		{Name: "*." + WildcardSuffix, IP: "10.220.0.19"},
		{Name: HostLocalHost, IP: HostIP},
	}
}

// DefaultCNAMEs is the fake zone's aliases.
func DefaultCNAMEs() []fakenet.CNAME {
	return []fakenet.CNAME{{Name: CNAMEHost, Target: AllowedHost}}
}

// Options configures an Env. The zero value is the common case.
type Options struct {
	Hosts  []fakenet.Host  // default DefaultHosts()
	CNAMEs []fakenet.CNAME // default DefaultCNAMEs()
	// NoSSH skips the real sshd that otherwise serves port 22 of every
	// service address (log in as root with Env.SSHKeyFile).
	NoSSH bool
	// SSHAuthorizedKeys are extra authorized_keys lines for that sshd.
	SSHAuthorizedKeys string
	// LoopbackResolver runs dockerd in a private mount namespace where
	// /etc/resolv.conf says "nameserver 127.0.0.153" and without --dns, so
	// that Docker's embedded resolver forwards from dockerd's own netns (the
	// HostLoopback case of DESIGN.md). A recording relay on 127.0.0.153:53
	// forwards to the fake DNS; see Env.LoopbackDNSLog.
	LoopbackResolver bool
	// HostNameserver, when set, runs dockerd like LoopbackResolver (private
	// mount namespace, no --dns) with "nameserver HostNameserver" in its
	// /etc/resolv.conf, and no relay: e.g. FakenetIP, to see from which
	// namespace each engine's embedded resolver forwards a nameserver read
	// from the host's resolv.conf (20.10: the container's; current moby: the
	// host's, always). Ignored with LoopbackResolver.
	HostNameserver string
	// DaemonConfig is written as daemon.json (--config-file). It must not
	// repeat a flag the harness passes (dockerd refuses duplicates).
	DaemonConfig map[string]any
	// NoLiveRestore runs dockerd without --live-restore, which Swarm
	// refuses ("incompatible with swarm mode"): for SwarmInit. A dockerd
	// restart then stops the containers.
	NoLiveRestore bool
	// DockerdArgs are extra dockerd flags.
	DockerdArgs []string
	// NoDebug runs dockerd without --debug, as in production (benchmarks:
	// debug logging costs dockerd time on every API call).
	NoDebug bool
	// TmpfsDataRoot puts dockerd's --data-root on a tmpfs (unmounted by
	// Close): benchmarks, so that disk flushes do not add milliseconds of
	// noise to container create and delete.
	TmpfsDataRoot bool
	// NoDocker starts only the fake internet.
	NoDocker bool
	// Engine is the Docker Engine to run; the zero value means the one
	// SelectedEngine returns (CLAWKER_E2E_ENGINE).
	Engine Engine
	// Logf prints progress; default: stderr with an "e2e:" prefix, so that
	// slow steps (debootstrap) are visible while a test runs.
	Logf func(format string, args ...any)
}

// Env is a running end-to-end environment.
type Env struct {
	opts Options
	dir  string
	logf func(format string, args ...any)

	netnsCreated bool
	fakenetCmd   *exec.Cmd
	fakenetDone  chan struct{}
	relay        *dnsRelay

	engine        Engine
	bridgeCreated bool
	hostBefore    *HostDocker // the host's Docker before Start (class 10)

	mu        sync.Mutex
	dockerd   *exec.Cmd
	dockerdCh chan struct{}
	hostState *hostState
	images    map[string]bool
	pluginRef string // the plugin's reference (InstallPluginAs); "" = PluginName
	swarm     bool   // SwarmInit ran and SwarmLeave did not

	lock      *os.File // machine-wide lock held while the Env exists
	closeOnce sync.Once
	closeErr  error
}

// Setup starts an Env for t and closes it with t.Cleanup. It fails t on error.
func Setup(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		}
	}
	e, err := Start(opts)
	if err != nil {
		t.Fatalf("start e2e environment: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close e2e environment: %v", err)
		}
	})
	return e
}

// Start starts an Env (for TestMain: call Close yourself). On error
// everything already started is torn down.
func Start(opts Options) (_ *Env, err error) {
	if opts.Hosts == nil {
		opts.Hosts = DefaultHosts()
	}
	if opts.CNAMEs == nil {
		opts.CNAMEs = DefaultCNAMEs()
	}
	if opts.Logf == nil {
		opts.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		}
	}
	if opts.Engine.Name == "" {
		eng, err := SelectedEngine()
		if err != nil {
			return nil, err
		}
		opts.Engine = eng
	}
	lock, err := lockMachine(opts.Logf)
	if err != nil {
		return nil, err
	}
	// What a dead Env left goes before the snapshot: it is not the host's.
	if err := removeStale(opts.Logf); err != nil {
		lock.Close()
		return nil, err
	}
	before, err := SnapshotHostDocker()
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("read the host's Docker state: %w", err)
	}
	dir, err := os.MkdirTemp("/tmp", "cfw-e2e-")
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("create env dir: %w", err)
	}
	e := &Env{opts: opts, dir: dir, logf: opts.Logf, images: map[string]bool{}, lock: lock, engine: opts.Engine, hostBefore: before}
	defer func() {
		if err != nil {
			if cerr := e.Close(); cerr != nil {
				e.logf("teardown after failed start: %v", cerr)
			}
		}
	}()
	start := time.Now()
	if err := e.startFakenet(); err != nil {
		return nil, err
	}
	e.logf("fake internet up in %v", time.Since(start).Round(time.Millisecond))
	if opts.NoDocker {
		return e, nil
	}
	if opts.LoopbackResolver {
		relay, err := startDNSRelay(LoopbackResolverIP+":53", DNSUpstream)
		if err != nil {
			return nil, err
		}
		e.relay = relay
	}
	start = time.Now()
	if err := e.startDockerd(); err != nil {
		return nil, err
	}
	e.logf("dockerd (%s engine) up in %v (socket %s)", e.engine.Name, time.Since(start).Round(time.Millisecond), e.Socket())
	return e, nil
}

// Engine is the Docker Engine this Env runs.
func (e *Env) Engine() Engine { return e.engine }

// Dir is the Env's private directory (sockets, roots, logs).
func (e *Env) Dir() string { return e.dir }

// Socket is the test dockerd's API socket path.
func (e *Env) Socket() string { return filepath.Join(e.dir, "docker.sock") }

// DockerHost is the DOCKER_HOST value for the test dockerd.
func (e *Env) DockerHost() string { return "unix://" + e.Socket() }

// DataRoot is the test dockerd's --data-root.
func (e *Env) DataRoot() string { return filepath.Join(e.dir, "data") }

// ExecRoot is the test dockerd's --exec-root.
func (e *Env) ExecRoot() string { return filepath.Join(e.dir, "exec") }

// NetnsDir is where the test dockerd puts container network namespaces
// (the SandboxKey directory). With LoopbackResolver the files in it are
// bind mounts visible only in dockerd's mount namespace (DockerdPID).
func (e *Env) NetnsDir() string { return filepath.Join(e.ExecRoot(), "netns") }

// StateDir is the directory given to the plugin as state.source.
func (e *Env) StateDir() string { return filepath.Join(e.dir, "state") }

// DockerdLog is the path of dockerd's log.
func (e *Env) DockerdLog() string { return filepath.Join(e.dir, "dockerd.log") }

// FakenetLogFile is the path of the fakenet process's own output.
func (e *Env) FakenetLogFile() string { return filepath.Join(e.dir, "fakenet.log") }

// CAFile is the test CA certificate (PEM) that signs every fakenet server.
func (e *Env) CAFile() string { return filepath.Join(e.dir, "ca", fakenet.CACertFile) }

// Docker runs the docker CLI against the test dockerd, with a 3 minute limit.
func (e *Env) Docker(args ...string) (stdout, stderr string, err error) {
	return e.DockerStdin(nil, args...)
}

// DockerStdin is Docker with stdin.
func (e *Env) DockerStdin(stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return e.DockerContext(ctx, stdin, args...)
}

// DockerContext is Docker with a context and stdin (nil for none).
func (e *Env) DockerContext(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	return runDocker(ctx, e.DockerHost(), filepath.Join(e.dir, "cli"), stdin, args...)
}

// runDocker runs the docker CLI against host with its own config directory.
func runDocker(ctx context.Context, host, configDir string, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, dockerCLI(), args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+host, "DOCKER_CONFIG="+configDir)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// MustDocker runs Docker and fails t on error; it returns trimmed stdout.
func (e *Env) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, _, err := e.Docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func dockerCLI() string {
	if p, err := exec.LookPath("docker"); err == nil {
		return p
	}
	return "/usr/bin/docker"
}

// controlClient talks to the fakenet control API (reachable from the host netns).
var controlClient = &http.Client{Timeout: 5 * time.Second}

// FakenetLog returns every event the fake internet recorded since the last
// reset: DNS queries, accepted connections, HTTP requests, sniffed flows.
func (e *Env) FakenetLog() ([]fakenet.Entry, error) {
	resp, err := controlClient.Get("http://" + ControlAddr + "/log")
	if err != nil {
		return nil, fmt.Errorf("get fakenet log: %w", err)
	}
	defer resp.Body.Close()
	var log []fakenet.Entry
	if err := json.NewDecoder(resp.Body).Decode(&log); err != nil {
		return nil, fmt.Errorf("decode fakenet log: %w", err)
	}
	return log, nil
}

// WaitFakenetLog polls the fake internet's log until an entry matches or
// timeout passes.
func (e *Env) WaitFakenetLog(timeout time.Duration, match func(fakenet.Entry) bool) (fakenet.Entry, error) {
	deadline := time.Now().Add(timeout)
	for {
		log, err := e.FakenetLog()
		if err != nil {
			return fakenet.Entry{}, err
		}
		for _, en := range log {
			if match(en) {
				return en, nil
			}
		}
		if time.Now().After(deadline) {
			return fakenet.Entry{}, fmt.Errorf("no matching fakenet log entry after %v (%d entries)", timeout, len(log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ResetFakenetLog drops the fake internet's log.
func (e *Env) ResetFakenetLog() error {
	resp, err := controlClient.Post("http://"+ControlAddr+"/reset", "", nil)
	if err != nil {
		return fmt.Errorf("reset fakenet log: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reset fakenet log: %s", resp.Status)
	}
	return nil
}

// Leaks returns the fakenet events whose source is not the host side
// (HostIP). The firewall never NATs, so anything from a container that
// reached the fake internet shows up here with the container's address.
func (e *Env) Leaks() ([]fakenet.Entry, error) {
	log, err := e.FakenetLog()
	if err != nil {
		return nil, err
	}
	var out []fakenet.Entry
	for _, en := range log {
		if en.Src != HostIP {
			out = append(out, en)
		}
	}
	return out, nil
}

// LoopbackDNSLog returns the queries that reached the host-netns loopback
// resolver (Options.LoopbackResolver): with that option, these are the
// queries Docker's embedded resolver forwarded from dockerd's own netns.
func (e *Env) LoopbackDNSLog() []fakenet.Entry {
	if e.relay == nil {
		return nil
	}
	return e.relay.rec.Since(0)
}

// Close tears everything down: containers, networks and plugins of the test
// dockerd, dockerd and its containerd, leftover mounts, the fake internet,
// and the host settings dockerd changed. It is idempotent.
func (e *Env) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		// The fake internet goes first (gracefully): the docker teardown
		// ends every leftover process started from the Env directory.
		errs = append(errs, e.stopFakenet())
		if e.relay != nil {
			e.relay.Close()
		}
		errs = append(errs, e.SwarmLeave())
		errs = append(errs, e.stopDockerEnv())
		if err := errors.Join(errs...); err != nil {
			e.closeErr = err
			e.logf("keeping %s for inspection: %v", e.dir, err)
			return
		}
		if err := removeTree(e.dir); err != nil {
			e.closeErr = err
		}
		e.closeErr = errors.Join(e.closeErr, e.checkHostDocker())
	})
	if e.lock != nil {
		e.lock.Close() // releases the flock
		e.lock = nil
	}
	return e.closeErr
}

// checkHostDocker fails when the Env left the host's Docker other than it
// found it (class 10): see HostDocker.Diff.
func (e *Env) checkHostDocker() error {
	if e.hostBefore == nil {
		return nil
	}
	after, err := SnapshotHostDocker()
	if err != nil {
		return fmt.Errorf("read the host's Docker state after the environment: %w", err)
	}
	if d := e.hostBefore.Diff(after); len(d) > 0 {
		return fmt.Errorf("the e2e environment changed the host's Docker:\n  %s", strings.Join(d, "\n  "))
	}
	return nil
}

// LockFile serializes environments machine-wide: the names and addresses
// are fixed, so a second Env (another test process) waits for the first.
const LockFile = "/run/clawker-fw-e2e.lock"

// lockWait bounds how long Start waits for another process's Env.
const lockWait = 15 * time.Minute

// CleanStale removes, under the machine lock, what an Env of a test
// process that died without Close left behind (removeStale). A suite that
// snapshots the host before its first Env calls it first, so that a dead
// run's bridge, rules and links are not taken for the host's and then
// reported gone when the first Env removes them.
func CleanStale(logf func(string, ...any)) error {
	lock, err := lockMachine(logf)
	if err != nil {
		return err
	}
	defer lock.Close()
	return removeStale(logf)
}

// removeStale removes a dead Env's processes and directory, its fake
// internet's netns and link, its dockerd's bridge and rules and its swarm
// nodes' namespaces. The caller holds the machine lock.
func removeStale(logf func(string, ...any)) error {
	cleanStaleEnvs(logf)
	return errors.Join(removeStaleNetns(), removeStaleBridge(), removeStaleNodes())
}

func lockMachine(logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(LockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", LockFile, err)
	}
	deadline := time.Now().Add(lockWait)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", LockFile, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another e2e environment held %s for %v", LockFile, lockWait)
		}
		if !logged {
			logf("waiting for another process's e2e environment (%s)", LockFile)
			logged = true
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// removeTree removes dir unless something is still mounted under it.
func removeTree(dir string) error {
	if m := mountsUnder(dir); len(m) > 0 {
		return fmt.Errorf("not removing %s: still mounted: %v", dir, m)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// waitHTTP polls url until it answers 200 or timeout passes.
func waitHTTP(url string, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{Timeout: time.Second}).DialContext,
	}}
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if aerr := alive(); aerr != nil {
			return aerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
