package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Node is a second dockerd on this machine, in a network namespace of its
// own, next to the Env's dockerd: a swarm worker (Node.JoinSwarm) for the
// multi-node tests. It shares the kernel, the host's mount namespace, the
// cgroup tree and the bpffs with the Env's dockerd; everything else is its
// own:
//   - the named netns NodeNetns(index) and a veth pair NodeHostLink(index)
//     (host, 10.221.<index>.1/24) <-> eth0 (10.221.<index>.2/24, default
//     route via the host side). Docker's iptables chains, bridges, the
//     plugin's nft tables and listener ports live in that namespace;
//   - data-root, exec-root (its containerd, its netns files), pidfile,
//     socket, daemon.json and log under <Env.Dir()>/node<index>;
//   - its plugin's BPF pins in NodePinDir(index) (CLAWKER_BPF_PIN_DIR):
//     two plugins on one kernel must not share pins (the plugin locks its
//     pin directory). Both plugins' programs are attached at the cgroup2
//     root; each passes every socket its own maps do not enroll.
//
// On the host it adds, and Close removes: the link, and three iptables
// rules marked with the comment NodeRuleComment(index): the node's own
// address may reach the fake internet (FORWARD both ways; Docker's FORWARD
// policy is DROP) and is rewritten to HostIP there (nat POSTROUTING), so
// that the node plugin's upstream flows look like the Env plugin's to the
// leak detector while anything else a node's container sends keeps its
// address and is reported by Env.Leaks.
//
// The node's dockerd runs without --live-restore (swarm refuses it) and is
// started with nsenter --net only: `ip netns exec` would also remount /sys,
// hiding the host's bpffs and cgroup mounts from dockerd and its plugin.
type Node struct {
	env   *Env
	index int
	dir   string

	dockerd  *exec.Cmd
	done     chan struct{}
	nodeID   string // swarm node id once joined
	hostLink bool
	rules    [][]string // iptables argument lists added (without -A/-I)
}

// NodeSubnetBase is the first two octets of the node links' /24s.
const NodeSubnetBase = "10.221"

// NodeNetns is the network namespace of node index.
func NodeNetns(index int) string { return fmt.Sprintf("cfw-node%d", index) }

// NodeHostLink is the host side of node index's veth pair.
func NodeHostLink(index int) string { return fmt.Sprintf("cfw-node%d", index) }

// NodePinDir is the BPF pin directory of node index's plugin.
func NodePinDir(index int) string { return fmt.Sprintf("/sys/fs/bpf/clawker-fw-node%d", index) }

// NodeRuleComment marks the host iptables rules of node index.
func NodeRuleComment(index int) string { return fmt.Sprintf("cfw-e2e-node%d", index) }

// NodeHostIP is the host's address on node index's link (the address a
// manager on the host advertises to that node).
func NodeHostIP(index int) string { return fmt.Sprintf("%s.%d.1", NodeSubnetBase, index) }

// NodeIP is node index's address.
func NodeIP(index int) string { return fmt.Sprintf("%s.%d.2", NodeSubnetBase, index) }

// SetupNode starts node index (1-99) for t and closes it with t.Cleanup
// (before the Env, which t.Cleanup closes later when set up earlier).
func (e *Env) SetupNode(t testing.TB, index int) *Node {
	t.Helper()
	n, err := e.StartNode(index)
	if err != nil {
		t.Fatalf("start node %d: %v", index, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node %d: %v", index, err)
		}
	})
	return n
}

// StartNode creates node index's namespace and link and starts its dockerd
// (same engine as the Env's). On error what was made is removed.
func (e *Env) StartNode(index int) (_ *Node, err error) {
	if index < 1 || index > 99 {
		return nil, fmt.Errorf("node index %d: want 1-99", index)
	}
	if e.DockerdPID() == 0 {
		return nil, errors.New("start node: the Env has no dockerd")
	}
	n := &Node{env: e, index: index, dir: filepath.Join(e.dir, fmt.Sprintf("node%d", index))}
	if err := removeStaleNode(index); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := n.Close(); cerr != nil {
				e.logf("teardown of node %d after failed start: %v", index, cerr)
			}
		}
	}()
	start := time.Now()
	if err := n.setupLink(); err != nil {
		return nil, err
	}
	if err := n.startDockerd(); err != nil {
		return nil, err
	}
	e.logf("node %d: dockerd (%s engine) up in netns %s in %v (socket %s)", index, e.engine.Name, NodeNetns(index), time.Since(start).Round(time.Millisecond), n.Socket())
	return n, nil
}

// Dir is the node's private directory (under the Env's).
func (n *Node) Dir() string { return n.dir }

// Index is the node's number.
func (n *Node) Index() int { return n.index }

// IP is the node's address (on its eth0).
func (n *Node) IP() string { return NodeIP(n.index) }

// Socket is the node dockerd's API socket path.
func (n *Node) Socket() string { return filepath.Join(n.dir, "docker.sock") }

// DockerHost is the DOCKER_HOST value for the node's dockerd.
func (n *Node) DockerHost() string { return "unix://" + n.Socket() }

// ExecRoot is the node dockerd's --exec-root.
func (n *Node) ExecRoot() string { return filepath.Join(n.dir, "exec") }

// NetnsDir is the node dockerd's SandboxKey directory.
func (n *Node) NetnsDir() string { return filepath.Join(n.ExecRoot(), "netns") }

// StateDir is the state.source of the node's plugin.
func (n *Node) StateDir() string { return filepath.Join(n.dir, "state") }

// DockerdLog is the node dockerd's log.
func (n *Node) DockerdLog() string { return filepath.Join(n.dir, "dockerd.log") }

// PinDir is the node plugin's BPF pin directory (NodePinDir).
func (n *Node) PinDir() string { return NodePinDir(n.index) }

// Docker runs the docker CLI against the node's dockerd (3 minute limit).
func (n *Node) Docker(args ...string) (stdout, stderr string, err error) {
	return n.DockerStdin(nil, args...)
}

// DockerStdin is Docker with stdin.
func (n *Node) DockerStdin(stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return runDocker(ctx, n.DockerHost(), filepath.Join(n.dir, "cli"), stdin, args...)
}

// MustDocker runs Docker and fails t on error; it returns trimmed stdout.
func (n *Node) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, _, err := n.Docker(args...)
	if err != nil {
		t.Fatalf("node %d: %v", n.index, err)
	}
	return strings.TrimSpace(out)
}

func (n *Node) setupLink() error {
	ns, link := NodeNetns(n.index), NodeHostLink(n.index)
	if err := run("ip", "netns", "add", ns); err != nil {
		return fmt.Errorf("node %d: %w", n.index, err)
	}
	n.hostLink = true
	steps := [][]string{
		{"ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"sysctl", "-qw", "net.ipv6.conf." + link + ".disable_ipv6=1"},
		{"ip", "addr", "add", NodeHostIP(n.index) + "/24", "dev", link},
		{"ip", "link", "set", link, "up"},
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", NodeIP(n.index) + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", NodeHostIP(n.index)},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("node %d: %w", n.index, err)
		}
	}
	comment := []string{"-m", "comment", "--comment", NodeRuleComment(n.index)}
	rules := [][]string{
		append([]string{"-t", "filter", "FORWARD", "-i", link, "-o", HostLink, "-j", "ACCEPT"}, comment...),
		append([]string{"-t", "filter", "FORWARD", "-i", HostLink, "-o", link, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}, comment...),
		append([]string{"-t", "nat", "POSTROUTING", "-s", NodeIP(n.index) + "/32", "-o", HostLink, "-j", "SNAT", "--to-source", HostIP}, comment...),
	}
	for _, r := range rules {
		// -I: ahead of Docker's jumps, whatever a dockerd restart re-inserts.
		args := append([]string{"-w", "-t", r[1], "-I", r[2], "1"}, r[3:]...)
		if err := run("iptables", args...); err != nil {
			return fmt.Errorf("node %d: %w", n.index, err)
		}
		n.rules = append(n.rules, r)
	}
	return nil
}

func (n *Node) dockerdArgs() []string {
	args := []string{
		"--data-root", filepath.Join(n.dir, "data"),
		"--exec-root", n.ExecRoot(),
		"--pidfile", filepath.Join(n.dir, "dockerd.pid"),
		"-H", n.DockerHost(),
		"--config-file", filepath.Join(n.dir, "daemon.json"),
		// Its own namespace: docker0 and the address pool are its own too,
		// but masquerading stays off so a leak keeps its source address.
		"--ip-masq=false",
		"--userland-proxy=false",
		"--dns", FakenetIP,
	}
	if !n.env.opts.NoDebug {
		args = append(args, "--debug")
	}
	return args
}

func (n *Node) startDockerd() error {
	for _, d := range []string{filepath.Join(n.dir, "data"), n.ExecRoot(), n.StateDir(), filepath.Join(n.dir, "cli")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := shareDir(n.NetnsDir()); err != nil {
		return err
	}
	cfg := "{}\n"
	if !n.env.engine.Current() {
		// Docker 20.10 would otherwise create /etc/docker/key.json (class 10).
		cfg = fmt.Sprintf("{\"deprecated-key-path\": %q}\n", filepath.Join(n.dir, "key.json"))
	}
	if err := os.WriteFile(filepath.Join(n.dir, "daemon.json"), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write node daemon.json: %w", err)
	}
	logf, err := os.OpenFile(n.DockerdLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open node dockerd log: %w", err)
	}
	defer logf.Close()
	args := append([]string{"--net=" + filepath.Join("/run/netns", NodeNetns(n.index)), "--", n.env.engine.Dockerd}, n.dockerdArgs()...)
	cmd := exec.Command("nsenter", args...)
	// Swarm: a task runs the node's local image without a registry pull.
	cmd.Env = append(n.env.engine.dockerdEnv(), "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start node dockerd: %w", err)
	}
	n.dockerd, n.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(n.done)
	}()
	return waitPing(n.Socket(), n.done, n.DockerdLog(), dockerdStartTimeout)
}

// CopyImage copies image ref from the Env's dockerd into the node's
// (docker save | docker load: no registry here; swarm then runs a task of a
// service on ref with the node's local image).
func (n *Node) CopyImage(ref string) error {
	cmd := exec.Command(dockerCLI(), "save", ref)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+n.env.DockerHost(), "DOCKER_CONFIG="+filepath.Join(n.env.dir, "cli"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("copy image %s: %w", ref, err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("copy image %s: %w", ref, err)
	}
	_, _, lerr := n.DockerStdin(out, "load", "-q")
	if werr := cmd.Wait(); werr != nil {
		return fmt.Errorf("copy image %s: docker save: %w: %s", ref, werr, errb.String())
	}
	return lerr
}

// PluginSettings are the Env's PluginSettings for the node's dockerd: its
// netns directory, socket and state directory, and its own pin directory.
func (n *Node) PluginSettings() []string {
	var out []string
	for _, s := range n.env.PluginSettings() {
		switch k, _, _ := strings.Cut(s, "="); k {
		case "netns.source":
			s = k + "=" + n.NetnsDir()
		case "docker-sock.source":
			s = k + "=" + n.Socket()
		case "state.source":
			s = k + "=" + n.StateDir()
		}
		out = append(out, s)
	}
	return append(out, "CLAWKER_BPF_PIN_DIR="+n.PinDir())
}

// InstallPlugin creates ref from buildDir in the node's dockerd, applies
// settings (default PluginSettings()) and enables it, after preparing the
// host side (bpffs, the netns and state directories, the test CA).
func (n *Node) InstallPlugin(ref, buildDir string, settings ...string) error {
	if len(settings) == 0 {
		settings = n.PluginSettings()
	}
	if err := EnsureHostBPFFS(); err != nil {
		return err
	}
	ca, err := os.ReadFile(n.env.CAFile())
	if err != nil {
		return fmt.Errorf("read test ca: %w", err)
	}
	if err := os.WriteFile(filepath.Join(n.StateDir(), PluginTestCAName), ca, 0o644); err != nil {
		return fmt.Errorf("copy test ca: %w", err)
	}
	start := time.Now()
	for _, args := range [][]string{
		{"plugin", "create", ref, buildDir},
		append([]string{"plugin", "set", ref}, settings...),
		{"plugin", "enable", "--timeout", "60", ref},
	} {
		if _, _, err := n.Docker(args...); err != nil {
			return fmt.Errorf("node %d: %w", n.index, err)
		}
	}
	n.env.logf("node %d: plugin %s enabled in %v", n.index, ref, time.Since(start).Round(time.Millisecond))
	return nil
}

// JoinSwarm joins the node to the Env dockerd's swarm as a worker, at the
// manager's address and port (the node listens on its own address and the
// same port). The manager must advertise an address the node reaches
// (NodeHostIP, or any host address but loopback: the node's default route
// is the host).
func (n *Node) JoinSwarm() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	token, _, err := n.env.DockerContext(ctx, nil, "swarm", "join-token", "-q", "worker")
	if err != nil {
		return err
	}
	managers, _, err := n.env.DockerContext(ctx, nil, "info", "-f", "{{range .Swarm.RemoteManagers}}{{.Addr}} {{end}}")
	if err != nil {
		return err
	}
	addr := strings.Fields(managers)
	if len(addr) == 0 {
		return fmt.Errorf("node %d: the Env's dockerd is no swarm manager", n.index)
	}
	_, port, err := net.SplitHostPort(addr[0])
	if err != nil {
		return fmt.Errorf("node %d: manager address %q: %w", n.index, addr[0], err)
	}
	start := time.Now()
	if _, _, err := n.Docker("swarm", "join", "--token", strings.TrimSpace(token),
		"--advertise-addr", net.JoinHostPort(n.IP(), port), "--listen-addr", net.JoinHostPort(n.IP(), port), addr[0]); err != nil {
		return fmt.Errorf("node %d: %w", n.index, err)
	}
	id, _, err := n.Docker("info", "-f", "{{.Swarm.NodeID}}")
	if err != nil {
		return err
	}
	n.nodeID = strings.TrimSpace(id)
	n.env.logf("node %d: joined the swarm as worker %s in %v", n.index, n.nodeID, time.Since(start).Round(time.Millisecond))
	return nil
}

// Owns reports whether process pid belongs to the node (its dockerd,
// containerd, shims, plugin, containers), as Env.Owns does for the Env.
func (n *Node) Owns(pid int) bool { return ownedBy(n.dir, pid) }

// NodeID is the node's swarm node id ("" before JoinSwarm).
func (n *Node) NodeID() string { return n.nodeID }

// Close leaves the swarm (and removes the node from the manager's list),
// removes the node's containers and plugins, stops its dockerd, ends what it
// left by PID, unmounts its mounts, removes its pins, the host's iptables
// rules and link of the node, and its namespace. It is idempotent.
func (n *Node) Close() error {
	var errs []error
	if n.dockerd != nil {
		if n.nodeID != "" {
			_, _, _ = n.Docker("swarm", "leave", "--force")
			if n.env.DockerdPID() != 0 {
				_, _, _ = n.env.Docker("node", "rm", "--force", n.nodeID)
			}
			n.nodeID = ""
		}
		if out, _, err := n.Docker("ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
			_, _, _ = n.Docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...)
		}
		if out, _, err := n.Docker("plugin", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				_, _, _ = n.Docker("plugin", "disable", "-f", id)
				if _, _, err := n.Docker("plugin", "rm", "-f", id); err != nil {
					errs = append(errs, err)
				}
			}
		}
		_ = n.dockerd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(dockerdStopTimeout):
			_ = n.dockerd.Process.Kill()
			<-n.done
			errs = append(errs, fmt.Errorf("node %d: dockerd did not stop within %v (killed)", n.index, dockerdStopTimeout))
		}
		n.dockerd = nil
	}
	killProcessesUsing(n.dir)
	errs = append(errs, unmountUnder(n.dir))
	// Unpinning the links detaches the node plugin's programs.
	if err := os.RemoveAll(n.PinDir()); err != nil {
		errs = append(errs, fmt.Errorf("remove node pins: %w", err))
	}
	for _, r := range n.rules {
		args := append([]string{"-w", "-t", r[1], "-D", r[2]}, r[3:]...)
		errs = append(errs, run("iptables", args...))
	}
	n.rules = nil
	if n.hostLink {
		errs = append(errs, removeNodeLink(n.index))
		n.hostLink = false
	}
	return errors.Join(errs...)
}

// removeNodeLink deletes node index's namespace and the host side of its
// link (deleting the namespace deletes the pair, asynchronously).
func removeNodeLink(index int) error {
	var errs []error
	ns, link := NodeNetns(index), NodeHostLink(index)
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
		errs = append(errs, run("ip", "netns", "del", ns))
	}
	for i := 0; i < 50; i++ {
		if _, err := net.InterfaceByName(link); err != nil {
			return errors.Join(errs...)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := run("ip", "link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeStaleNode removes what a node of a test process that died without
// Close left on the host: its iptables rules (found by their comment), its
// namespace and link, its pins. A namespace with processes in it belongs to
// a live node: refuse.
func removeStaleNode(index int) error {
	ns := NodeNetns(index)
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			return fmt.Errorf("node %d is running: processes %v in netns %s", index, pids, ns)
		}
	}
	var errs []error
	errs = append(errs, deleteRules([]string{"iptables"}, []string{"filter", "nat"}, func(rule string) bool {
		return strings.Contains(rule, "--comment "+NodeRuleComment(index))
	}))
	errs = append(errs, removeNodeLink(index))
	if err := os.RemoveAll(NodePinDir(index)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeStaleNodes runs removeStaleNode for every node namespace left on the
// host (at Env start, under the machine lock: no node is live then).
func removeStaleNodes() error {
	var errs []error
	ents, _ := os.ReadDir("/run/netns")
	for _, ent := range ents {
		var index int
		if _, err := fmt.Sscanf(ent.Name(), "cfw-node%d", &index); err == nil && NodeNetns(index) == ent.Name() {
			errs = append(errs, removeStaleNode(index))
		}
	}
	return errors.Join(errs...)
}
