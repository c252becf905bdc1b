// Command bridge is clawker-fw's headline data-plane benchmark (issue 13):
// the same client in a container on a clawker-fw network and in a container
// on a plain Docker bridge network, same host, same server in a network
// namespace of its own reached through the host, ratios side by side in one
// run.
//
// Topology: a private test dockerd (package e2e/harness, without --debug as
// in production, data root on tmpfs) with the plugin installed from
// build/plugin; the fake internet's DNS (harness) answers
// bench.example.test with 10.226.0.2, which lives in the netns
// cfw-bench-srv (veth cfw-bsrv0, host side 10.226.0.1/24) created and
// removed here, where ./bench/bridge/load serves HTTPS (h1 + h2, a leaf of
// the harness's test CA) and plain HTTP. Busybox containers, each with the
// static load binary bind-mounted, run `docker exec ... load MODE` and print
// JSON:
//
//	bridge    a user-defined bridge network (the Docker default driver)
//	cfw       a clawker-fw network allowing bench.example.test (https
//	          passthrough) and http://bench.example.test
//	cfw-insp  a clawker-fw network with -o clawker.tls.inspect=all (the
//	          client trusts the plugin's CA as well)
//	floor     the bridge container's client through the inspection floor
//	          (bench/internal/floor: a minimal Go TLS-terminating relay, no
//	          policy) run on the host at the bridge's gateway (load relay)
//	floor-pass the bridge container's client through the passthrough floor
//	          (load passrelay: read the ClientHello's SNI, or a plain HTTP
//	          request head with its Host, dial the server, splice(2); no
//	          policy) at the same place, for the passthrough and plain HTTP
//	          workloads (-passfloor)
//
// The builtin engine runs with each -modes setting (default: the plugin's
// default, true@1048576, and false; also true or download at once, and
// @bytes for CLAWKER_PROXY_KERNEL_SPLICE_AFTER; plugin disabled, set,
// enabled between blocks; the cfw containers are made again): the main
// table shows the default and false as its two columns, a per-arm table
// every setting and the passthrough floor. Rounds alternate
// the order of the blocks and of the arms within each workload. -only
// runs some workloads (the kernel-splice variants:
// -modes true,download,false,true@1048576 -only bulk-down,bulk-up,https-newconn,ka-h1).
//
// It needs root (dockerd, netns, BPF) and the plugin build. Run from the
// repository root under the e2e lock (make bench-bridge does both):
//
//	make plugin && flock -o /tmp/clawker-e2e.lock go run ./bench/bridge -out bench/results/bridge.txt
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/clawker-fw/clawker-fw/plugin/wire"
)

const (
	benchHost = "bench.example.test"
	srvNetns  = "cfw-bench-srv"
	srvLink   = "cfw-bsrv0"
	srvSubnet = "10.226.0.0/24"
	srvHostIP = "10.226.0.1"
	srvIP     = "10.226.0.2"

	netBridge  = "cfw-bench-bridge"
	netCFW     = "cfw-bench-fw"
	netInspect = "cfw-bench-insp"
	subCFW     = "10.231.251.0/24"
	subInspect = "10.231.252.0/24"
	subBridge  = "10.231.253.0/24"
	// floorAddr: the inspection floor relay (load relay) on the host, at
	// the plain bridge network's gateway; arm "floor" is the bridge
	// container's client going through it.
	floorAddr = "10.231.253.1:8443"
	netFloor  = "floor"
	// passFloorAddr: the passthrough floor relay (load passrelay) on the
	// host, same place; arm "floor-pass" goes through it.
	passFloorAddr = "10.231.253.1:9443"
	netPassFloor  = "floor-pass"
)

type opts struct {
	out, md, pluginDir  string
	modes               []string        // kernel-splice settings, one block each per round
	only                map[string]bool // workloads to run (empty: all)
	passFloor           bool            // the passthrough floor arm
	rounds, newconnN    int
	bulkBytes           int64
	kaDur               time.Duration
	kaConns, dnsQueries int
}

func main() {
	var o opts
	flag.StringVar(&o.out, "out", "bench/results/bridge.txt", "report file")
	flag.StringVar(&o.md, "md", "build/bridge.md", "the same rows as a Markdown table (for README's Measured section)")
	flag.StringVar(&o.pluginDir, "plugin", "build/plugin", "plugin build directory (make plugin)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each runs both kernel-splice settings)")
	flag.Int64Var(&o.bulkBytes, "bulk", 256<<20, "bytes per bulk transfer")
	flag.IntVar(&o.newconnN, "newconn", 300, "new connections per latency run")
	flag.DurationVar(&o.kaDur, "ka", 3*time.Second, "measured duration of a keep-alive run")
	flag.IntVar(&o.kaConns, "conns", 64, "keep-alive connections")
	flag.IntVar(&o.dnsQueries, "dns", 200, "DNS queries per run (log-line count)")
	modes := flag.String("modes", defaultMode+",false", "kernel-splice settings, comma separated: CLAWKER_PROXY_KERNEL_SPLICE value (true, download, false), @bytes for CLAWKER_PROXY_KERNEL_SPLICE_AFTER (e.g. true@1048576; none: 0, at once); the plugin's default "+defaultMode+" and false are the report's main columns")
	only := flag.String("only", "", "run only these workloads, comma separated (e.g. bulk-down,bulk-up,https-newconn,ka-h1: the passthrough ones)")
	flag.BoolVar(&o.passFloor, "passfloor", true, "add the passthrough floor arm (a minimal SNI relay on the host, no policy) to the passthrough workloads")
	flag.Parse()
	o.modes = strings.Split(*modes, ",")
	for _, m := range o.modes {
		if v, _, _ := strings.Cut(m, "@"); v != "true" && v != "false" && v != "download" {
			fmt.Fprintf(os.Stderr, "bench/bridge: -modes: %q is not true, download or false (with an optional @bytes)\n", m)
			os.Exit(2)
		}
	}
	o.only = map[string]bool{}
	for _, w := range strings.Split(*only, ",") {
		if w != "" {
			o.only[w] = true
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/bridge:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench/bridge: "+format+"\n", args...) }

// bench is one run's environment.
type bench struct {
	o      opts
	e      *harness.Env
	dir    string // e.Dir()/bridge, bind-mounted read-only at /b
	img    string
	mode   string // the kernel-splice setting now (-modes)
	srvPID int    // the server process (in its netns)
	// floorPID, passFloorPID: the floor relays on the host (0: not running)
	floorPID, passFloorPID int
	blocks                 int // blocks run so far
	// samples[workload][arm] (arm: bridge, or cfw/cfw-insp + "/on" or "/off")
	samples map[string]map[string][]sample
	relayed map[string]int // message of a relayed plugin line (cfw arms) -> count
}

// sample is one docker exec of the load client plus what the host saw.
type sample struct {
	MBps, P50, P99, RPS float64
	HostCPUPerGB        float64 // host-wide busy CPU seconds per GB (bulk)
	HostBusy            float64 // host-wide busy fraction during the transfer (bulk)
	PathCPUPerGB        float64 // client cgroup + server + plugin CPU seconds per GB (bulk)
	PluginCPU           float64 // plugin + sidecar CPU seconds during the exec
	Secs                float64 // the client's own measured duration
	Lines               int     // plugin lines dockerd relayed during the exec
	Flows               int     // connections (or DNS queries) the exec made
	Proto               string
	Block               int // the block it ran in (pairs a clawker-fw arm with the bridge arm next to it)
}

func run(o opts) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (a private dockerd, a netns and the plugin)")
	}
	if o.pluginDir, err = filepath.Abs(o.pluginDir); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(o.pluginDir, "rootfs", "bin", "clawker-fw-plugin")); err != nil {
		return fmt.Errorf("plugin build missing (run make plugin): %w", err)
	}
	load0, _ := os.ReadFile("/proc/loadavg")
	hosts := append(harness.DefaultHosts(), fakenet.Host{Name: benchHost, IP: srvIP})
	e, err := harness.Start(harness.Options{NoSSH: true, NoDebug: true, TmpfsDataRoot: true, Hosts: hosts})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := e.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := harness.CleanPluginHostState(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	b := &bench{o: o, e: e, dir: filepath.Join(e.Dir(), "bridge"), samples: map[string]map[string][]sample{}, relayed: map[string]int{}}
	if err := b.build(); err != nil {
		return err
	}
	stop, err := b.startServer()
	defer stop() // before e.Close: the host snapshot must match at Close
	if err != nil {
		return err
	}
	if b.img, err = e.ImportBusybox(); err != nil {
		return err
	}
	settings := e.PluginSettings()
	for i, s := range settings {
		if strings.HasPrefix(s, "CLAWKER_ALLOW_PRIVATE_UPSTREAMS=") {
			settings[i] = s + "," + srvSubnet
		}
	}
	if err := e.InstallPlugin(o.pluginDir, append(settings, spliceSettings(o.modes[0])...)...); err != nil {
		return err
	}
	b.mode = o.modes[0]
	if _, _, err := e.Docker("network", "create", "--subnet", subBridge, netBridge); err != nil {
		return err
	}
	stopFloor, err := b.startFloor()
	defer stopFloor()
	if err != nil {
		return err
	}
	if o.passFloor {
		stopPass, err := b.startPassFloor()
		defer stopPass()
		if err != nil {
			return err
		}
	}
	if err := b.cfwNetworks(); err != nil {
		return err
	}
	if err := b.container(netBridge); err != nil {
		return err
	}
	if err := b.cfwContainers(); err != nil {
		return err
	}
	start := time.Now()
	for r := 0; r < o.rounds; r++ {
		modes := slices.Clone(o.modes)
		if r%2 == 1 {
			slices.Reverse(modes)
		}
		for _, m := range modes {
			if err := b.setSplice(m); err != nil {
				return err
			}
			logf("round %d/%d kernel splice %s", r+1, o.rounds, m)
			if err := b.block(r); err != nil {
				return err
			}
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	report, md := b.format(strings.TrimSpace(string(load0)), strings.TrimSpace(string(load1)), time.Since(start))
	fmt.Print(report)
	if o.md != "" {
		if err := os.MkdirAll(filepath.Dir(o.md), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.md, []byte(md), 0o644); err != nil {
			return err
		}
	}
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(o.out, []byte(report), 0o644)
	}
	return nil
}

// build compiles the load binary (static) into the directory the
// containers mount, and issues the server's leaf from the test CA.
func (b *bench) build() error {
	if err := os.MkdirAll(filepath.Join(b.dir, "ca"), 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(b.dir, "load"), "./bench/bridge/load")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build load: %v: %s", err, out)
	}
	for _, f := range []string{fakenet.CACertFile, fakenet.CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(b.e.CAFile()), f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(b.dir, "ca", f), data, 0o600); err != nil {
			return err
		}
	}
	if _, err := fakenet.EnsureCA(filepath.Join(b.dir, "ca"), []string{benchHost}, []net.IP{net.ParseIP(srvIP)}); err != nil {
		return err
	}
	// The key of the test CA stays out of the containers' mount.
	if err := os.Remove(filepath.Join(b.dir, "ca", fakenet.CAKeyFile)); err != nil {
		return err
	}
	return os.Chmod(filepath.Join(b.dir, "ca", fakenet.LeafKeyFile), 0o644)
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// startServer makes the server's netns and starts load serve in it. The
// returned stop ends the server and removes the netns (and with it the
// veth): nothing is left on the host.
func (b *bench) startServer() (func(), error) {
	var srv *exec.Cmd
	stop := func() {
		if srv != nil && srv.Process != nil {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
		if _, err := os.Stat("/run/netns/" + srvNetns); err == nil {
			if err := sh("ip", "netns", "del", srvNetns); err != nil {
				logf("cleanup: %v", err)
			}
		}
	}
	if _, err := os.Stat("/run/netns/" + srvNetns); err == nil {
		// A previous run died; its netns is ours by name (nothing else uses it).
		if err := sh("ip", "netns", "del", srvNetns); err != nil {
			return stop, err
		}
	}
	steps := [][]string{
		{"ip", "netns", "add", srvNetns},
		{"ip", "link", "add", srvLink, "type", "veth", "peer", "name", "eth0", "netns", srvNetns},
		{"sysctl", "-qw", "net.ipv6.conf." + srvLink + ".disable_ipv6=1"},
		{"ip", "addr", "add", srvHostIP + "/24", "dev", srvLink},
		{"ip", "link", "set", srvLink, "up"},
		{"ip", "netns", "exec", srvNetns, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", srvNetns, "ip", "addr", "add", srvIP + "/24", "dev", "eth0"},
		{"ip", "netns", "exec", srvNetns, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", srvNetns, "ip", "route", "add", "default", "via", srvHostIP},
	}
	for _, s := range steps {
		if err := sh(s[0], s[1:]...); err != nil {
			return stop, err
		}
	}
	ca := filepath.Join(b.dir, "ca")
	srv = exec.Command("ip", "netns", "exec", srvNetns, filepath.Join(b.dir, "load"), "serve",
		"-cert", filepath.Join(ca, fakenet.LeafCertFile), "-key", filepath.Join(ca, fakenet.LeafKeyFile),
		"-https", srvIP+":443", "-http", srvIP+":80")
	srv.Stdout, srv.Stderr = os.Stderr, os.Stderr
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return stop, err
	}
	b.srvPID = srv.Process.Pid // ip netns exec execs the server in place
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := net.DialTimeout("tcp4", srvIP+":443", time.Second)
		if err == nil {
			c.Close()
			return stop, nil
		}
		if time.Now().After(deadline) {
			return stop, fmt.Errorf("server in %s not reachable: %v", srvNetns, err)
		}
	}
}

// startFloor runs the floor relay (load relay) on the host in front of the
// server, with the server's own leaf: the bridge container's client trusts
// it already.
func (b *bench) startFloor() (func(), error) {
	ca := filepath.Join(b.dir, "ca")
	stop, pid, err := b.startRelay("floor relay", floorAddr, "relay", "-host", benchHost,
		"-cert", filepath.Join(ca, fakenet.LeafCertFile), "-key", filepath.Join(ca, fakenet.LeafKeyFile),
		"-ca", filepath.Join(ca, fakenet.CACertFile), "-listen", floorAddr, "-upstream", srvIP+":443")
	b.floorPID = pid
	return stop, err
}

// startPassFloor runs the passthrough floor relay (load passrelay) on the
// host in front of the server.
func (b *bench) startPassFloor() (func(), error) {
	stop, pid, err := b.startRelay("passthrough floor relay", passFloorAddr, "passrelay", "-listen", passFloorAddr,
		"-upstream", srvIP+":443", "-upstream-http", srvIP+":80")
	b.passFloorPID = pid
	return stop, err
}

// startRelay starts `load args...` on the host and waits until it accepts
// connections at addr. It returns the process's stop function (always
// callable) and its pid (0 when it did not start).
func (b *bench) startRelay(what, addr string, args ...string) (func(), int, error) {
	cmd := exec.Command(filepath.Join(b.dir, "load"), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stop := func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	if err := cmd.Start(); err != nil {
		return stop, 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			c.Close()
			return stop, cmd.Process.Pid, nil
		}
		if time.Now().After(deadline) {
			return stop, cmd.Process.Pid, fmt.Errorf("%s at %s not reachable: %v", what, addr, err)
		}
	}
}

func (b *bench) cfwNetworks() error {
	if _, _, err := b.e.Docker("network", "create", "-d", harness.PluginName, "--subnet", subCFW,
		"-o", "clawker.allow="+benchHost+",http://"+benchHost, netCFW); err != nil {
		return err
	}
	_, _, err := b.e.Docker("network", "create", "-d", harness.PluginName, "--subnet", subInspect,
		"-o", "clawker.allow="+benchHost, "-o", "clawker.tls.inspect=all", netInspect)
	return err
}

// container runs the client container of a network (named after it).
func (b *bench) container(network string) error {
	_, _, err := b.e.Docker("run", "-d", "--name", network, "--network", network, "-v", b.dir+":/b:ro", b.img, "sleep", "1000000")
	return err
}

func (b *bench) cfwContainers() error {
	for _, n := range []string{netCFW, netInspect} {
		if err := b.container(n); err != nil {
			return err
		}
	}
	// The plugin's CA, for the inspected arm (on the host: state/ca/ca.crt).
	data, err := os.ReadFile(filepath.Join(b.e.StateDir(), "ca", "ca.crt"))
	if err != nil {
		return fmt.Errorf("plugin CA: %w", err)
	}
	return os.WriteFile(filepath.Join(b.dir, "ca", "plugin-ca.crt"), data, 0o644)
}

// spliceSettings are the plugin settings of a -modes entry.
func spliceSettings(mode string) []string {
	v, after, _ := strings.Cut(mode, "@")
	if after == "" {
		after = "0"
	}
	return []string{"CLAWKER_PROXY_KERNEL_SPLICE=" + v, "CLAWKER_PROXY_KERNEL_SPLICE_AFTER=" + after}
}

// setSplice switches the plugin's kernel splice: the cfw containers are
// removed, the plugin disabled, set and enabled, the containers made again.
func (b *bench) setSplice(mode string) error {
	if mode == b.mode {
		return nil
	}
	logf("kernel splice -> %s", mode)
	if _, _, err := b.e.Docker("rm", "-f", netCFW, netInspect); err != nil {
		return err
	}
	ref := b.e.PluginRef()
	steps := [][]string{
		{"plugin", "disable", "-f", ref},
		append([]string{"plugin", "set", ref}, spliceSettings(mode)...),
		{"plugin", "enable", ref},
	}
	for _, s := range steps {
		if _, _, err := b.e.Docker(s...); err != nil {
			return err
		}
	}
	b.mode = mode
	return b.cfwContainers()
}

// workload is one client invocation measured on several arms.
type workload struct {
	name  string
	args  []string
	arms  []string // networks
	flows int      // connections (or queries) per exec, for the log-line count
}

func (b *bench) workloads() []workload {
	o := b.o
	bulk := strconv.FormatInt(o.bulkBytes, 10)
	nc := strconv.Itoa(o.newconnN)
	ka := []string{"keepalive", "-conns", strconv.Itoa(o.kaConns), "-dur", o.kaDur.String()}
	both := []string{netBridge, netCFW}
	pass := both // the passthrough workloads: the passthrough floor too
	if o.passFloor {
		pass = []string{netBridge, netCFW, netPassFloor}
	}
	all := []workload{
		{"bulk-down", []string{"bulk", "-dir", "down", "-bytes", bulk}, pass, 1},
		{"bulk-up", []string{"bulk", "-dir", "up", "-bytes", bulk}, pass, 1},
		{"https-newconn", []string{"newconn", "-scheme", "https", "-n", nc}, pass, o.newconnN + 5},
		{"http-newconn", []string{"newconn", "-scheme", "http", "-n", nc}, pass, o.newconnN + 5},
		{"ka-h1", ka, append(slices.Clone(pass), netInspect, netFloor), o.kaConns},
		{"ka-h2", append(slices.Clone(ka), "-h2"), []string{netBridge, netInspect, netFloor}, o.kaConns},
		{"dns", []string{"dns", "-n", strconv.Itoa(o.dnsQueries)}, both, o.dnsQueries},
	}
	if len(o.only) == 0 {
		return all
	}
	var ws []workload
	for _, w := range all {
		if o.only[w.name] {
			ws = append(ws, w)
		}
	}
	return ws
}

func (b *bench) armName(network string) string {
	switch network {
	case netBridge:
		return "bridge"
	case netCFW:
		return "cfw/" + modeLabel(b.mode)
	case netFloor, netPassFloor:
		return network
	}
	return "cfw-insp/" + modeLabel(b.mode)
}

// defaultMode is the plugin's default kernel splice setting as a -modes
// entry (plugin/wire).
var defaultMode = wire.DefaultKernelSplice + "@" + strconv.FormatInt(wire.DefaultKernelSpliceAfter, 10)

// modeLabel names a -modes entry in arm names: on for the plugin's default
// and off for false (the report's two main columns), else the entry itself.
func modeLabel(mode string) string {
	switch mode {
	case defaultMode:
		return "on"
	case "false":
		return "off"
	}
	return mode
}

func (b *bench) block(round int) error {
	defer func() { b.blocks++ }()
	for _, w := range b.workloads() {
		arms := slices.Clone(w.arms)
		if round%2 == 1 {
			slices.Reverse(arms)
		}
		for _, network := range arms {
			s, err := b.exec(network, w)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", w.name, network, err)
			}
			if b.samples[w.name] == nil {
				b.samples[w.name] = map[string][]sample{}
			}
			arm := b.armName(network)
			s.Block = b.blocks
			b.samples[w.name][arm] = append(b.samples[w.name][arm], s)
		}
	}
	return nil
}

// exec runs the client in the network's container and collects the host
// side: the plugin's CPU and the lines dockerd relayed meanwhile.
func (b *bench) exec(network string, w workload) (sample, error) {
	container, cpu := network, b.pluginCPU
	var extra []string
	if network == netFloor {
		// The bridge container through the floor relay; "plugin CPU" is the relay's.
		container, cpu, extra = netBridge, func() float64 { return procCPU(b.floorPID) }, []string{"-connect", floorAddr}
	}
	if network == netPassFloor {
		container, cpu, extra = netBridge, func() float64 { return procCPU(b.passFloorPID) }, []string{"-connect", passFloorAddr}
	}
	args := append([]string{"exec", container, "/b/load"}, w.args...)
	args = append(args, "-ca", "/b/ca/"+fakenet.CACertFile+",/b/ca/plugin-ca.crt")
	args = append(args, extra...)
	cpu0, srv0 := cpu(), procCPU(b.srvPID)
	lines0 := len(b.pluginLines())
	stdout, stderr, err := b.e.Docker(args...)
	if err != nil {
		return sample{}, fmt.Errorf("%v: %s", err, stderr)
	}
	var r struct {
		MBps      float64 `json:"mbps"`
		Secs      float64 `json:"secs"`
		HostBusyS float64 `json:"host_busy_s"`
		HostAllS  float64 `json:"host_all_s"`
		ClientS   float64 `json:"client_cpu_s"`
		Bytes     int64   `json:"bytes"`
		P50       float64 `json:"p50_ms"`
		P99       float64 `json:"p99_ms"`
		RPS       float64 `json:"rps"`
		Proto     string  `json:"proto"`
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		return sample{}, fmt.Errorf("client output %q: %w", stdout, err)
	}
	s := sample{MBps: r.MBps, P50: r.P50, P99: r.P99, RPS: r.RPS, Secs: r.Secs, Proto: r.Proto, Flows: w.flows,
		PluginCPU: cpu() - cpu0}
	lines := b.pluginLines()
	s.Lines = len(lines) - lines0
	if network != netBridge && network != netFloor && network != netPassFloor {
		for _, l := range lines[min(lines0, len(lines)):] {
			b.relayed[w.name+": "+lineMsg(l)]++
		}
	}
	if r.Bytes > 0 {
		gb := float64(r.Bytes) / 1e9
		s.HostCPUPerGB = r.HostBusyS / gb
		s.HostBusy = ratio(r.HostBusyS, r.HostAllS)
		s.PathCPUPerGB = (r.ClientS + procCPU(b.srvPID) - srv0 + s.PluginCPU) / gb
	}
	return s, nil
}

// pluginCPU is the CPU seconds (user + system) of the Env's plugin and DNS
// sidecar processes so far.
func (b *bench) pluginCPU() float64 {
	ents, _ := os.ReadDir("/proc")
	var cpu float64
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := strings.Cut(string(cmd), "\x00")
		if argv0 != "/bin/clawker-fw-plugin" && argv0 != "/bin/clawker-coredns" || !b.e.Owns(pid) {
			continue
		}
		cpu += procCPU(pid)
	}
	return cpu
}

// procCPU is a process's user+system CPU seconds so far (threads
// included; softirq work done in its context counts: this kernel has no
// IRQ time accounting), 0 if it is gone.
func procCPU(pid int) float64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || pid <= 0 {
		return 0
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	if len(f) <= 12 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64) // utime (field 14)
	s, _ := strconv.ParseInt(f[12], 10, 64) // stime (field 15)
	return float64(u+s) / 100
}

// pluginLines returns the lines of dockerd's log that a plugin wrote
// (dockerd relays a plugin's output with plugin=<id>).
func (b *bench) pluginLines() []string {
	data, _ := os.ReadFile(b.e.DockerdLog())
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, " plugin=") {
			out = append(out, l)
		}
	}
	return out
}

// lineMsg names a relayed line by its component, message and sample
// count (the plugin writes JSON lines; dockerd quotes them in msg="...").
func lineMsg(l string) string {
	_, m, ok := strings.Cut(l, "msg=")
	if !ok {
		return l
	}
	if i := strings.LastIndex(m, " plugin="); i >= 0 {
		m = m[:i]
	}
	if u, err := strconv.Unquote(m); err == nil {
		m = u
	}
	var f struct {
		Component string `json:"component"`
		Msg       string `json:"msg"`
		Sampled   int    `json:"sampled_of"`
	}
	if json.Unmarshal([]byte(m), &f) != nil || f.Msg == "" {
		if len(m) > 120 {
			m = m[:120] + "..."
		}
		return m
	}
	out := f.Component + ": " + f.Msg
	if f.Sampled > 0 {
		out += " (a sample)"
	}
	return out
}

// ---- report ----

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ran reports whether workload w ran in this run (-only leaves some out:
// the report skips their rows).
func (b *bench) ran(w string) bool { return len(b.samples[w]) > 0 }

func (b *bench) med(w, arm string, f func(sample) float64) float64 {
	var xs []float64
	for _, s := range b.samples[w][arm] {
		xs = append(xs, f(s))
	}
	return median(xs)
}

// pairedRatio is the median over blocks of arm / bridge measured in the
// same block (next to each other in time, so that the machine's drifting
// load cancels out as far as it can).
func (b *bench) pairedRatio(w, arm string, f func(sample) float64) float64 {
	return median(b.pairedRatios(w, arm, f))
}

// pairedRatios are the per-block ratios of pairedRatio, in block order.
func (b *bench) pairedRatios(w, arm string, f func(sample) float64) []float64 {
	var rs []float64
	for _, s := range b.samples[w][arm] {
		for _, br := range b.samples[w]["bridge"] {
			if br.Block == s.Block && f(br) != 0 {
				rs = append(rs, f(s)/f(br))
			}
		}
	}
	return rs
}

// spread prints per-round ratios: "0.81 0.92 0.77".
func spread(rs []float64) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%.2f", r))
	}
	return strings.Join(parts, " ")
}

type row struct {
	label, w string
	insp     bool // the clawker-fw arm is cfw-insp
	f        func(sample) float64
	higher   bool    // higher is better
	target   float64 // ratio target (0: none)
	unit     string
}

// format returns the report and its table as Markdown rows.
func (b *bench) format(load0, load1 string, took time.Duration) (string, string) {
	var sb, md strings.Builder
	var eng harness.Engine
	if b.e != nil {
		eng = b.e.Engine()
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	o := b.o
	fmt.Fprintf(&sb, "clawker-fw headline benchmark: container on a clawker-fw network vs on a plain Docker bridge (go run ./bench/bridge)\n")
	fmt.Fprintf(&sb, "date %s, kernel %s, %d CPUs, %s, Docker engine %s (%s, API %s; test dockerd without --debug, data root on tmpfs)\n",
		time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(kernel)), runtime.NumCPU(), runtime.Version(),
		eng.Name, eng.Dockerd, eng.APIVersion)
	fmt.Fprintf(&sb, "load average at start: %s; at end: %s (run took %s)\n", load0, load1, took.Round(time.Second))
	fmt.Fprintf(&sb, "THE MACHINE WAS SHARED: 2 cores used by several agents at the same time; absolute numbers and host CPU/GB carry their load.\n")
	fmt.Fprintf(&sb, "engine: builtin proxy; columns \"splice on\" / \"splice off\" = the plugin's default kernel splice (CLAWKER_PROXY_KERNEL_SPLICE=%s,\n", wire.DefaultKernelSplice)
	fmt.Fprintf(&sb, "  CLAWKER_PROXY_KERNEL_SPLICE_AFTER=%d: flows enter the kernel path after that many bytes) / CLAWKER_PROXY_KERNEL_SPLICE=false\n", wire.DefaultKernelSpliceAfter)
	fmt.Fprintf(&sb, "method: a busybox container per network, each running the static Go client bench/bridge/load by docker exec;\n")
	fmt.Fprintf(&sb, "  server: the same binary (Go net/http, TLS 1.3, h1+h2) in netns %s at %s, reached through the host (veth %s);\n", srvNetns, srvIP, srvLink)
	fmt.Fprintf(&sb, "  bridge = user-defined bridge network; cfw = clawker-fw network allowing %s (passthrough) and http://%s;\n", benchHost, benchHost)
	fmt.Fprintf(&sb, "  cfw-insp = clawker-fw network with clawker.tls.inspect=all (client trusts the plugin CA). The client resolves the name once\n")
	fmt.Fprintf(&sb, "  per run (through the network's DNS) and dials that address; TLS sessions are never resumed.\n")
	fmt.Fprintf(&sb, "  %d rounds; each round runs a block per splice setting (order alternating), each block every workload on every arm\n", o.rounds)
	fmt.Fprintf(&sb, "  (arm order alternating). Values are medians over rounds (bridge: over both blocks); ratio = median over rounds of\n")
	fmt.Fprintf(&sb, "  clawker-fw / bridge measured in the same block (paired, so that drifting load cancels as far as it can).\n")
	fmt.Fprintf(&sb, "  bulk: one connection, h1, %d MB each way; new connection: %d sequential (TCP + TLS handshake + GET /, close);\n", o.bulkBytes>>20, o.newconnN)
	fmt.Fprintf(&sb, "  keep-alive: %d connections each doing GET / (~55 byte body) back to back, %s counted after 0.5 s warm-up.\n", o.kaConns, o.kaDur)
	fmt.Fprintf(&sb, "  host CPU per GB: busy jiffies of /proc/stat (user+nice+system+irq+softirq+steal, whole host, so softirq and kworkers\n")
	fmt.Fprintf(&sb, "  count, and so does every other agent's work at the time) during the transfer / GB moved. When the host busy\n")
	fmt.Fprintf(&sb, "  fraction is near 1.00 the CPUs were saturated (by this run and by others): host CPU per GB then follows the transfer's\n")
	fmt.Fprintf(&sb, "  duration, not its cost. client+server+plugin CPU = the client container's cgroup (cpu.stat) + the server process +\n")
	fmt.Fprintf(&sb, "  the plugin and DNS sidecar processes (softirq work run in their context counts; ksoftirqd and kworkers do not).\n\n")

	rows := []row{
		{"TLS passthrough bulk download (MB/s)", "bulk-down", false, func(s sample) float64 { return s.MBps }, true, 0.95, ""},
		{"  download: host CPU seconds per GB", "bulk-down", false, func(s sample) float64 { return s.HostCPUPerGB }, false, 1.2, ""},
		{"  download: plugin CPU seconds per GB", "bulk-down", false, func(s sample) float64 { return s.PluginCPU / (float64(o.bulkBytes) / 1e9) }, false, 0, ""},
		{"  download: client+server+plugin CPU s/GB", "bulk-down", false, func(s sample) float64 { return s.PathCPUPerGB }, false, 0, ""},
		{"  download: host busy fraction", "bulk-down", false, func(s sample) float64 { return s.HostBusy }, false, 0, ""},
		{"TLS passthrough bulk upload (MB/s)", "bulk-up", false, func(s sample) float64 { return s.MBps }, true, 0.95, ""},
		{"  upload: host CPU seconds per GB", "bulk-up", false, func(s sample) float64 { return s.HostCPUPerGB }, false, 1.2, ""},
		{"  upload: plugin CPU seconds per GB", "bulk-up", false, func(s sample) float64 { return s.PluginCPU / (float64(o.bulkBytes) / 1e9) }, false, 0, ""},
		{"  upload: client+server+plugin CPU s/GB", "bulk-up", false, func(s sample) float64 { return s.PathCPUPerGB }, false, 0, ""},
		{"  upload: host busy fraction", "bulk-up", false, func(s sample) float64 { return s.HostBusy }, false, 0, ""},
		{"HTTPS new connection + GET p50 (ms)", "https-newconn", false, func(s sample) float64 { return s.P50 }, false, 1.1, ""},
		{"HTTPS new connection + GET p99 (ms)", "https-newconn", false, func(s sample) float64 { return s.P99 }, false, 1.3, ""},
		{"plain HTTP new connection + GET p50 (ms)", "http-newconn", false, func(s sample) float64 { return s.P50 }, false, 1.2, ""},
		{"plain HTTP new connection + GET p99 (ms)", "http-newconn", false, func(s sample) float64 { return s.P99 }, false, 0, ""},
		{"HTTPS keep-alive passthrough h1 (req/s)", "ka-h1", false, func(s sample) float64 { return s.RPS }, true, 0.9, ""},
		{"  keep-alive passthrough p99 under load (ms)", "ka-h1", false, func(s sample) float64 { return s.P99 }, false, 0, ""},
		{"  keep-alive passthrough: plugin CPU s per s", "ka-h1", false, func(s sample) float64 { return s.PluginCPU / (s.Secs + 0.5) }, false, 0, ""},
		{"HTTPS keep-alive INSPECTING h1 (req/s)", "ka-h1", true, func(s sample) float64 { return s.RPS }, true, 0.6, ""},
		{"  inspecting h1: plugin CPU s per s", "ka-h1", true, func(s sample) float64 { return s.PluginCPU / (s.Secs + 0.5) }, false, 0, ""},
		{"HTTPS keep-alive INSPECTING h2 (req/s)", "ka-h2", true, func(s sample) float64 { return s.RPS }, true, 0.6, ""},
		{"  inspecting h2: plugin CPU s per s", "ka-h2", true, func(s sample) float64 { return s.PluginCPU / (s.Secs + 0.5) }, false, 0, ""},
		{"DNS allowed query p50 (ms, A record)", "dns", false, func(s sample) float64 { return s.P50 }, false, 0, ""},
	}
	fmt.Fprintf(&sb, "%-44s %9s %10s %7s %10s %7s %8s  %s\n", "workload", "bridge", "splice on", "ratio", "splice off", "ratio", "target", "verdict (on / off); per-round ratios on | off")
	fmt.Fprintf(&md, "| workload | plain bridge | clawker-fw, kernel splice on | kernel splice off | target |\n| --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		if !b.ran(r.w) {
			continue
		}
		arm := "cfw/"
		if r.insp {
			arm = "cfw-insp/"
		}
		br := b.med(r.w, "bridge", r.f)
		on, off := b.med(r.w, arm+"on", r.f), b.med(r.w, arm+"off", r.f)
		ron, roff := b.pairedRatio(r.w, arm+"on", r.f), b.pairedRatio(r.w, arm+"off", r.f)
		tgt, verdict := "-", ""
		if r.target > 0 {
			cmp := "<="
			if r.higher {
				cmp = ">="
			}
			tgt = fmt.Sprintf("%s%.2fx", cmp, r.target)
			verdict = meets(ron, r) + " / " + meets(roff, r)
		}
		fmt.Fprintf(&sb, "%-44s %9.2f %10.2f %6.2fx %10.2f %6.2fx %8s  %s", r.label, br, on, ron, off, roff, tgt, verdict)
		if !strings.Contains(r.label, ": plugin CPU") {
			if verdict != "" {
				sb.WriteString("; ")
			}
			fmt.Fprintf(&sb, "[%s | %s]", spread(b.pairedRatios(r.w, arm+"on", r.f)), spread(b.pairedRatios(r.w, arm+"off", r.f)))
		}
		sb.WriteString("\n")
		mdTarget := "—"
		if r.target > 0 {
			mdTarget = strings.ReplaceAll(tgt, ">=", "≥ ")
			mdTarget = strings.ReplaceAll(mdTarget, "<=", "≤ ")
			mdTarget += ": " + strings.ReplaceAll(verdict, "NOT met", "**not met**")
		}
		if strings.Contains(r.label, ": plugin CPU") { // the bridge arm's figure is the plugin's idle noise
			fmt.Fprintf(&md, "| %s | — | %.2f | %.2f | %s |\n", strings.TrimSpace(r.label), on, off, mdTarget)
		} else {
			fmt.Fprintf(&md, "| %s | %.2f | %.2f (%.2fx) | %.2f (%.2fx) | %s |\n", strings.TrimSpace(r.label), br, on, ron, off, roff, mdTarget)
		}
	}
	if b.ran("ka-h1") || b.ran("ka-h2") {
		fmt.Fprintf(&sb, "inspection floor: the bridge container's client through a minimal TLS-terminating relay on the host (load relay: net/http\n")
		fmt.Fprintf(&sb, "  server + httputil.ReverseProxy, no policy, the same Go TLS stack, the server's own leaf), paired with the bridge arm as above:\n")
		fmt.Fprintf(&sb, "  CPU us per request = the relay's (or the plugin's) CPU seconds / (req/s x (measured s + 0.5 s warm-up)): it moves\n")
		fmt.Fprintf(&sb, "  less with the machine's load than req/s does, and compares clawker-fw's inspection with the floor's directly.\n")
	}
	for _, f := range []struct{ label, w string }{{"floor relay keep-alive h1 (req/s)", "ka-h1"}, {"floor relay keep-alive h2 (req/s)", "ka-h2"}} {
		if !b.ran(f.w) {
			continue
		}
		rps := func(s sample) float64 { return s.RPS }
		perReq := func(s sample) float64 { return s.PluginCPU / (s.RPS*(s.Secs+0.5) + 1e-9) * 1e6 }
		var insp []float64
		for _, arm := range []string{"cfw-insp/on", "cfw-insp/off"} {
			for _, s := range b.samples[f.w][arm] {
				insp = append(insp, perReq(s))
			}
		}
		floorUS, inspUS := b.med(f.w, "floor", perReq), median(insp)
		fmt.Fprintf(&sb, "  %-42s %9.2f %10.2f %6.2fx  [%s]; CPU us per request: relay %.0f, clawker-fw inspecting %.0f (%.2fx)\n",
			f.label, b.med(f.w, "bridge", rps), b.med(f.w, "floor", rps), b.pairedRatio(f.w, "floor", rps),
			spread(b.pairedRatios(f.w, "floor", rps)), floorUS, inspUS, ratio(inspUS, floorUS))
	}
	b.formatArms(&sb, rows)
	logLines := map[string]string{}
	var totalLines, totalFlows int
	fmt.Fprintf(&sb, "\nlog lines dockerd relayed from the plugin (target: none on the allowed path), summed over all rounds:\n")
	for _, w := range []struct{ w, what string }{{"https-newconn", "allowed HTTPS connections"}, {"http-newconn", "allowed plain HTTP connections"},
		{"ka-h1", "keep-alive runs (connections)"}, {"dns", "allowed DNS queries"}} {
		for _, m := range []string{"on", "off"} {
			var lines, flows int
			for _, s := range b.samples[w.w]["cfw/"+m] {
				lines, flows = lines+s.Lines, flows+s.Flows
			}
			if flows == 0 {
				continue // not run (-only)
			}
			fmt.Fprintf(&sb, "  splice %-3s %6d lines for %6d %s (%.3f per flow)\n", m, lines, flows, w.what, ratio(float64(lines), float64(flows)))
			logLines[m] += fmt.Sprintf(" %d / %d %s;", lines, flows, w.what)
			totalLines, totalFlows = totalLines+lines, totalFlows+flows
		}
	}
	if len(b.relayed) > 0 {
		fmt.Fprintf(&sb, "  the relayed lines, on every cfw arm (workload during which it came: component: message, count):\n")
		for _, k := range slices.Sorted(maps.Keys(b.relayed)) {
			fmt.Fprintf(&sb, "    %s  x%d\n", k, b.relayed[k])
		}
	}
	fmt.Fprintf(&sb, "note: the inspected arms do not depend on the splice setting; their spread between the two columns shows this run's noise.\n")
	protos := map[string]bool{}
	for _, w := range []string{"ka-h1", "ka-h2"} {
		for arm, ss := range b.samples[w] {
			for _, s := range ss {
				protos[w+" "+strings.Split(arm, "/")[0]+"="+s.Proto] = true
			}
		}
	}
	if len(protos) > 0 {
		fmt.Fprintf(&sb, "protocols seen by the keep-alive client: %s\n", strings.Join(slices.Sorted(maps.Keys(protos)), ", "))
	}
	fmt.Fprintf(&sb, "plugin CPU = user+system seconds of the Env's clawker-fw-plugin and clawker-coredns processes during the docker exec.\n")
	verdict := "met"
	if totalLines*10 >= totalFlows {
		verdict = "**not met**"
	}
	samples := len(b.relayed) > 0
	for k := range b.relayed {
		samples = samples && strings.HasSuffix(k, "(a sample)")
	}
	if samples {
		verdict += " (every relayed line is a sample)"
	}
	fmt.Fprintf(&md, "| log lines dockerd relayed from the plugin, lines / allowed flows | — |%s |%s | none per flow: %s |\n",
		strings.TrimSuffix(logLines["on"], ";"), strings.TrimSuffix(logLines["off"], ";"), verdict)
	return sb.String(), md.String()
}

// formatArms prints the passthrough rows once more with a column per arm:
// the passthrough floor relay and every -modes setting, each as its value
// and its paired ratio to the bridge; "/fl" is that ratio over the floor's,
// the part of the gap the product adds beyond relaying itself.
func (b *bench) formatArms(sb *strings.Builder, rows []row) {
	var arms []string
	if b.o.passFloor {
		arms = append(arms, netPassFloor)
	}
	for _, m := range b.o.modes {
		arms = append(arms, "cfw/"+modeLabel(m))
	}
	if !b.o.passFloor && len(b.o.modes) <= 2 {
		return // the main table has them
	}
	fmt.Fprintf(sb, "\npassthrough by arm (value, paired ratio to the bridge; /fl = that ratio over the passthrough floor's):\n")
	fmt.Fprintf(sb, "  floor-pass = load passrelay on the host at the bridge network's gateway (%s): accept, read the ClientHello and\n", passFloorAddr)
	fmt.Fprintf(sb, "  its SNI (plain HTTP: the request head up to its empty line, with a Host), dial the one fixed server address, write\n")
	fmt.Fprintf(sb, "  what it read, io.Copy (splice(2)) both ways; no policy, DNS, identity,\n")
	fmt.Fprintf(sb, "  log or limits. The bridge container dials it by address; the cfw arms reach the plugin's proxy through the socket hooks.\n")
	fmt.Fprintf(sb, "  cfw/MODE = CLAWKER_PROXY_KERNEL_SPLICE=MODE (on = the default %s, off = false; @N = CLAWKER_PROXY_KERNEL_SPLICE_AFTER=N, none = 0).\n", defaultMode)
	fmt.Fprintf(sb, "%-44s %9s", "workload", "bridge")
	for _, a := range arms {
		fmt.Fprintf(sb, " %24s", a)
	}
	sb.WriteString("\n")
	for _, r := range rows {
		if r.insp || len(b.samples[r.w]["bridge"]) == 0 || b.o.passFloor && len(b.samples[r.w][netPassFloor]) == 0 {
			continue
		}
		fmt.Fprintf(sb, "%-44s %9.2f", r.label, b.med(r.w, "bridge", r.f))
		fr := b.pairedRatio(r.w, netPassFloor, r.f)
		for _, a := range arms {
			v, rr := b.med(r.w, a, r.f), b.pairedRatio(r.w, a, r.f)
			cell := fmt.Sprintf("%.2f %.2fx", v, rr)
			if a != netPassFloor && fr != 0 {
				cell += fmt.Sprintf(" %.2f/fl", rr/fr)
			}
			fmt.Fprintf(sb, " %24s", cell)
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(sb, "  (plugin CPU rows: the floor-pass column is the relay process's CPU)\n")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func meets(r float64, rw row) string {
	if r == 0 {
		return "n/a"
	}
	if rw.higher && r >= rw.target || !rw.higher && r <= rw.target {
		return "met"
	}
	return "NOT met"
}
