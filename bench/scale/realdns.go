package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
	"github.com/clawker-fw/clawker-fw/bench/internal/sidecar"
	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	clawkerdns "github.com/clawker-fw/clawker-fw/dns"
	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
)

// The real-sidecar DNS row: queries through the real DNS sidecar
// (cmd/clawker-coredns, its own process, the Corefile the plugin renders,
// the clawker plugin's Watcher on the files dns.SnapshotWriter writes) over
// UDP, each from the asking endpoint's own address. The endpoints live on
// loopback (127.0.1.1, 127.0.1.2, ...: local on Linux, no setup), so each
// endpoint's queries leave a socket bound to its address and the sidecar
// identifies the endpoint by the source address as it does in production.
// The upstream is a fake authoritative server in this process (one A record
// for any name); nothing leaves the machine. No learned-map writes (no
// bpf_pins): the decision, upstream exchange and answer filtering are all
// there; bench/dns measures the map writes.

// realNet is where the real-sidecar row's endpoints live: endpoint i at
// 127.0.1.0 + i.
var realNet = scaleenv.Net{ID: netID, Bridge: "clawker-scale", Subnet: netip.MustParsePrefix("127.0.0.0/16"),
	Gateway: netip.MustParseAddr("127.0.1.0")}

// realArm is one endpoint count's sidecar and its clients' sockets.
type realArm struct {
	n     int
	names []string
	side  *sidecar.Sidecar
	conns []*mdns.Conn // socket j bound to endpoint j%n+1's address
	lat   []float64    // µs, every round
	p50s  []float64    // each round's p50, µs
	qps   []float64    // each round's concurrent rate
	cpu   time.Duration
	count int // queries answered in the timed loops (cpu/query)
}

// realResult is the row's measurement: per arm (1 and n endpoints) the
// median of the rounds' p50s, the p99 of all rounds' queries, queries/s
// with concurrent clients (median round) and sidecar CPU per query.
type realResult struct {
	Endpoints, Sockets          []int
	P50US, P99US, QPS, CPUPerUS []float64
	RoundP50s                   [][]float64
	Queries, Rounds, Conc       int
	Rules                       int
	Allowed, Asked              int
}

// realDNS measures the real-sidecar row: arms of 1 and n endpoints on one
// network of rules rules, alternating round by round; in each round every
// arm answers queries allowed queries sent one at a time (each from the
// next endpoint's socket), then conc clients for dur (qps). bin is a built
// clawker-coredns. control adds two arms: a second 1-endpoint sidecar
// measured as the others (what the method reads between equal arms), and
// a 1-endpoint sidecar asked from n sockets in turn, all bound to the
// endpoint's address (the client's and the kernel's side of rotating
// through n sockets, the sidecar's work that of 1 endpoint).
func realDNS(bin string, rules, n, rounds, queries, conc int, dur time.Duration, control bool) (*realResult, error) {
	tmp, err := os.MkdirTemp("", "clawker-bench-scale-realdns-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	up, err := fakeUpstream()
	if err != nil {
		return nil, err
	}
	defer up.Shutdown()
	upAddr := up.PacketConn.LocalAddr().String()

	var arms []*realArm
	defer func() {
		for _, a := range arms {
			a.close()
		}
	}()
	type armCfg struct{ endpoints, sockets int }
	cfgs := []armCfg{{1, 1}, {n, n}}
	if control {
		cfgs = append(cfgs, armCfg{1, 1}, armCfg{1, n})
	}
	for i, k := range cfgs {
		a, err := startRealArm(bin, filepath.Join(tmp, fmt.Sprint(i)), upAddr, rules, k.endpoints, k.sockets)
		if err != nil {
			return nil, fmt.Errorf("%d endpoints: %w", k.endpoints, err)
		}
		arms = append(arms, a)
	}
	res := &realResult{Queries: queries, Rounds: rounds, Conc: conc, Rules: rules}
	rng := rand.New(rand.NewPCG(1, 2))
	for r := range rounds {
		for _, a := range arms {
			// Warm-up (untimed), then the timed queries.
			if _, err := a.serial(rng, queries/10, nil); err != nil {
				return nil, err
			}
			var lat []float64
			cpu0 := sidecar.CPUTime(a.side.Cmd.Process.Pid)
			ok, err := a.serial(rng, queries, &lat)
			if err != nil {
				return nil, err
			}
			a.cpu += sidecar.CPUTime(a.side.Cmd.Process.Pid) - cpu0
			a.count += queries
			res.Allowed, res.Asked = res.Allowed+ok, res.Asked+queries
			a.lat = append(a.lat, lat...)
			slices.Sort(lat)
			a.p50s = append(a.p50s, lat[len(lat)/2])
			if conc > 0 {
				q, err := a.concurrent(conc, dur)
				if err != nil {
					return nil, err
				}
				a.qps = append(a.qps, q)
			}
			fmt.Fprintf(os.Stderr, "real sidecar round %d: %d endpoints, %d sockets: p50 %.1f µs\n", r+1, a.n, len(a.conns), lat[len(lat)/2])
		}
	}
	for _, a := range arms {
		slices.Sort(a.lat)
		res.Endpoints, res.Sockets = append(res.Endpoints, a.n), append(res.Sockets, len(a.conns))
		res.RoundP50s = append(res.RoundP50s, slices.Clone(a.p50s))
		res.P50US = append(res.P50US, medianF(a.p50s))
		res.P99US = append(res.P99US, a.lat[len(a.lat)*99/100])
		q := 0.0
		if len(a.qps) > 0 {
			q = medianF(a.qps)
		}
		res.QPS = append(res.QPS, q)
		res.CPUPerUS = append(res.CPUPerUS, float64(a.cpu)/1e3/float64(a.count))
	}
	return res, nil
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// startRealArm writes the DNS files of n endpoints (at realNet's
// addresses), starts a sidecar on them and opens max(n, sockets) client
// sockets, socket j bound to endpoint j%n+1's address; it returns when
// the sidecar answers endpoint 1.
func startRealArm(bin, dir, upAddr string, rules, n, sockets int) (*realArm, error) {
	st, names, err := scaleenv.State(realNet, rules, n)
	if err != nil {
		return nil, err
	}
	snap := st.SnapshotWith(fwplugin.NewCompiler(), 1)
	sw := &clawkerdns.SnapshotWriter{Path: filepath.Join(dir, "dns", "snapshot")}
	if err := sw.Publish(snap); err != nil {
		return nil, err
	}
	port := sidecar.FreePort()
	cf := clawkerdns.Corefile(clawkerdns.CorefileConfig{Bind: []string{"127.0.0.1"}, Port: port, SnapshotPath: sw.Path,
		Upstreams: []string{upAddr}, HealthAddr: sidecar.Addr(), ReadyAddr: sidecar.Addr(), MetricsAddr: sidecar.Addr(), StatusAddr: sidecar.Addr()})
	side, err := sidecar.Start(bin, filepath.Join(dir, "Corefile"), cf)
	if err != nil {
		return nil, err
	}
	a := &realArm{n: n, names: names, side: side}
	for j := range max(n, sockets) {
		i := j%n + 1
		ip := snap.Endpoints[uint32(i)].IP
		if ip != realNet.EndpointIP(i) {
			a.close()
			return nil, fmt.Errorf("endpoint %d at %s, want %s", i, ip, realNet.EndpointIP(i))
		}
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: ip.AsSlice()}}
		c, err := d.Dial("udp", side.DNS)
		if err != nil {
			a.close()
			return nil, fmt.Errorf("socket from %s: %w", ip, err)
		}
		a.conns = append(a.conns, &mdns.Conn{Conn: c})
	}
	// The Watcher loads the files at start; wait until it serves them.
	var last error
	for t0 := time.Now(); time.Since(t0) < 20*time.Second; time.Sleep(50 * time.Millisecond) {
		if last = a.ask(0, "e1.agent.test.", mdns.RcodeSuccess, nil); last == nil {
			break
		}
	}
	if last != nil {
		a.close()
		return nil, fmt.Errorf("sidecar not answering endpoint 1: %w", last)
	}
	return a, nil
}

func (a *realArm) close() {
	for _, c := range a.conns {
		c.Close()
	}
	a.side.Stop()
}

var realClient = &mdns.Client{Timeout: 2 * time.Second}

// ask sends name (A) from socket i and checks the rcode; its
// latency is appended to lat (µs) when lat is not nil.
func (a *realArm) ask(i int, name string, want int, lat *[]float64) error {
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	t := time.Now()
	r, _, err := realClient.ExchangeWithConn(m, a.conns[i])
	d := time.Since(t)
	if err != nil {
		return fmt.Errorf("%s from %s: %w", name, a.conns[i].LocalAddr(), err)
	}
	if r.Rcode != want {
		return fmt.Errorf("%s from %s: rcode %s, want %s", name, a.conns[i].LocalAddr(), mdns.RcodeToString[r.Rcode], mdns.RcodeToString[want])
	}
	if lat != nil {
		*lat = append(*lat, float64(d)/1e3)
	}
	return nil
}

// query is the i-th query of a loop, as the in-process row asks: a name
// of the network, every 10th the asking endpoint's own label name.
// It is sent from socket i%sockets (endpoint sock%n+1).
func (a *realArm) query(rng *rand.Rand, i int) (sock int, name string) {
	sock = i % len(a.conns)
	if i%10 == 9 {
		return sock, fmt.Sprintf("e%d.agent.test.", sock%a.n+1)
	}
	return sock, a.names[rng.IntN(len(a.names))] + "."
}

// serial sends count allowed queries one at a time, each from the next
// endpoint; it returns how many were answered NOERROR (an error ends it).
func (a *realArm) serial(rng *rand.Rand, count int, lat *[]float64) (int, error) {
	for i := range count {
		ep, name := a.query(rng, i)
		if err := a.ask(ep, name, mdns.RcodeSuccess, lat); err != nil {
			return i, err
		}
	}
	return count, nil
}

// concurrent runs conc clients for d, client c asking from endpoints c,
// c+conc, ... in turn, one outstanding query each; it returns answers/s.
func (a *realArm) concurrent(conc int, d time.Duration) (float64, error) {
	var wg sync.WaitGroup
	counts := make([]int, conc)
	errs := make([]error, conc)
	deadline := time.Now().Add(d)
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			// Own sockets (the serial loop's are bound to the same
			// addresses; a second socket per address and client keeps
			// replies apart).
			var conns []*mdns.Conn
			defer func() {
				for _, cn := range conns {
					cn.Close()
				}
			}()
			for ep := c % a.n; ep < a.n; ep += conc {
				dl := net.Dialer{LocalAddr: &net.UDPAddr{IP: realNet.EndpointIP(ep + 1).AsSlice()}}
				cn, err := dl.Dial("udp", a.side.DNS)
				if err != nil {
					errs[c] = err
					return
				}
				conns = append(conns, &mdns.Conn{Conn: cn})
			}
			for i := 0; time.Now().Before(deadline); i++ {
				k := i % len(conns)
				ep := (c%a.n + k*conc) + 1
				name := a.names[rng.IntN(len(a.names))] + "."
				if i%10 == 9 {
					name = fmt.Sprintf("e%d.agent.test.", ep)
				}
				m := new(mdns.Msg)
				m.SetQuestion(name, mdns.TypeA)
				r, _, err := realClient.ExchangeWithConn(m, conns[k])
				if err == nil && r.Rcode != mdns.RcodeSuccess {
					err = fmt.Errorf("%s from endpoint %d: rcode %s", name, ep, mdns.RcodeToString[r.Rcode])
				}
				if err != nil {
					errs[c] = err
					return
				}
				counts[c]++
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	return float64(total) / d.Seconds(), nil
}

// fakeUpstream answers every A query with one address (192.0.2.10) and
// anything else with NXDOMAIN, on 127.0.0.1.
func fakeUpstream() (*mdns.Server, error) {
	return sidecar.Upstream(func(w mdns.ResponseWriter, r *mdns.Msg) {
		if len(r.Question) == 1 && r.Question[0].Qtype == mdns.TypeA {
			rw := &answerWriter{ResponseWriter: w}
			scaleenv.Answer(context.Background(), rw, r)
			return
		}
		m := new(mdns.Msg)
		m.SetRcode(r, mdns.RcodeNameError)
		w.WriteMsg(m)
	})
}

// answerWriter marks scaleenv.Answer's reply authoritative.
type answerWriter struct{ mdns.ResponseWriter }

func (w *answerWriter) WriteMsg(m *mdns.Msg) error {
	m.Authoritative = true
	return w.ResponseWriter.WriteMsg(m)
}

// realRows is the real-sidecar row in the report's table layout (its 50
// column empty: the arms are 1 and 500 endpoints).
func realRows(r *realResult) string {
	var b strings.Builder
	row := func(name string, v []float64, target string) {
		fmt.Fprintf(&b, "%-28s%12.2f%12s%12.2f%10s%10.2f  %s\n", name, v[0], "-", v[1], "-", scaleenv.Ratio(v[1], v[0]), target)
	}
	row("DNS real sidecar p50 (µs)", r.P50US, scaleenv.Check(r.P50US[1] <= 1.1*r.P50US[0], "<= 1.1x of 1"))
	row("DNS real sidecar p99 (µs)", r.P99US, "")
	if r.Conc > 0 {
		row(fmt.Sprintf("  qps, %d clients", r.Conc), r.QPS, "")
	}
	row("  sidecar cpu/query (µs)", r.CPUPerUS, "")
	return b.String()
}

// realMethod describes the real-sidecar row for the report.
func realMethod(r *realResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "DNS real sidecar = the same allowed queries through the real DNS sidecar (cmd/clawker-coredns, its own process,\n")
	fmt.Fprintf(&b, "the Corefile the plugin renders, the clawker plugin's Watcher on dns.SnapshotWriter's files of the network's\n")
	fmt.Fprintf(&b, "%d rules), over UDP, each query from a socket bound to the asking endpoint's address (endpoints at 127.0.1.1 ...;\n", r.Rules)
	fmt.Fprintf(&b, "the sidecar identifies them by source address), answers from a fake upstream in the bench process, no\n")
	fmt.Fprintf(&b, "learned-map writes. Arms 1 and %d endpoints, one sidecar each, alternating %d rounds; per round %d queries one\n", r.Endpoints[1], r.Rounds, r.Queries)
	fmt.Fprintf(&b, "at a time (after %d untimed), each from the next endpoint: p50 = median of the rounds' p50s, p99 over all\n", r.Queries/10)
	if r.Conc > 0 {
		fmt.Fprintf(&b, "rounds; qps = %d concurrent clients (each its share of the endpoints in turn), median round; cpu/query = the\n", r.Conc)
	} else {
		fmt.Fprintf(&b, "rounds; cpu/query = the\n")
	}
	fmt.Fprintf(&b, "sidecar's CPU time over the one-at-a-time queries. Round p50s (µs): 1: %s; %d: %s. Median of the rounds'\n",
		fmtList(r.RoundP50s[0]), r.Endpoints[1], fmtList(r.RoundP50s[1]))
	fmt.Fprintf(&b, "own ratios (%d / 1, same round): %.2f. Answers allowed %d/%d.\n", r.Endpoints[1], r.PairedRatio(), r.Allowed, r.Asked)
	if len(r.Endpoints) > 2 {
		fmt.Fprintf(&b, "Control, a second 1-endpoint sidecar measured as a third arm: p50 %.2f µs, %.2fx the first (rounds' own\n", r.P50US[2], scaleenv.Ratio(r.P50US[2], r.P50US[0]))
		fmt.Fprintf(&b, "ratios: %.2f); %d / control %.2fx (rounds' own: %.2f). Round p50s: %s.\n", r.paired(2, 0), r.Endpoints[1], scaleenv.Ratio(r.P50US[1], r.P50US[2]), r.paired(1, 2), fmtList(r.RoundP50s[2]))
		fmt.Fprintf(&b, "Control, 1 endpoint asked from %d sockets in turn (all bound to its address) as a fourth arm: p50 %.2f µs,\n", r.Sockets[3], r.P50US[3])
		fmt.Fprintf(&b, "%.2fx the first (rounds' own: %.2f); %d endpoints / this %.2fx (rounds' own: %.2f); cpu/query %.2f µs. Round p50s: %s.\n",
			scaleenv.Ratio(r.P50US[3], r.P50US[0]), r.paired(3, 0), r.Endpoints[1], scaleenv.Ratio(r.P50US[1], r.P50US[3]), r.paired(1, 3), r.CPUPerUS[3], fmtList(r.RoundP50s[3]))
	}
	return b.String()
}

func fmtList(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, " ")
}

// realCfg is the real-sidecar row's flags.
var realCfg struct {
	rounds, queries, conc int
	control               bool
}

// runReal measures the real-sidecar row at 1 and 500 endpoints on the
// 10,000 rules and writes its method, load average and rows to w.
func runReal(w io.Writer) error {
	tmp, err := os.MkdirTemp("", "clawker-bench-scale-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin, err := sidecar.Build(tmp)
	if err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	start := time.Now().UTC()
	r, err := realDNS(bin, scalegen.Rules, 500, max(1, realCfg.rounds), realCfg.queries, realCfg.conc, time.Second, realCfg.control)
	if err != nil {
		return fmt.Errorf("real sidecar DNS: %w", err)
	}
	end, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(w, "%s", realMethod(r))
	fmt.Fprintf(w, "(%s, load average at start: %s, at end: %s)\n", start.Format(time.RFC3339), strings.TrimSpace(string(load)), strings.TrimSpace(string(end)))
	fmt.Fprintf(w, "%-28s%12s%12s%12s%10s%10s  %s\n", "endpoints", "1", "", "500", "", "500/1", "target at 500")
	fmt.Fprint(w, realRows(r))
	return nil
}

// PairedRatio is the median over rounds of the round's p50 at n endpoints
// over its p50 at 1 (arms measured next to each other share the load).
func (r *realResult) PairedRatio() float64 { return r.paired(1, 0) }

// paired is the median over rounds of arm a's p50 over arm b's.
func (r *realResult) paired(a, b int) float64 {
	v := make([]float64, len(r.RoundP50s[0]))
	for i := range v {
		v[i] = scaleenv.Ratio(r.RoundP50s[a][i], r.RoundP50s[b][i])
	}
	return medianF(v)
}
