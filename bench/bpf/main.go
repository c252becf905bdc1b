// Command bpf benchmarks the cost of clawker-fw's socket hooks on connect(),
// measuring both sides of each comparison in one run, interleaved round by
// round, and writes a report (default bench/results/bpf.txt).
//
//  1. A process whose network namespace is not enrolled, in a cgroup with
//     the programs attached vs one without (target: within 3%).
//  2. An enrolled namespace connecting to an allowed destination (steered
//     to a gateway listener) vs the same namespace not enrolled (connecting
//     to the destination directly).
//
// Each case is measured for TCP (connect + handshake with a listener) and
// for UDP connect() (a syscall without packets, where the hook's share is
// largest). Needs root. Everything lives in namespaces, a cgroup and a bpffs
// directory it creates under 10.201.250.0/24 and removes at exit.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

func main() {
	out := flag.String("out", envOr("BENCH_BPF_OUT", "bench/results/bpf.txt"), "report file")
	rounds := flag.Int("rounds", 41, "interleaved rounds (batches) per side")
	ops := flag.Int("ops", 400, "connects per batch")
	flag.BoolVar(&scaleOnly, "scale", false, "only the scale cases: the maps as the plugin fills them for 1 endpoint vs 500 endpoints on a network of 10,000 rules (issue 13 §4)")
	flag.Parse()
	if err := run(*out, *rounds, *ops); err != nil {
		fmt.Fprintln(os.Stderr, "bench/bpf:", err)
		os.Exit(1)
	}
}

var scaleOnly bool

// scaleMaps fills the maps as the plugin does for n endpoints of one
// network of 10,000 rules: the network's base routed once under its
// gateway (9,800 names on 443, 40 dedicated ports, 500 CIDRs), every
// endpoint layered on it with its labels' own routes (5 each; learned
// addresses: scaleLearned). Endpoint 1 (the measured one) learned dst as
// identity 100, a base name.
func scaleMaps(m *bpf.Manager, n int, gw netip.Addr, dst netip.Addr) error {
	var base []bpf.Route
	for id := uint32(100); id < 100+9800; id++ {
		base = append(base, bpf.Route{Identity: id, Port: 443, L4: 6, ListenerPort: 15100}, bpf.Route{Identity: id, Port: 443, L4: 17, ListenerPort: 15100})
	}
	for i := uint32(0); i < 40; i++ {
		base = append(base, bpf.Route{Identity: 20000 + i, Port: uint16(5000 + i), L4: 6, ListenerPort: uint16(15200 + i)})
	}
	var cidrs []bpf.CIDR
	for i := range 500 {
		cidrs = append(cidrs, bpf.CIDR{Prefix: netip.MustParsePrefix(fmt.Sprintf("100.%d.%d.0/24", 64+i/256, i%256)), Identity: uint32(30000 + i)})
	}
	if err := m.SyncBase(map[netip.Addr][]bpf.Route{gw: base}, map[netip.Addr][]bpf.CIDR{gw: cidrs}); err != nil {
		return err
	}
	routes := map[uint32][]bpf.Route{}
	var layered []uint32
	for idx := uint32(1); idx <= uint32(n); idx++ {
		layered = append(layered, idx)
		for j := range uint32(5) {
			routes[idx] = append(routes[idx], bpf.Route{Identity: 40000 + idx*8 + j, Port: 443, L4: 6, ListenerPort: 15100})
		}
	}
	if err := m.Learn(1, dst, 100, time.Hour); err != nil {
		return err
	}
	if err := m.SyncRoutesLayered(routes, layered); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond) // let the map churn's deferred frees settle
	return nil
}

// scaleLearned gives endpoints 2..500 64 learned addresses each, once:
// every endpoint's learned map is its own, so endpoint 1's lookups do not
// depend on them; they are there as the plugin's maps would hold them.
func scaleLearned(m *bpf.Manager) error {
	for idx := uint32(2); idx <= 500; idx++ {
		for j := range 64 {
			a := netip.AddrFrom4([4]byte{198, 18, byte(idx >> 2), byte(int(idx&3)<<6 | j)})
			if err := m.Learn(idx, a, 100+uint32(j), time.Hour); err != nil {
				return err
			}
		}
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type cleanup struct{ fns []func() }

func (c *cleanup) add(f func()) { c.fns = append(c.fns, f) }
func (c *cleanup) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func writeProcs(cgroup string) error {
	return os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0)
}

func run(out string, rounds, ops int) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	var c cleanup
	defer c.run()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; c.run(); os.Exit(130) }()

	var b [3]byte
	_, _ = rand.Read(b[:])
	id := "bench-" + hex.EncodeToString(b[:])

	// bpffs: the host's when mounted, else a private instance.
	base := "/sys/fs/bpf/clawker-test-bpf-" + id
	if bpf.CheckHostBPFFS("/sys/fs/bpf") != nil {
		base = filepath.Join(os.TempDir(), "clawker-test-bpf-"+id)
		if err := os.Mkdir(base, 0o700); err != nil {
			return err
		}
		c.add(func() { os.Remove(base) })
		if err := unix.Mount("bpf", base, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs: %w", err)
		}
		c.add(func() { _ = unix.Unmount(base, unix.MNT_DETACH) })
	} else {
		if err := os.Mkdir(base, 0o700); err != nil {
			return err
		}
		c.add(func() { os.RemoveAll(base) })
	}

	// Two cgroups: one with the programs, one without.
	root, err := bpf.DetectCgroup2()
	if err != nil {
		return err
	}
	origCg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	orig := "/"
	for _, l := range strings.Split(string(origCg), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			orig = p
		}
	}
	cgOn := filepath.Join(root, "clawker-test-bpf-"+id+"-on")
	cgOff := filepath.Join(root, "clawker-test-bpf-"+id+"-off")
	for _, d := range []string{cgOn, cgOff} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		d := d
		c.add(func() { os.Remove(d) })
	}
	c.add(func() { _ = writeProcs(filepath.Join(root, orig)) })

	// Topology: A (client) --veth-- H (listeners, 10.201.250.0/24 local).
	hNS, aNS := "cfwb-"+id+"-h", "cfwb-"+id+"-a"
	for _, ns := range []string{hNS, aNS} {
		if err := sh("ip", "netns", "add", ns); err != nil {
			return err
		}
		ns := ns
		c.add(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	for _, cmd := range [][]string{
		{"ip", "-n", hNS, "link", "set", "lo", "up"},
		{"ip", "-n", aNS, "link", "set", "lo", "up"},
		{"ip", "-n", aNS, "link", "add", "cfwb0", "type", "veth", "peer", "name", "cfwbh", "netns", hNS},
		{"ip", "-n", aNS, "addr", "add", "10.201.251.2/24", "dev", "cfwb0"},
		{"ip", "-n", aNS, "link", "set", "cfwb0", "up"},
		{"ip", "-n", aNS, "route", "add", "default", "via", "10.201.251.1"},
		{"ip", "-n", hNS, "addr", "add", "10.201.251.1/24", "dev", "cfwbh"},
		{"ip", "-n", hNS, "link", "set", "cfwbh", "up"},
		{"ip", "-n", hNS, "route", "add", "local", "10.201.250.0/24", "dev", "lo"},
	} {
		if err := sh(cmd...); err != nil {
			return err
		}
	}
	hPath, aPath := "/var/run/netns/"+hNS, "/var/run/netns/"+aNS

	// Listeners: H:443 (direct), H:15100 (steered), and 127.0.0.1 in the
	// bench's own namespace (the not-enrolled case).
	var lns []net.Listener
	if err := bpf.InNetns(hPath, func() error {
		for _, a := range []string{"0.0.0.0:443", "0.0.0.0:15100"} {
			ln, err := net.Listen("tcp4", a)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	}); err != nil {
		return err
	}
	local, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	lns = append(lns, local)
	for _, ln := range lns {
		go acceptLoop(ln)
		ln := ln
		c.add(func() { ln.Close() })
	}
	localAddr := netip.MustParseAddrPort(local.Addr().String())

	m, err := bpf.Open(bpf.Config{PinDir: filepath.Join(base, "pins"), CgroupPath: cgOn})
	if err != nil {
		return err
	}
	c.add(func() { _ = m.Remove() })
	cookie, err := bpf.NetnsCookie(aPath)
	if err != nil {
		return err
	}
	ep := bpf.Endpoint{Index: 1, IP: netip.MustParseAddr("10.201.251.2"), Gateway: netip.MustParseAddr("10.201.251.1"),
		Subnet: netip.MustParsePrefix("10.201.251.0/24"), DNSPort: model.DNSPort, CAPort: model.CAPort}
	dst := netip.MustParseAddrPort("10.201.250.5:443")
	if err := m.Learn(1, dst.Addr(), 100, time.Hour); err != nil {
		return err
	}
	if err := m.SyncRoutes(map[uint32][]bpf.Route{1: {
		{Identity: 100, Port: 443, L4: 6, ListenerPort: 15100},
		{Identity: 100, Port: 443, L4: 17, ListenerPort: 15100},
	}}); err != nil {
		return err
	}

	type cas struct {
		name       string
		labelA     string
		labelB     string
		setA, setB func() error
		ns         string
		dst        netip.AddrPort
		typ        int
		target3pct bool
	}
	enroll := func() error { return m.Enroll(cookie, ep) }
	unenroll := func() error { return m.Unenroll(cookie) }
	inOn := func() error { return writeProcs(cgOn) }
	inOff := func() error { return writeProcs(cgOff) }
	cases := []cas{
		{"not enrolled, tcp connect to 127.0.0.1", "attached", "not attached",
			func() error { return inOn() }, inOff, "", localAddr, unix.SOCK_STREAM, true},
		{"not enrolled, udp connect()", "attached", "not attached",
			func() error { return inOn() }, inOff, "", localAddr, unix.SOCK_DGRAM, true},
		{"netns, tcp connect to an allowed destination", "enrolled (steered)", "not enrolled (direct)",
			func() error {
				if err := inOn(); err != nil {
					return err
				}
				return enroll()
			},
			func() error {
				if err := inOn(); err != nil {
					return err
				}
				return unenroll()
			}, aPath, dst, unix.SOCK_STREAM, false},
		{"netns, udp connect() to an allowed destination", "enrolled (steered)", "not enrolled (direct)",
			enroll, unenroll, aPath, dst, unix.SOCK_DGRAM, false},
	}

	if scaleOnly {
		if err := scaleLearned(m); err != nil {
			return err
		}
		gw := ep.Gateway
		scale := func(n int) func() error {
			return func() error {
				if err := inOn(); err != nil {
					return err
				}
				if err := scaleMaps(m, n, gw, dst.Addr()); err != nil {
					return err
				}
				return enroll()
			}
		}
		cases = []cas{
			{"enrolled, tcp connect (steered), 10k rules", "500 endpoints", "1 endpoint", scale(500), scale(1), aPath, dst, unix.SOCK_STREAM, false},
			{"enrolled, udp connect() (steered), 10k rules", "500 endpoints", "1 endpoint", scale(500), scale(1), aPath, dst, unix.SOCK_DGRAM, false},
		}
	}

	var report strings.Builder
	uname := unix.Utsname{}
	_ = unix.Uname(&uname)
	fmt.Fprintf(&report, "clawker-fw bpf socket-hook benchmark\n")
	fmt.Fprintf(&report, "date %s, kernel %s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339),
		unix.ByteSliceToString(uname.Release[:]), runtime.NumCPU(), runtime.Version())
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&report, "load average at start: %s", la)
	}
	fmt.Fprintf(&report, "method: %d batches x %d connects per side, sides interleaved batch by batch (A,B,A,B...);\n", rounds, ops)
	fmt.Fprintf(&report, "rates are the median batch and (in brackets) the best batch, which is less sensitive to other load\n")
	fmt.Fprintf(&report, "on the machine; each connect = socket() + connect() + close() (tcp: handshake with a listener, SO_LINGER 0)\n\n")
	fmt.Fprintf(&report, "%-48s %-22s %18s  %-22s %18s  %7s %7s\n", "case", "A", "A conn/s", "B", "B conn/s", "A/B", "best")
	for _, cs := range cases {
		var ra, rb []float64
		for r := 0; r < rounds; r++ {
			for side := 0; side < 2; side++ {
				set := cs.setA
				if side == 1 {
					set = cs.setB
				}
				if err := set(); err != nil {
					return fmt.Errorf("%s: %w", cs.name, err)
				}
				rate, err := measure(cs.ns, cs.dst, cs.typ, ops)
				if err != nil {
					return fmt.Errorf("%s: %w", cs.name, err)
				}
				if side == 0 {
					ra = append(ra, rate)
				} else {
					rb = append(rb, rate)
				}
			}
		}
		a, bb := median(ra), median(rb)
		ratio := a / bb
		bestA, bestB := slices.Max(ra), slices.Max(rb)
		note := ""
		if cs.target3pct {
			if bestA/bestB >= 0.97 {
				note = "  (within the 3% target)"
			} else {
				note = "  (OUTSIDE the 3% target)"
			}
		}
		fmt.Fprintf(&report, "%-48s %-22s %8.0f [%7.0f]  %-22s %8.0f [%7.0f]  %7.3f %7.3f%s\n",
			cs.name, cs.labelA, a, bestA, cs.labelB, bb, bestB, ratio, bestA/bestB, note)
	}
	if err := writeProcs(filepath.Join(root, orig)); err != nil {
		return err
	}
	fmt.Print(report.String())
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(report.String()), 0o644)
}

func acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// measure runs ops connects (socket, connect, close) from netns ns (the
// current one when empty) and returns connects per second.
func measure(ns string, dst netip.AddrPort, typ, ops int) (float64, error) {
	var rate float64
	body := func() error {
		sa := &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
		start := time.Now()
		for i := 0; i < ops; i++ {
			fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			if typ == unix.SOCK_STREAM {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			if err := unix.Connect(fd, sa); err != nil {
				unix.Close(fd)
				return fmt.Errorf("connect %s: %w", dst, err)
			}
			unix.Close(fd)
		}
		rate = float64(ops) / time.Since(start).Seconds()
		return nil
	}
	if ns == "" {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return rate, body()
	}
	return rate, bpf.InNetns(ns, body)
}
