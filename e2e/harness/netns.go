package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
)

// run runs a command and returns an error carrying its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func inNetns(args ...string) error {
	return run("ip", append([]string{"netns", "exec", NetnsName}, args...)...)
}

// removeStaleNetns removes a namespace and link left by a run that died
// without Close. A namespace with processes in it belongs to a live Env
// (fakenet dies with its test process: Pdeathsig), possibly of a harness
// build that predates LockFile: refuse to touch it.
func removeStaleNetns() error {
	if _, err := os.Stat(filepath.Join("/run/netns", NetnsName)); err == nil {
		out, _ := exec.Command("ip", "netns", "pids", NetnsName).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			return fmt.Errorf("another e2e environment is running: processes %v in netns %s", pids, NetnsName)
		}
		_ = run("ip", "netns", "del", NetnsName)
	}
	if _, err := net.InterfaceByName(HostLink); err == nil {
		_ = run("ip", "link", "del", HostLink)
	}
	return nil
}

// serviceIPs returns every address assigned inside the namespace besides
// FakenetIP: the service range plus any host IP outside it, except HostIP,
// which is the host's own (names pointing at it stand for the host).
func (e *Env) serviceIPs() []string {
	seen := map[string]bool{}
	var ips []string
	for i := ServiceIPFirst; i <= ServiceIPLast; i++ {
		ip := fmt.Sprintf("10.220.0.%d", i)
		seen[ip] = true
		ips = append(ips, ip)
	}
	for _, h := range e.opts.Hosts {
		if !seen[h.IP] && h.IP != HostIP {
			seen[h.IP] = true
			ips = append(ips, h.IP)
		}
	}
	return ips
}

func (e *Env) setupNetns() error {
	if err := removeStaleNetns(); err != nil {
		return err
	}
	if err := run("ip", "netns", "add", NetnsName); err != nil {
		return fmt.Errorf("set up fake internet: %w", err)
	}
	e.netnsCreated = true
	steps := [][]string{
		{"ip", "link", "add", HostLink, "type", "veth", "peer", "name", "eth0", "netns", NetnsName},
		// No IPv6 on the link: nothing but what the tests send crosses it.
		{"sysctl", "-qw", "net.ipv6.conf." + HostLink + ".disable_ipv6=1"},
		{"ip", "addr", "add", HostIP + "/24", "dev", HostLink},
		{"ip", "link", "set", HostLink, "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("set up fake internet: %w", err)
		}
	}
	inner := [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", FakenetIP + "/24", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		// Replies to whatever reaches the fake internet go back through the
		// host, so that a leaked connection completes and is recorded.
		{"ip", "route", "add", "default", "via", HostIP},
	}
	for _, ip := range e.serviceIPs() {
		inner = append(inner, []string{"ip", "addr", "add", ip + "/32", "dev", "eth0"})
	}
	for _, s := range inner {
		if err := inNetns(s...); err != nil {
			return fmt.Errorf("set up fake internet: %w", err)
		}
	}
	return nil
}

// buildFakenet compiles cmd/clawker-fakenet into the Env directory.
func (e *Env) buildFakenet() (string, error) {
	bin := filepath.Join(e.dir, "clawker-fakenet")
	gobin := "go"
	if _, err := exec.LookPath(gobin); err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/clawker-fw/clawker-fw/cmd/clawker-fakenet")
	cmd.Dir = moduleDir()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build clawker-fakenet: %w: %s", err, out)
	}
	return bin, nil
}

// moduleDir finds the module root from the working directory (tests run in
// their package directory inside the module).
func moduleDir() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

func (e *Env) startFakenet() error {
	bin, err := e.buildFakenet()
	if err != nil {
		return err
	}
	if err := e.setupNetns(); err != nil {
		return err
	}
	cfg := fakenet.Config{
		CADir:      filepath.Join(e.dir, "ca"),
		Hosts:      e.opts.Hosts,
		CNAMEs:     e.opts.CNAMEs,
		DNSAddrs:   []string{FakenetIP},
		HTTPSPorts: HTTPSPorts,
		HTTPPorts:  HTTPPorts,
		EchoPorts:  EchoPorts,
		Control:    ControlAddr,
		SniffIface: "eth0",
	}
	if !e.opts.NoSSH {
		sshDir := filepath.Join(e.dir, "ssh")
		if err := os.MkdirAll(sshDir, 0o700); err != nil {
			return fmt.Errorf("create ssh dir: %w", err)
		}
		if err := run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "clawker-e2e", "-f", e.SSHKeyFile()); err != nil {
			return err
		}
		pub, err := os.ReadFile(e.SSHKeyFile() + ".pub")
		if err != nil {
			return fmt.Errorf("read ssh key: %w", err)
		}
		keys := filepath.Join(sshDir, "authorized_keys")
		if err := os.WriteFile(keys, append(pub, []byte(e.opts.SSHAuthorizedKeys+"\n")...), 0o600); err != nil {
			return fmt.Errorf("write authorized_keys: %w", err)
		}
		cfg.SSH = &fakenet.SSHConfig{AuthorizedKeys: keys, Dir: filepath.Join(sshDir, "server")}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal fakenet config: %w", err)
	}
	cfgPath := filepath.Join(e.dir, "fakenet.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		return fmt.Errorf("write fakenet config: %w", err)
	}
	logf, err := os.Create(e.FakenetLogFile())
	if err != nil {
		return fmt.Errorf("create fakenet log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", NetnsName, bin, "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The fake internet dies with the test process even if Close never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start clawker-fakenet: %w", err)
	}
	e.fakenetCmd = cmd
	e.fakenetDone = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(e.fakenetDone)
	}()
	alive := func() error {
		select {
		case <-e.fakenetDone:
			out, _ := os.ReadFile(e.FakenetLogFile())
			return fmt.Errorf("clawker-fakenet exited: %s", strings.TrimSpace(string(out)))
		default:
			return nil
		}
	}
	return waitHTTP("http://"+ControlAddr+"/healthz", 10*time.Second, alive)
}

// SSHKeyFile is the private key (ed25519, no passphrase) that the fake
// internet's sshd accepts for root; the public half is SSHKeyFile()+".pub".
func (e *Env) SSHKeyFile() string { return filepath.Join(e.dir, "ssh", "id_ed25519") }

func (e *Env) stopFakenet() error {
	var errs []error
	if e.fakenetCmd != nil && e.fakenetCmd.Process != nil {
		_ = e.fakenetCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.fakenetDone:
		case <-time.After(5 * time.Second):
			_ = e.fakenetCmd.Process.Kill()
			<-e.fakenetDone
		}
	}
	if !e.netnsCreated {
		return nil // never touch another Env's namespace
	}
	if _, err := os.Stat(filepath.Join("/run/netns", NetnsName)); err == nil {
		if err := run("ip", "netns", "del", NetnsName); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting the namespace deletes the veth pair, asynchronously; wait
	// for it, then delete the link by hand if it is still there.
	for i := 0; i < 50; i++ {
		if _, err := net.InterfaceByName(HostLink); err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := net.InterfaceByName(HostLink); err == nil {
		if err := run("ip", "link", "del", HostLink); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
