// Command proxy benchmarks clawker-fw's builtin proxy engine side by side
// with a direct connection and with Debian's squid (forward proxy, CONNECT +
// ssl_bump peek/splice on an SNI allowlist), on one loopback topology:
//
//	client (127.0.0.2) -> [builtin web listener | squid http_port | nothing] -> TLS upstream (127.0.0.1)
//
// The inspection workloads also run floors (floor.go): a minimal Go
// TLS-terminating relay with no policy on net/http, a lean one without
// net/http's server and transport, and a TLS-terminating byte copy.
//
// Every workload runs the variants interleaved in one run, so the ratios
// compare like with like. Loops are bounded in count and time; everything
// stays on loopback.
//
//	go run ./bench/proxy -out bench/results/proxy.txt
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

const (
	benchName   = "bench.example.test"
	inspectName = "inspect.example.test"
	clientIP    = "127.0.0.2"
)

var (
	out      = flag.String("out", "", "write the report to this file too")
	bulkMB   = flag.Int("bulk-mb", 256, "MB per bulk transfer")
	bulkReps = flag.Int("bulk-reps", 5, "bulk transfers per variant")
	connN    = flag.Int("conns", 300, "new connections per variant for the latency test")
	conc     = flag.Int("concurrency", 16, "concurrent clients for the requests/s tests")
	dur      = flag.Duration("duration", 2*time.Second, "duration of each requests/s run")
	noSquid  = flag.Bool("no-squid", false, "skip squid")
	keep     = flag.Bool("keep", false, "keep the temporary directory (squid config and logs)")
	inProc   = flag.Bool("in-process", false, "run the builtin engine inside the bench process instead of a child process")

	// Flags of the child process that runs the engine.
	child    = flag.Bool("engine-child", false, "internal: run the engine and print its address")
	upChild  = flag.Bool("upstream-child", false, "internal: run the upstream server and print its address")
	childUp  = flag.Int("child-up-port", 0, "internal")
	childUpP = flag.Int("child-up-plain-port", 0, "internal")
	childDNS = flag.String("child-dns", "", "internal")
	childCA  = flag.String("child-ca", "", "internal: CA cert+key PEM file")
	cpuProf  = flag.String("engine-cpuprofile", "", "write a CPU profile of the engine process here")
	trcFile  = flag.String("engine-trace", "", "write an execution trace of the engine process here")
	blkProf  = flag.String("engine-blockprofile", "", "write a block profile of the engine process here")
	mtxProf  = flag.String("engine-mutexprofile", "", "write a mutex profile of the engine process here")
	memProf  = flag.String("engine-allocprofile", "", "write an allocation profile (allocs) of the engine process here")
	only     = flag.String("only", "", "run only workloads whose group is this (bulk, newconn, keepalive, inspect)")
	kSplice  = flag.Bool("kernel-splice", true, "bulk: also run an engine with the kernel splice (bpf/splice.c; needs root)")
	childK   = flag.Bool("child-kernel-splice", false, "internal: the engine child opens the kernel splicer")
	bulkVars = flag.String("bulk-variants", "", "bulk: run only these variants (comma-separated: direct, builtin, squid, kernel; profiling)")
	holdMB   = flag.Int("kernel-hold-mb", 0, "kernel splice: MiB queued in front of a slow receiver before its sender is paused (0: the default)")
)

func main() {
	flag.Parse()
	if *upChild {
		if err := runUpstreamChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench upstream:", err)
			os.Exit(1)
		}
		return
	}
	if *floorChild {
		if err := runFloorChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor:", err)
			os.Exit(1)
		}
		return
	}
	if *child {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench engine:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type env struct {
	ca        *testCA
	upPort    uint16
	plainPort uint16 // the upstream's plain HTTP port
	dnsAddr   string
	eng       *builtin.Engine
	webAddr   string // builtin web listener for original port 443
	plainAddr string // builtin web listener for original port 80
	squidAddr string // "" without squid
	enginePID int
	upPID     int
	squidPID  int
	tmp       string
	// kernelAddr and kernelPID: a second engine, with the kernel splice.
	kernelAddr string
	kernelPID  int
	reg        *prometheus.Registry
	// floorAddr and floorPID: the inspection floor relay (floor.go).
	floorAddr, floorCopyAddr, floorLeanAddr, floorDirectAddr string
	floorPassAddr                                            string
	floorPID                                                 int
}

func run() error {
	tmp, err := os.MkdirTemp("", "clawker-bench-proxy-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "keeping", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	e := &env{ca: newTestCA(), tmp: tmp}
	caFile, err := e.writeCA()
	if err != nil {
		return err
	}
	// The upstream runs in a process of its own: client, proxy and server
	// are three processes, as in real use, for every variant.
	stopUp, upAddr, upPID, err := startChildPID("-upstream-child", "-child-ca", caFile)
	if err != nil {
		return err
	}
	defer stopUp()
	ups := strings.Fields(upAddr)
	if len(ups) != 2 {
		return fmt.Errorf("upstream child: %q", upAddr)
	}
	ap, err := netip.ParseAddrPort(ups[0])
	if err != nil {
		return err
	}
	pp, err := netip.ParseAddrPort(ups[1])
	if err != nil {
		return err
	}
	e.upPort, e.plainPort, e.upPID = ap.Port(), pp.Port(), upPID
	if e.dnsAddr, err = startDNS(); err != nil {
		return err
	}
	if *inProc {
		if err := e.startEngine(); err != nil {
			return err
		}
		defer e.eng.Close()
	} else {
		stop, err := e.startEngineChild(caFile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if *kSplice && !*inProc {
		stop, addr, pid, err := startChildPID("-engine-child", "-child-kernel-splice", "-kernel-hold-mb", strconv.Itoa(*holdMB), "-child-up-port", strconv.Itoa(int(e.upPort)), "-child-up-plain-port", strconv.Itoa(int(e.plainPort)), "-child-dns", e.dnsAddr, "-child-ca", caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kernel splice engine unavailable:", err)
		} else {
			defer stop()
			e.kernelAddr, e.kernelPID = strings.Fields(addr)[0], pid
		}
	}
	if !*noFloor && (*only == "" || *only == "inspect" || *only == "newconn") {
		stop, err := e.startFloor(caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "floor relay unavailable:", err)
		} else {
			defer stop()
		}
	}
	if !*noSquid {
		stop, addr, pid, err := startSquid(tmp, e.ca, e.upPort)
		if err != nil {
			fmt.Fprintln(os.Stderr, "squid unavailable:", err)
		} else {
			defer stop()
			e.squidAddr, e.squidPID = addr, pid
		}
	}

	var rep report
	rep.header(e)
	for _, w := range []struct {
		group string
		fn    func(*report)
	}{{"bulk", e.benchBulk}, {"newconn", e.benchNewConn}, {"keepalive", e.benchKeepAlive}, {"inspect", e.benchInspect}} {
		if *only == "" || *only == w.group {
			w.fn(&rep)
		}
	}
	text := rep.String()
	fmt.Print(text)
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(*out, []byte(text), 0o644)
	}
	return nil
}

func (e *env) startEngine() error {
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", e.dnsAddr)
	}}
	var splicer *bpf.Splicer
	if *childK {
		var err error
		if splicer, err = bpf.OpenSplicerWith(bpf.SpliceOptions{HoldBytes: uint64(*holdMB) << 20}); err != nil {
			return fmt.Errorf("open the kernel splicer: %w", err)
		}
	}
	e.reg = prometheus.NewRegistry()
	eng, err := builtin.New(builtin.Config{
		Registry:              e.reg,
		Splicer:               splicer,
		Certs:                 e.ca,
		Resolver:              resolver,
		UpstreamCAs:           []*x509.Certificate{e.ca.cert},
		AllowPrivateUpstreams: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		// The bench's "internet" is the host's loopback, which the proxy
		// otherwise refuses as host-local.
		HostLocal:  func(netip.Addr) (bool, error) { return false, nil },
		BindAddr:   "127.0.0.1",
		ListenPort: func(uint16) uint16 { return 0 },
		UpstreamPort: func(p uint16) uint16 {
			if p == 80 {
				return e.plainPort
			}
			return e.upPort
		},
		DrainTimeout: time.Second,
	})
	if err != nil {
		return err
	}
	src := policy.Provenance{Kind: policy.SourceLabel, Key: "clawker.allow"}
	pol := &policy.Policy{Generation: 1, Allows: []policy.Allowed{
		{Identity: 1, Pattern: benchName, Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}, {Proto: policy.ProtoHTTP, Lo: 80, Hi: 80}},
			Rules: []policy.EgressRule{{Dst: benchName, Proto: policy.ProtoHTTPS, Port: 443, Action: policy.Allow, Source: src},
				{Dst: benchName, Proto: policy.ProtoHTTP, Port: 80, Action: policy.Allow, Source: src}}},
		{Identity: 2, Pattern: inspectName, Inspect: true, Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}},
			Rules: []policy.EgressRule{{Dst: inspectName, Proto: policy.ProtoHTTPS, Port: 443, Action: policy.Allow, Inspect: true, Source: src}}},
	}}
	snap := (&policy.Snapshot{Generation: 1, Endpoints: map[uint32]*policy.Endpoint{
		1: {Index: 1, ID: "bench", IP: netip.MustParseAddr(clientIP), ContainerName: "bench", Policy: pol},
	}}).Index()
	m, err := model.Build(snap, model.NewPortAllocator())
	if err != nil {
		return err
	}
	if err := eng.Apply(snap, m); err != nil {
		return err
	}
	for _, l := range m.Listeners {
		switch {
		case l.Kind == model.KindWeb && l.OrigPort == 443:
			e.webAddr = eng.Addr(l.Port, l.L4).String()
		case l.Kind == model.KindWeb && l.OrigPort == 80:
			e.plainAddr = eng.Addr(l.Port, l.L4).String()
		}
	}
	e.eng = eng
	return nil
}

// --- variants ---

type variant struct {
	name string
	// dial opens a TCP path to name's upstream, ready for TLS.
	dial func(ctx context.Context, name string) (net.Conn, error)
	// proxyURL is set for squid (the HTTP client does CONNECT itself).
	proxyURL string
}

func (e *env) variants() []variant {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	up := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(e.upPort)))
	vs := []variant{
		{name: "direct", dial: func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", up) }},
		{name: "builtin", dial: func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", e.webAddr) }},
	}
	if e.squidAddr != "" {
		vs = append(vs, variant{name: "squid", proxyURL: "http://" + e.squidAddr, dial: func(ctx context.Context, name string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp4", e.squidAddr)
			if err != nil {
				return nil, err
			}
			target := net.JoinHostPort(name, strconv.Itoa(int(e.upPort)))
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				c.Close()
				return nil, err
			}
			if resp.StatusCode != 200 {
				c.Close()
				return nil, fmt.Errorf("squid CONNECT: %s", resp.Status)
			}
			if br.Buffered() > 0 {
				c.Close()
				return nil, errors.New("squid sent bytes after CONNECT")
			}
			return c, nil
		}})
	}
	return vs
}

func (e *env) tlsDial(ctx context.Context, v variant, name string, alpn ...string) (*tls.Conn, error) {
	c, err := v.dial(ctx, name)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: e.ca.pool(), NextProtos: alpn})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func (e *env) httpClient(v variant, keepAlive, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: e.ca.pool()},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1024,
		ForceAttemptHTTP2:   h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	if v.proxyURL != "" {
		tr.Proxy = func(*http.Request) (*urlT, error) { return parseURL(v.proxyURL) }
	} else {
		tr.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return v.dial(ctx, host)
		}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (e *env) url(v variant, name, path string) string {
	if v.name == "builtin" || v.name == "kernel" || strings.HasPrefix(v.name, "floor") {
		return "https://" + name + path
	}
	return "https://" + net.JoinHostPort(name, strconv.Itoa(int(e.upPort))) + path
}

// --- workloads ---

func (e *env) benchBulk(rep *report) {
	n := int64(*bulkMB) << 20
	vs := e.variants()
	if e.kernelAddr != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
		vs = append(vs, variant{name: "kernel", dial: func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", e.kernelAddr) }})
	}
	if *bulkVars != "" {
		var keep []variant
		for _, v := range vs {
			if slices.Contains(strings.Split(*bulkVars, ","), v.name) {
				keep = append(keep, v)
			}
		}
		vs = keep
	}
	for _, dir := range []string{"download", "upload"} {
		res := map[string][]float64{}
		cpu := map[string]float64{}  // proxy process CPU seconds
		host := map[string]float64{} // host-wide busy CPU seconds (/proc/stat)
		flow := map[string]float64{} // the flow's processes and the kernel's threads
		moved := map[string]float64{}
		for r := 0; r < *bulkReps; r++ {
			for _, v := range vs {
				pid := e.pidOf(v.name)
				c0, h0, f0 := procCPU(pid), hostCPU(), e.flowCPU(pid)
				mbps, err := e.bulkOnce(v, dir, n)
				if err != nil {
					rep.note("bulk %s %s: %v", dir, v.name, err)
					continue
				}
				cpu[v.name] += procCPU(pid) - c0
				host[v.name] += hostCPU() - h0
				flow[v.name] += e.flowSince(pid, f0)
				moved[v.name] += float64(n) / (1 << 30)
				res[v.name] = append(res[v.name], mbps)
			}
		}
		per := func(m map[string]float64, name string) float64 {
			if moved[name] == 0 {
				return 0
			}
			return m[name] / moved[name]
		}
		title := "TLS passthrough bulk " + dir + " (MB/s, median of " + strconv.Itoa(*bulkReps) + " x " + strconv.Itoa(*bulkMB) + " MB)"
		rep.row(title, median(res["direct"]), median(res["builtin"]), median(res["squid"]), true)
		if e.kernelAddr != "" {
			rep.row("  the same, builtin with the kernel splice (builtin column)", median(res["direct"]), median(res["kernel"]), median(res["squid"]), true)
		}
		rep.row("  host CPU seconds per GB, all CPUs (/proc/stat: softirq and kworkers count)", per(host, "direct"), per(host, "builtin"), per(host, "squid"), false)
		if e.kernelAddr != "" {
			rep.row("  host CPU seconds per GB, builtin with the kernel splice", per(host, "direct"), per(host, "kernel"), per(host, "squid"), false)
		}
		rep.row("  flow CPU seconds per GB: client, server, proxy, kworkers, ksoftirqd", per(flow, "direct"), per(flow, "builtin"), per(flow, "squid"), false)
		if e.kernelAddr != "" {
			rep.row("  flow CPU seconds per GB, builtin with the kernel splice", per(flow, "direct"), per(flow, "kernel"), per(flow, "squid"), false)
		}
		if e.enginePID != 0 {
			rep.row("  proxy process CPU seconds per GB relayed ("+dir+")", 0, per(cpu, "builtin"), per(cpu, "squid"), false)
		}
		if e.kernelPID != 0 {
			rep.row("  proxy process CPU seconds per GB relayed, kernel splice ("+dir+")", 0, per(cpu, "kernel"), per(cpu, "squid"), false)
		}
		if dir == "upload" && e.kernelAddr != "" {
			hold := "the default (" + strconv.Itoa(bpf.DefaultHoldBytes>>20) + " MiB)"
			if *holdMB != 0 {
				hold = strconv.Itoa(*holdMB) + " MiB"
			}
			rep.note("kernel splice: a sender is paused (TCP flow control) when %s wait in the kernel in front of a receiver that fell behind", hold)
		}
	}
}

// hostCPU returns the busy CPU seconds of the whole host so far (every
// /proc/stat cpu field but idle, iowait and steal).
func hostCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait, steal; guest time is in user already
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100 // USER_HZ
}

// flowCPU returns the CPU seconds so far, by pid, of what a bulk flow runs
// on: this process (the client), the upstream's, the proxy's (pid, 0 for
// none), and the kernel's worker and softirq threads (kworker/*,
// ksoftirqd/*; the kernel splice moves bytes there). Unlike hostCPU it
// leaves out the other processes of a shared machine. flowSince sums the
// growth since such a snapshot (a kworker that exits in between loses its
// share; a new one counts from zero).
func (e *env) flowCPU(pid int) map[int]float64 {
	m := map[int]float64{}
	for _, p := range []int{os.Getpid(), e.upPID, pid} {
		if p != 0 {
			m[p] = procCPU(p)
		}
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		n, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n))
		if err != nil {
			continue
		}
		if c := string(comm); strings.HasPrefix(c, "kworker/") || strings.HasPrefix(c, "ksoftirqd/") {
			m[n] = procCPU(n)
		}
	}
	return m
}

func (e *env) flowSince(pid int, before map[int]float64) float64 {
	var t float64
	for p, v := range e.flowCPU(pid) {
		t += v - before[p]
	}
	return t
}

// procCPU returns the user+system CPU seconds of process pid (0 for none).
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func (e *env) bulkOnce(v variant, dir string, n int64) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tc, err := e.tlsDial(ctx, v, benchName)
	if err != nil {
		return 0, err
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	if dir == "download" {
		fmt.Fprintf(tc, "SEND %d\n", n)
		got, err := io.Copy(io.Discard, tc)
		if err != nil {
			return 0, err
		}
		if got != n {
			return 0, fmt.Errorf("got %d of %d bytes", got, n)
		}
	} else {
		fmt.Fprintf(tc, "SINK\n")
		if _, err := io.Copy(tc, io.LimitReader(zeroReader{}, n)); err != nil {
			return 0, err
		}
		_ = tc.CloseWrite()
		if _, err := bufio.NewReader(tc).ReadString('\n'); err != nil {
			return 0, err
		}
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}

// newConnLatencies times n rounds of one new-connection GET of host per
// variant (interleaved), by variant name. With resume, each client keeps
// TLS sessions and offers them again (as browsers and most HTTP libraries
// do within a process).
func (e *env) newConnLatencies(rep *report, vs []variant, host string, n int, resume bool) map[string][]time.Duration {
	lat := map[string][]time.Duration{}
	clients := map[string]*http.Client{}
	for _, v := range vs {
		clients[v.name] = e.httpClient(v, false, false)
		if resume {
			clients[v.name].Transport.(*http.Transport).TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(16)
		}
	}
	for i := 0; i < n; i++ {
		for _, v := range vs {
			start := time.Now()
			resp, err := clients[v.name].Get(e.url(v, host, "/small"))
			if err != nil {
				rep.note("new conn %s to %s: %v", v.name, host, err)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat[v.name] = append(lat[v.name], time.Since(start))
		}
	}
	return lat
}

func (e *env) benchNewConn(rep *report) {
	lat := e.newConnLatencies(rep, e.withPassFloor(e.withKernel(e.variants())), benchName, *connN, false)
	for _, p := range []float64{0.5, 0.99} {
		q := func(n string) float64 { return float64(pct(lat[n], p).Microseconds()) / 1000 }
		rep.row(fmt.Sprintf("HTTPS new connection + GET, p%d latency (ms, %d conns)", int(p*100), *connN), q("direct"), q("builtin"), q("squid"), false)
		if e.kernelAddr != "" {
			rep.row("  the same, builtin with the kernel splice (builtin column)", q("direct"), q("kernel"), q("squid"), false)
		}
		if e.floorPassAddr != "" {
			rep.row("  the same through the passthrough floor, no policy (builtin column)", q("direct"), q("floor-pass"), q("squid"), false)
		}
	}
	// What pre-dialling the upstream could hide at most: the proxy's own
	// connect to it, a TCP connect on the same path (section 2 of issue 13).
	var conns []time.Duration
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	for i := 0; i < *connN; i++ {
		start := time.Now()
		c, err := d.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(e.upPort))))
		if err != nil {
			rep.note("tcp connect: %v", err)
			continue
		}
		conns = append(conns, time.Since(start))
		c.Close()
	}
	rep.row("  a TCP connect to the upstream alone (what a pre-dial could hide), p50 (ms)", ms(pct(conns, .5)), 0, 0, false)
	e.benchPlainNewConn(rep)
}

// benchPlainNewConn times new plain-HTTP connections with one GET each,
// direct and through the builtin web listener of original port 80 (decided
// per request by Host; the proxy's upstream connections are pooled).
func (e *env) benchPlainNewConn(rep *report) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	client := func(addr string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", addr) }}}
	}
	clients := map[string]*http.Client{
		"direct":  client(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(e.plainPort)))),
		"builtin": client(e.plainAddr),
	}
	arms := []string{"direct", "builtin"}
	if e.floorPassAddr != "" {
		clients["floor-pass"] = client(e.floorPassAddr)
		arms = append(arms, "floor-pass")
	}
	lat := map[string][]time.Duration{}
	for i := 0; i < *connN; i++ {
		for _, name := range arms {
			start := time.Now()
			resp, err := clients[name].Get("http://" + benchName + "/small")
			if err != nil {
				rep.note("plain new conn %s: %v", name, err)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				rep.note("plain new conn %s: %s", name, resp.Status)
				continue
			}
			lat[name] = append(lat[name], time.Since(start))
		}
	}
	for _, p := range []float64{0.5, 0.99} {
		rep.row(fmt.Sprintf("plain HTTP new connection + GET, p%d latency (ms, %d conns)", int(p*100), *connN), ms(pct(lat["direct"], p)), ms(pct(lat["builtin"], p)), 0, false)
		if e.floorPassAddr != "" {
			rep.row("  the same through the passthrough floor, no policy (builtin column)", ms(pct(lat["direct"], p)), ms(pct(lat["floor-pass"], p)), 0, false)
		}
	}
}

// withPassFloor adds the passthrough floor (floor.go) to vs, where it runs.
func (e *env) withPassFloor(vs []variant) []variant {
	if e.floorPassAddr == "" {
		return vs
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	return append(vs, variant{name: "floor-pass", dial: func(ctx context.Context, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp4", e.floorPassAddr)
	}})
}

// withKernel adds the engine with the kernel splice to vs, where it runs:
// the plugin's default where the kernel supports it.
func (e *env) withKernel(vs []variant) []variant {
	if e.kernelAddr == "" {
		return vs
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	return append(vs, variant{name: "kernel", dial: func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", e.kernelAddr) }})
}

// rounds is how many interleaved rounds the requests/s workloads run; the
// median round counts (the machine is shared, so one slow second must not
// decide a ratio).
const rounds = 3

func (e *env) benchKeepAlive(rep *report) {
	res := map[string][]load{}
	for r := 0; r < rounds; r++ {
		for _, v := range e.withKernel(e.variants()) {
			res[v.name] = append(res[v.name], e.measure(v, e.httpClient(v, true, false), e.url(v, benchName, "/small")))
		}
	}
	rep.loadRows(fmt.Sprintf("HTTPS keep-alive GET, passthrough (req/s, %d clients, median of %d x %s)", *conc, rounds, *dur), res)
	if k, ok := res["kernel"]; ok {
		rep.loadRows("  the same, builtin with the kernel splice (builtin column)", map[string][]load{"direct": res["direct"], "builtin": k, "squid": res["squid"]})
	}
}

func (e *env) benchInspect(rep *report) {
	vs := e.variants()
	arms := vs[:2:2]
	if e.floorAddr != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
		for name, addr := range map[string]string{"floor": e.floorAddr, "floor-copy": e.floorCopyAddr, "floor-lean": e.floorLeanAddr, "floor-direct": e.floorDirectAddr} {
			arms = append(arms, variant{name: name, dial: func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp4", addr) }})
		}
		slices.SortFunc(arms[2:], func(a, b variant) int { return strings.Compare(a.name, b.name) })
	}
	for _, h2 := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2 {
			name = "HTTP/2"
		}
		res := map[string][]load{}
		for r := 0; r < rounds; r++ {
			for i := range arms {
				v := arms[(i+r)%len(arms)] // arm order rotates by round
				if h2 && (v.name == "floor-lean" || v.name == "floor-direct") {
					continue // HTTP/1.1 only
				}
				res[v.name] = append(res[v.name], e.measure(v, e.httpClient(v, true, h2), e.url(v, inspectName, "/small")))
			}
		}
		rep.loadRows(fmt.Sprintf("HTTPS keep-alive GET, builtin INSPECTING, %s (req/s, %d clients, median of %d)", name, *conc, rounds), res)
		if f, ok := res["floor"]; ok {
			rep.loadRows("  the same through the floor relay: net/http + ReverseProxy, no policy (builtin column)", map[string][]load{"direct": res["direct"], "builtin": f})
			if l, ok := res["floor-direct"]; ok {
				rep.loadRows("  the same through the middle floor: net/http server, a dedicated upstream conn per client, no ReverseProxy/Transport", map[string][]load{"direct": res["direct"], "builtin": l})
			}
			if l, ok := res["floor-lean"]; ok {
				rep.loadRows("  the same through the lean floor: a goroutine + an upstream conn per client, no net/http server (builtin column)", map[string][]load{"direct": res["direct"], "builtin": l})
			}
			rep.loadRows("  the same through the copy floor: TLS terminated, bytes copied to upstream TLS, no HTTP (builtin column)", map[string][]load{"direct": res["direct"], "builtin": res["floor-copy"]})
			rep.row("  builtin INSPECTING vs the floor relay (direct column: floor req/s)", medianRPS(f), medianRPS(res["builtin"]), 0, false)
		}
	}
	// New connections under inspection (direct and builtin only).
	lat := e.newConnLatencies(rep, vs[:2], inspectName, *connN/2, false)
	rep.row("HTTPS new connection + GET, builtin INSPECTING, p50 latency (ms)", ms(pct(lat["direct"], .5)), ms(pct(lat["builtin"], .5)), 0, false)
	lat = e.newConnLatencies(rep, vs[:2], inspectName, *connN/2, true)
	rep.row("  the same, clients resuming TLS sessions, p50 latency (ms)", ms(pct(lat["direct"], .5)), ms(pct(lat["builtin"], .5)), 0, false)
}

// load is what one requests/s run cost: requests per second, and CPU
// microseconds per request of the proxy process and of every process of the
// path (client, upstream, proxy). CPU per request moves less than requests/s
// with the machine's load, so the rows say where the time goes.
type load struct{ rps, proxyUS, allUS float64 }

func (e *env) measure(v variant, cl *http.Client, url string) load {
	pid := e.pidOf(v.name)
	p0, u0, s0 := procCPU(pid), procCPU(e.upPID), procCPU(os.Getpid())
	rps := e.rps(cl, url)
	n := rps * dur.Seconds()
	if n == 0 {
		return load{}
	}
	p := procCPU(pid) - p0
	all := p + procCPU(e.upPID) - u0 + procCPU(os.Getpid()) - s0
	return load{rps: rps, proxyUS: p / n * 1e6, allUS: all / n * 1e6}
}

func (e *env) pidOf(variant string) int {
	return map[string]int{"builtin": e.enginePID, "squid": e.squidPID, "kernel": e.kernelPID, "floor": e.floorPID, "floor-copy": e.floorPID, "floor-lean": e.floorPID, "floor-direct": e.floorPID}[variant]
}

// loadRows reports the median requests/s of each variant, and the CPU per
// request of the path and of the proxy (medians of the same runs).
func (r *report) loadRows(title string, res map[string][]load) {
	med := func(name string, f func(load) float64) float64 {
		var v []float64
		for _, l := range res[name] {
			v = append(v, f(l))
		}
		return median(v)
	}
	rps := func(l load) float64 { return l.rps }
	all := func(l load) float64 { return l.allUS }
	proxy := func(l load) float64 { return l.proxyUS }
	r.row(title, med("direct", rps), med("builtin", rps), med("squid", rps), true)
	r.row("  CPU us per request, client + upstream + proxy processes", med("direct", all), med("builtin", all), med("squid", all), false)
	r.row("  CPU us per request, proxy process", 0, med("builtin", proxy), med("squid", proxy), false)
}

func medianRPS(ls []load) float64 {
	var v []float64
	for _, l := range ls {
		v = append(v, l.rps)
	}
	return median(v)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// rps runs conc clients doing GETs for dur and returns requests per second.
func (e *env) rps(cl *http.Client, url string) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*dur)
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := cl.Get(url)
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	cl.CloseIdleConnections()
	return float64(n.Load()) / dur.Seconds()
}

// --- report ---

type report struct {
	b     strings.Builder
	notes []string
}

func (r *report) header(e *env) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&r.b, "clawker-fw builtin proxy benchmark, %s\n", time.Now().UTC().Format(time.RFC3339))
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&r.b, "go %s, GOMAXPROCS %d, kernel %s", runtime.Version(), runtime.GOMAXPROCS(0), kernel)
	fmt.Fprintf(&r.b, "load average at start: %s", load)
	fmt.Fprintf(&r.b, "topology: Go client (127.0.0.2) -> [direct | builtin web listener | squid] -> Go TLS upstream (127.0.0.1), all loopback, one host;\n")
	fmt.Fprintf(&r.b, "  client, upstream, builtin engine and squid each run in a process of their own\n")
	where := "its own process (like squid; the plugin runs it apart from the containers)"
	if *inProc {
		where = "the bench process (shares GOMAXPROCS with client and upstream)"
	}
	fmt.Fprintf(&r.b, "builtin engine: in %s\n", where)
	if e.squidAddr != "" {
		fmt.Fprintf(&r.b, "squid: %s, forward proxy (http_port ssl-bump), CONNECT + ssl_bump peek step1 / splice on ssl::server_name allowlist / terminate rest (bumping with a static cert failed in squid 5.7 here: could not create TLS server context; inspection is compared with direct only)\n", squidVersion())
	} else {
		fmt.Fprintf(&r.b, "squid: not run\n")
	}
	fmt.Fprintf(&r.b, "ratios: builtin/direct and builtin/squid; for MB/s and req/s higher is better, for latency lower is better\n\n")
	fmt.Fprintf(&r.b, "%-78s %10s %10s %10s %9s %9s\n", "workload", "direct", "builtin", "squid", "b/direct", "b/squid")
}

func (r *report) row(name string, direct, b, squid float64, _ bool) {
	sq, rs := "-", "-"
	if squid > 0 {
		sq = fmt.Sprintf("%.2f", squid)
		rs = fmt.Sprintf("%.2fx", b/squid)
	}
	rd, bs := "-", "-"
	if b > 0 {
		bs = fmt.Sprintf("%.2f", b)
	}
	if direct > 0 && b > 0 {
		rd = fmt.Sprintf("%.2fx", b/direct)
	}
	fmt.Fprintf(&r.b, "%-78s %10.2f %10s %10s %9s %9s\n", name, direct, bs, sq, rd, rs)
}

func (r *report) note(format string, args ...any) {
	if len(r.notes) < 20 {
		r.notes = append(r.notes, fmt.Sprintf(format, args...))
	}
}

func (r *report) String() string {
	s := r.b.String()
	if len(r.notes) > 0 {
		s += "\nerrors during the run:\n  " + strings.Join(r.notes, "\n  ") + "\n"
	}
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// --- upstream, DNS, CA ---

// startUpstream serves TLS (h2 and HTTP/1.1) and plain HTTP; it returns
// their ports.
func startUpstream(ca *testCA) (tlsPort, plainPort uint16, err error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	pln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	cfg := &tls.Config{
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return ca.Leaf(h.ServerName) },
		NextProtos:     []string{"h2", "http/1.1"},
	}
	small := []byte(strings.Repeat("x", 512))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(small) })
	h1 := &http.Server{Handler: handler}
	go func() { _ = (&http.Server{Handler: handler}).Serve(pln) }()
	h2s := &http2.Server{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
				if tc.ConnectionState().NegotiatedProtocol == "h2" {
					h2s.ServeConn(tc, &http2.ServeConnOpts{Handler: handler, BaseConfig: h1})
					tc.Close()
					return
				}
				br := bufio.NewReader(tc)
				peek, err := br.Peek(4)
				if err != nil {
					tc.Close()
					return
				}
				if string(peek) == "SEND" || string(peek) == "SINK" {
					rawServe(tc, br)
					return
				}
				serveConn(h1, &bufConn{Conn: tc, r: br})
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port), uint16(pln.Addr().(*net.TCPAddr).Port), nil
}

func rawServe(c *tls.Conn, br *bufio.Reader) {
	defer c.Close()
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	if strings.HasPrefix(line, "SEND ") {
		n, _ := strconv.ParseInt(strings.TrimSpace(line[5:]), 10, 64)
		_, _ = io.Copy(c, io.LimitReader(zeroReader{}, n))
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, br)
		return
	}
	_, _ = io.Copy(io.Discard, br)
	_, _ = io.WriteString(c, "done\n")
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// serveConn serves one HTTP/1.1 connection with srv's handler.
func serveConn(srv *http.Server, c net.Conn) {
	l := &oneListener{c: c, done: make(chan struct{})}
	s := &http.Server{Handler: srv.Handler, ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			l.once.Do(func() { close(l.done) })
		}
	}}
	_ = s.Serve(l)
}

type oneListener struct {
	c    net.Conn
	used atomic.Bool
	done chan struct{}
	once sync.Once
}

func (l *oneListener) Accept() (net.Conn, error) {
	if l.used.CompareAndSwap(false, true) {
		return l.c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneListener) Close() error   { return nil }
func (l *oneListener) Addr() net.Addr { return l.c.LocalAddr() }

func startDNS() (string, error) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA && strings.HasSuffix(q.Name, ".example.test.") {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	return pc.LocalAddr().String(), nil
}

type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	der  []byte
	mu   sync.Mutex
	leaf map[string]*tls.Certificate
}

func newTestCA() *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clawker-fw bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, der: der, leaf: map[string]*tls.Certificate{}}
}

func (c *testCA) Leaf(name string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaf[name]; ok {
		return l, nil
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, err
	}
	l := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	c.leaf[name] = l
	return l, nil
}

func (c *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// --- squid ---

func squidVersion() string {
	out, err := exec.Command("squid", "-v").Output()
	if err != nil {
		return "squid"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// startSquid runs squid in the foreground with a config of its own under
// dir: a forward proxy whose CONNECT tunnels are peeked at (SNI) and spliced
// for the bench names only.
func startSquid(dir string, ca *testCA, upPort uint16) (stop func(), addr string, pid int, err error) {
	if _, err := exec.LookPath("squid"); err != nil {
		return nil, "", 0, err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, "", 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sq := filepath.Join(dir, "squid")
	if err := os.MkdirAll(sq, 0o777); err != nil {
		return nil, "", 0, err
	}
	_ = os.Chmod(dir, 0o755)
	_ = os.Chmod(sq, 0o777)
	// squid's own bump certificate (needed by ssl-bump ports even when it
	// only peeks and splices).
	leaf, err := ca.Leaf("squid.bench.test")
	if err != nil {
		return nil, "", 0, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		return nil, "", 0, err
	}
	var pemb []byte
	pemb = append(pemb, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})...)
	pemb = append(pemb, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})...)
	if err := os.WriteFile(filepath.Join(sq, "bump.pem"), pemb, 0o644); err != nil {
		return nil, "", 0, err
	}
	if err := os.WriteFile(filepath.Join(sq, "bump.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o644); err != nil {
		return nil, "", 0, err
	}
	if err := os.WriteFile(filepath.Join(sq, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der}), 0o644); err != nil {
		return nil, "", 0, err
	}
	hosts := fmt.Sprintf("127.0.0.1 %s %s\n", benchName, inspectName)
	if err := os.WriteFile(filepath.Join(sq, "hosts"), []byte(hosts), 0o644); err != nil {
		return nil, "", 0, err
	}
	conf := fmt.Sprintf(`
http_port 127.0.0.1:%[1]d ssl-bump tls-cert=%[2]s/bump.pem tls-key=%[2]s/bump.key generate-host-certificates=off
acl localnet src 127.0.0.0/8
acl allowed_sni ssl::server_name %[3]s
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump splice allowed_sni
ssl_bump terminate all
pinger_enable off
acl CONNECT method CONNECT
acl bench_port port %[4]d
http_access deny CONNECT !bench_port
http_access allow localnet
http_access deny all
hosts_file %[2]s/hosts
dns_nameservers 127.0.0.1
cache deny all
cache_mem 8 MB
access_log none
cache_log %[2]s/cache.log
pid_filename %[2]s/squid.pid
coredump_dir %[2]s
cache_effective_user proxy
workers 1
shutdown_lifetime 0 seconds
`, port, sq, benchName, upPort)
	cfgPath := filepath.Join(sq, "squid.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return nil, "", 0, err
	}
	cmd := exec.Command("squid", "-N", "-f", cfgPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, "", 0, err
	}
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp4", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			log, _ := os.ReadFile(filepath.Join(sq, "cache.log"))
			return nil, "", 0, fmt.Errorf("squid did not start: %s %s", stderr.String(), tail(string(log), 800))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func() { stopChild(cmd, func() { _ = cmd.Process.Signal(os.Interrupt) }) }, addr, cmd.Process.Pid, nil
}

// stopChild asks cmd to end (ask), waits for it, and kills it after 5 s.
func stopChild(cmd *exec.Cmd, ask func()) {
	ask()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

type urlT = url.URL

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }

// writeCA writes the CA certificate and key for the child processes.
func (e *env) writeCA() (string, error) {
	caFile := filepath.Join(e.tmp, "ca.pem")
	keyDER, err := x509.MarshalECPrivateKey(e.ca.key)
	if err != nil {
		return "", err
	}
	pemb := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ca.der})
	pemb = append(pemb, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	return caFile, os.WriteFile(caFile, pemb, 0o600)
}

// startChild runs this binary with args; the child prints "ADDR <addr>"
// and runs until its stdin closes.
func startChild(args ...string) (stop func(), addr string, err error) {
	stop, addr, _, err = startChildPID(args...)
	return stop, addr, err
}

func startChildPID(args ...string) (stop func(), addr string, pid int, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", 0, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", 0, err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", 0, err
	}
	stop = func() { stopChild(cmd, func() { stdin.Close() }) }
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		stop()
		return nil, "", 0, fmt.Errorf("child %v: %q %v", args, line, err)
	}
	return stop, strings.TrimSpace(line[5:]), cmd.Process.Pid, nil
}

// startEngineChild runs the engine in a child process of this binary, as
// squid runs in its own: client, upstream and proxy do not share one Go
// scheduler.
func (e *env) startEngineChild(caFile string) (func(), error) {
	stop, addr, pid, err := startChildPID("-engine-child", "-child-up-port", strconv.Itoa(int(e.upPort)), "-child-up-plain-port", strconv.Itoa(int(e.plainPort)), "-child-dns", e.dnsAddr, "-child-ca", caFile,
		"-engine-cpuprofile", *cpuProf, "-engine-trace", *trcFile, "-engine-blockprofile", *blkProf, "-engine-mutexprofile", *mtxProf, "-engine-allocprofile", *memProf)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(addr)
	if len(f) != 2 {
		stop()
		return nil, fmt.Errorf("engine child: %q", addr)
	}
	e.webAddr, e.plainAddr, e.enginePID = f[0], f[1], pid
	return stop, nil
}

// runChild is the child process: it starts the engine, prints the web
// listener's address and runs until its stdin closes.
func runChild() error {
	ca, err := readCA(*childCA)
	if err != nil {
		return err
	}
	e := &env{ca: ca, upPort: uint16(*childUp), plainPort: uint16(*childUpP), dnsAddr: *childDNS}
	if err := e.startEngine(); err != nil {
		return err
	}
	defer e.eng.Close()
	stopCPU, err := startCPUProfile(*cpuProf)
	if err != nil {
		return err
	}
	defer stopCPU()
	stopProfiles, err := startProfiles()
	if err != nil {
		return err
	}
	defer stopProfiles()
	fmt.Printf("ADDR %s %s\n", e.webAddr, e.plainAddr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	if *childK {
		// What the kernel path did, for the report (stderr).
		mfs, _ := e.reg.Gather()
		for _, mf := range mfs {
			if !strings.Contains(mf.GetName(), "kernel_splice") {
				continue
			}
			for _, m := range mf.GetMetric() {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
				fmt.Fprintf(os.Stderr, "kernel-splice engine: %s{%s} %.0f\n", mf.GetName(), strings.Join(ls, ","), m.GetCounter().GetValue())
			}
		}
	}
	return nil
}

// startCPUProfile writes a CPU profile to path ("": none) until the
// returned func is called.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// startProfiles starts the engine child's execution trace and block and
// mutex profiling (-engine-trace, -engine-blockprofile, -engine-mutexprofile);
// the returned func writes them out.
func startProfiles() (func(), error) {
	var stops []func()
	if *trcFile != "" {
		f, err := os.Create(*trcFile)
		if err != nil {
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			return nil, err
		}
		stops = append(stops, func() { trace.Stop(); f.Close() })
	}
	for _, p := range []struct {
		file *string
		name string
		on   func(int)
	}{
		{blkProf, "block", runtime.SetBlockProfileRate},
		{mtxProf, "mutex", func(r int) { runtime.SetMutexProfileFraction(r) }},
		{memProf, "allocs", func(int) {}},
	} {
		if *p.file == "" {
			continue
		}
		p.on(1)
		stops = append(stops, func() {
			if f, err := os.Create(*p.file); err == nil {
				_ = pprof.Lookup(p.name).WriteTo(f, 0)
				f.Close()
			}
		})
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}, nil
}

// runUpstreamChild serves the upstream in a process of its own.
func runUpstreamChild() error {
	ca, err := readCA(*childCA)
	if err != nil {
		return err
	}
	port, plain, err := startUpstream(ca)
	if err != nil {
		return err
	}
	fmt.Printf("ADDR 127.0.0.1:%d 127.0.0.1:%d\n", port, plain)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

func readCA(path string) (*testCA, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ca := &testCA{leaf: map[string]*tls.Certificate{}}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			ca.der = blk.Bytes
			if ca.cert, err = x509.ParseCertificate(blk.Bytes); err != nil {
				return nil, err
			}
		case "EC PRIVATE KEY":
			if ca.key, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
				return nil, err
			}
		}
	}
	return ca, nil
}
