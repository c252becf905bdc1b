// Command dns benchmarks clawker-fw's DNS sidecar: the real custom CoreDNS
// (cmd/clawker-coredns) with the clawker plugin, answering allowed names
// (policy check, upstream exchange, filtering and, as root, writes into a
// real pinned learned map) against the same CoreDNS binary forwarding
// without the plugin, both talking to the same local fake upstream. Sides
// are measured in one run, interleaved batch by batch, and a report is
// written (default bench/results/dns.txt).
//
// Sides:
//
//	plugin      clawker, own upstream exchange (the production Corefile)
//	plugin+next clawker with `upstream next`, answers from forward
//	forward     forward only, no policy (the baseline)
//	denied      clawker, names outside the policy (NXDOMAIN, never forwarded)
//
// Targets: plugin p50 within 1.2x of forward, plugin throughput >= 0.8x.
// Run from the repository root: go run ./bench/dns (as root for map writes).
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"encoding/json"
	"net/netip"

	"github.com/clawker-fw/clawker-fw/bench/internal/sidecar"
	"github.com/clawker-fw/clawker-fw/bpf"
	clawkerdns "github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/policy"
)

func main() {
	out := flag.String("out", envOr("BENCH_DNS_OUT", "bench/results/dns.txt"), "report file")
	rounds := flag.Int("rounds", 9, "interleaved batches per side")
	batch := flag.Duration("batch", time.Second, "duration of one batch")
	conc := flag.Int("c", 8, "concurrent clients (each one outstanding query)")
	bin := flag.String("bin", "", "prebuilt clawker-coredns (default: go build ./cmd/clawker-coredns)")
	flag.Parse()
	if err := run(*out, *bin, *rounds, *batch, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "bench/dns:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

const (
	clientIP = "127.0.0.2" // endpoint 1's address
	names    = 1000        // distinct allowed names, so every query is a map write
)

func run(out, bin string, rounds int, batch time.Duration, conc int) error {
	tmp, err := os.MkdirTemp("", "clawker-bench-dns-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	if bin == "" {
		fmt.Fprintln(os.Stderr, "building clawker-coredns...")
		if bin, err = sidecar.Build(tmp); err != nil {
			return err
		}
	}

	up, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.Shutdown()
	upAddr := up.PacketConn.LocalAddr().String()

	pinDir, mapNote, cleanupPins, err := pins()
	if err != nil {
		return err
	}
	defer cleanupPins()

	snapPath := filepath.Join(tmp, "snapshot.json")
	if err := writeSnapshot(snapPath); err != nil {
		return err
	}

	var sidecars []*sidecar.Sidecar
	defer func() {
		for _, s := range sidecars {
			s.Stop()
		}
	}()
	start := func(name, corefile string) (*sidecar.Sidecar, error) {
		s, err := sidecar.Start(bin, filepath.Join(tmp, name+".Corefile"), corefile)
		if err == nil {
			sidecars = append(sidecars, s)
		}
		return s, err
	}
	pluginCfg := func(next bool) string {
		cfg := clawkerdns.CorefileConfig{
			Bind: []string{"127.0.0.1"}, Port: sidecar.FreePort(), SnapshotPath: snapPath, PinDir: pinDir,
			Upstreams:  []string{upAddr},
			HealthAddr: sidecar.Addr(), ReadyAddr: sidecar.Addr(), MetricsAddr: sidecar.Addr(), StatusAddr: sidecar.Addr(),
		}
		c := clawkerdns.Corefile(cfg)
		if next {
			c = strings.Replace(c, "upstream "+upAddr, "upstream next", 1)
			c = strings.Replace(c, "    }\n}\n", "    }\n    forward . "+upAddr+"\n}\n", 1)
		}
		return c
	}
	plug, err := start("plugin", pluginCfg(false))
	if err != nil {
		return err
	}
	plugNext, err := start("plugin-next", pluginCfg(true))
	if err != nil {
		return err
	}
	fwd, err := start("forward", fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    errors\n    health %s\n    ready %s\n    prometheus %s\n    forward . %s\n}\n",
		sidecar.FreePort(), sidecar.Addr(), sidecar.Addr(), sidecar.Addr(), upAddr))
	if err != nil {
		return err
	}

	allowed := func(i int) string { return fmt.Sprintf("n%d.example.test.", i%names) }
	denied := func(i int) string { return fmt.Sprintf("n%d.denied.test.", i%names) }
	sides := []*side{
		{name: "plugin", desc: "clawker, own exchange", pid: plug.Cmd.Process.Pid, addr: plug.DNS, qname: allowed, want: mdns.RcodeSuccess},
		{name: "plugin+next", desc: "clawker, upstream next + forward", pid: plugNext.Cmd.Process.Pid, addr: plugNext.DNS, qname: allowed, want: mdns.RcodeSuccess},
		{name: "forward", desc: "forward only, no policy", pid: fwd.Cmd.Process.Pid, addr: fwd.DNS, qname: allowed, want: mdns.RcodeSuccess},
		{name: "denied", desc: "clawker, names outside the policy", pid: plug.Cmd.Process.Pid, addr: plug.DNS, qname: denied, want: mdns.RcodeNameError},
	}
	// Warm up: sockets, pools, the map.
	for _, s := range sides {
		if _, err := s.batch(conc, 300*time.Millisecond); err != nil {
			return fmt.Errorf("warm up %s: %w", s.name, err)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	for r := 0; r < rounds; r++ {
		for _, s := range sides {
			cpu0 := sidecar.CPUTime(s.pid)
			n, err := s.batch(conc, batch)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.cpu += sidecar.CPUTime(s.pid) - cpu0
			s.answers += n
			s.rates = append(s.rates, float64(n)/batch.Seconds())
		}
	}

	var b strings.Builder
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Fprintf(&b, "clawker-fw DNS sidecar benchmark\n")
	fmt.Fprintf(&b, "date %s, kernel %s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339), unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "load average at start: %s", load)
	fmt.Fprintf(&b, "method: the same clawker-coredns binary in every side, %d batches x %s per side interleaved (A,B,C,D,A,...),\n", rounds, batch)
	fmt.Fprintf(&b, "%d concurrent UDP clients bound to %s (endpoint 1), one outstanding query each, %d distinct names;\n", conc, clientIP, names)
	fmt.Fprintf(&b, "one local fake authoritative upstream (miekg/dns, in the benchmark process) shared by all sides.\n")
	fmt.Fprintf(&b, "qps: median batch, best batch; latency over all batches; cpu/query: sidecar process CPU time / answers.\n")
	fmt.Fprintf(&b, "learned map: %s\n\n", strings.TrimPrefix(mapNote, ", "))
	fmt.Fprintf(&b, "%-12s %-34s %8s %8s %10s %10s %12s\n", "side", "what", "qps", "best", "p50", "p99", "cpu/query")
	for _, s := range sides {
		fmt.Fprintf(&b, "%-12s %-34s %8.0f %8.0f %10s %10s %12s\n", s.name, s.desc, median(s.rates), slices.Max(s.rates), s.pct(50), s.pct(99), s.cpuPerQuery())
	}
	p, n, f, d := sides[0], sides[1], sides[2], sides[3]
	fmt.Fprintf(&b, "\nratios\n")
	ratio := func(label string, v, target float64, lessIsBetter bool) {
		verdict := ""
		if target > 0 {
			ok := v >= target
			if lessIsBetter {
				ok = v <= target
			}
			verdict = fmt.Sprintf("  target %s %.2f: %s", map[bool]string{true: "<=", false: ">="}[lessIsBetter], target, map[bool]string{true: "met", false: "MISSED"}[ok])
		}
		fmt.Fprintf(&b, "  %-50s %6.3f%s\n", label, v, verdict)
	}
	ratio("plugin p50 / forward p50", float64(p.q(50))/float64(f.q(50)), 1.2, true)
	ratio("plugin p99 / forward p99", float64(p.q(99))/float64(f.q(99)), 0, true)
	ratio("plugin qps / forward qps (median batches)", median(p.rates)/median(f.rates), 0.8, false)
	ratio("plugin+next p50 / forward p50", float64(n.q(50))/float64(f.q(50)), 0, true)
	ratio("plugin+next qps / forward qps", median(n.rates)/median(f.rates), 0, false)
	ratio("denied qps / plugin allowed qps", median(d.rates)/median(p.rates), 0, false)
	ratio("plugin cpu/query / forward cpu/query (sidecar process)", float64(p.cpu)/float64(p.answers)/(float64(f.cpu)/float64(f.answers)), 0, true)
	fmt.Print(b.String())
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// side is one measured configuration.
type side struct {
	name, desc, addr string
	qname            func(int) string
	want             int
	rates            []float64
	pid              int
	cpu              time.Duration // sidecar CPU time over all measured batches
	answers          int
	mu               sync.Mutex
	lat              []time.Duration
}

func (s *side) q(p int) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lat) == 0 {
		return 0
	}
	slices.Sort(s.lat)
	return s.lat[min(len(s.lat)-1, len(s.lat)*p/100)]
}

func (s *side) pct(p int) string { return s.q(p).Round(time.Microsecond).String() }

// batch runs conc clients for d and returns the answers received.
func (s *side) batch(conc int, d time.Duration) (int, error) {
	var total atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for c := 0; c < conc; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			dialer := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(clientIP)}}
			conn, err := dialer.Dial("udp", s.addr)
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			co := &mdns.Conn{Conn: conn}
			defer co.Close()
			client := &mdns.Client{Timeout: 2 * time.Second}
			var lat []time.Duration
			for i := rand.IntN(names); time.Now().Before(deadline); i++ {
				m := new(mdns.Msg)
				m.SetQuestion(s.qname(i), mdns.TypeA)
				t0 := time.Now()
				r, _, err := client.ExchangeWithConn(m, co)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat = append(lat, time.Since(t0))
				if r.Rcode != s.want {
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: rcode %s, want %s", m.Question[0].Name, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[s.want]))
					return
				}
				total.Add(1)
			}
			s.mu.Lock()
			s.lat = append(s.lat, lat...)
			s.mu.Unlock()
		}(c)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return int(total.Load()), nil
}

func (s *side) cpuPerQuery() string {
	if s.answers == 0 {
		return "-"
	}
	return (s.cpu / time.Duration(s.answers)).Round(100 * time.Nanosecond).String()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// startUpstream answers every A query under example.test with one address.
func startUpstream() (*mdns.Server, error) {
	return sidecar.Upstream(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		if q.Qtype == mdns.TypeA && strings.HasSuffix(strings.ToLower(q.Name), ".example.test.") {
			m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300},
				A: net.IPv4(192, 0, 2, byte(1+len(q.Name)%200))}}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})
}

// pins creates the meta and learned maps (docs/SEAMS.md) under a bpffs
// directory of the benchmark's own when running as root.
func pins() (dir, note string, cleanup func(), err error) {
	var st unix.Statfs_t
	if os.Geteuid() != 0 || unix.Statfs("/sys/fs/bpf", &st) != nil || uint32(st.Type) != unix.BPF_FS_MAGIC {
		return "", ", no map writes: not root or /sys/fs/bpf not a bpffs", func() {}, nil
	}
	dir = fmt.Sprintf("/sys/fs/bpf/clawker-bench-dns-%08x", rand.Uint32())
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := bpf.PinMaps(dir); err != nil {
		cleanup()
		return "", "", nil, err
	}
	return dir, ", real pinned learned map writes", cleanup, nil
}

func writeSnapshot(path string) error {
	snap := &policy.Snapshot{
		Generation: 1,
		Networks: map[string]*policy.Network{"n1": {ID: "n1", Name: "bench",
			Subnet: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1")}},
		Endpoints: map[uint32]*policy.Endpoint{1: {Index: 1, NetworkID: "n1", IP: netip.MustParseAddr(clientIP), ContainerName: "bench",
			Policy: &policy.Policy{Generation: 1, Allows: []policy.Allowed{{Identity: 1, Pattern: ".example.test",
				Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}}}}}},
	}
	b, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
