// Command effective benchmarks rule change -> effective at 1, 50 and 500
// endpoints on one network of 10,000 rules (issue 13 §4: p99 <= 100 ms
// with 0 dropped established streams at 500 endpoints).
//
// Each endpoint count runs in its own child process: the real plugin core
// (plugin.New, as plugin/wire assembles it) restored from a state.json of
// that many identified endpoints, with the real builtin proxy listening on
// loopback, the real BPF programs and maps (a pin dir and an empty cgroup
// of its own, never the installed plugin's), the real DNS snapshot sink
// and the real clawker CoreDNS plugin's Watcher loading its file
// in-process; fakes only for the host network (bridges, nftables: the
// network is on loopback) and Docker (a list of the containers and their
// label rules).
//
// Before the changes, established streams are opened through the proxy
// from endpoints spread over all (TLS passthrough echo, plain HTTP
// keep-alive requests) and keep exchanging bytes; a stream that breaks is
// dropped. Then runtime rules are added and removed, alternately, through
// the admin API (`clawker-fw rules add|rm`'s call), and each consumer is
// probed from the call on until the change is effective there: the proxy
// (a new TLS connection to the name completes, or is refused), the DNS
// sidecar (the clawker plugin answers the name, or NXDOMAIN), the BPF
// base_routes map (holds the name's route, or not). Needs root.
//
//	go run ./bench/effective -out bench/results/effective.txt
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	"github.com/clawker-fw/clawker-fw/plugin/wire"
)

func main() {
	out := flag.String("out", "bench/results/effective.txt", "report file")
	countsFlag := flag.String("endpoints", "1,50,500", "endpoint counts, side by side")
	child := flag.Int("child", 0, "internal: measure this many endpoints and print JSON")
	rounds := flag.Int("rounds", 1, "rounds (each runs every endpoint count once, in its own process)")
	pr := params{}
	flag.IntVar(&pr.Rules, "rules", scalegen.Rules, "network rules")
	flag.IntVar(&pr.Changes, "changes", 40, "rule changes timed per endpoint count and round (adds and removes alternating)")
	flag.IntVar(&pr.Streams, "streams", 64, "established streams (half TLS passthrough, half plain HTTP keep-alive)")
	flag.BoolVar(&pr.KernelSplice, "kernel-splice", wire.DefaultKernelSplice != "false", "carry allowed passthrough flows in the kernel (CLAWKER_PROXY_KERNEL_SPLICE; default: the plugin's); false relays them with splice(2)")
	flag.Int64Var(&pr.SpliceAfter, "kernel-splice-after", wire.DefaultKernelSpliceAfter, "with -kernel-splice: bytes a flow moves through the proxy before the hand-over (CLAWKER_PROXY_KERNEL_SPLICE_AFTER; default: the plugin's)")
	flag.DurationVar(&pr.Timeout, "timeout", 10*time.Second, "give up on a consumer after this long per change")
	flag.DurationVar(&pr.Probe, "probe", 2*time.Millisecond, "pause between two probes of one consumer")
	flag.StringVar(&pr.CPUProfile, "cpuprofile", "", "with -child: write a CPU profile of the changes to this file")
	flag.Parse()
	var err error
	if *child > 0 {
		pr.Endpoints = *child
		var r result
		if r, err = run(pr); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(r)
		}
	} else {
		err = parent(*out, *countsFlag, *rounds, pr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/effective:", err)
		os.Exit(1)
	}
}

func parent(out, countsFlag string, rounds int, pr params) error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	var counts []int
	for _, f := range strings.Split(countsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-endpoints %q: want counts like 1,50,500", countsFlag)
		}
		counts = append(counts, n)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	start := time.Now().UTC()
	res := map[int][]result{}
	for r := range rounds {
		for _, n := range counts {
			var x result
			if err := scaleenv.Child(&x, "-child", strconv.Itoa(n), "-rules", strconv.Itoa(pr.Rules),
				"-changes", strconv.Itoa(pr.Changes), "-streams", strconv.Itoa(pr.Streams),
				"-kernel-splice="+strconv.FormatBool(pr.KernelSplice), "-kernel-splice-after", strconv.FormatInt(pr.SpliceAfter, 10), "-timeout", pr.Timeout.String(), "-probe", pr.Probe.String()); err != nil {
				return fmt.Errorf("child %d endpoints: %w", n, err)
			}
			all := pool(x.Add, x.Remove)
			fmt.Fprintf(os.Stderr, "round %d: %d endpoints: overall p50 %.1f ms p99 %.1f ms, dropped %d of %d streams\n",
				r+1, n, pct(all[cOverall], 50), pct(all[cOverall], 99), x.Dropped, x.Streams)
			res[n] = append(res[n], x)
		}
	}
	loadEnd, _ := os.ReadFile("/proc/loadavg")
	report := render(res, counts, rounds, pr, start, string(load), string(loadEnd))
	fmt.Print(report)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(report), 0o644)
}

// pool merges sample sets per consumer.
func pool(sets ...map[string][]float64) map[string][]float64 {
	out := map[string][]float64{}
	for _, s := range sets {
		for c, v := range s {
			out[c] = append(out[c], v...)
		}
	}
	return out
}

// pct is the p-th percentile (nearest rank) of v, 0 when v is empty.
func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func render(res map[int][]result, counts []int, rounds int, pr params, start time.Time, load, loadEnd string) string {
	var b strings.Builder
	last := counts[len(counts)-1]
	first := counts[0]
	merged := map[int]result{}
	for _, n := range counts {
		m := result{Endpoints: n, Add: map[string][]float64{}, Remove: map[string][]float64{}, Timeouts: map[string]int{}, ControlDenied: true}
		for _, x := range res[n] {
			m.Rules, m.Splice = x.Rules, x.Splice
			m.Add, m.Remove = pool(m.Add, x.Add), pool(m.Remove, x.Remove)
			for c, t := range x.Timeouts {
				m.Timeouts[c] += t
			}
			m.Streams += x.Streams
			m.Dropped += x.Dropped
			m.DropReasons = append(m.DropReasons, x.DropReasons...)
			m.Exchanges += x.Exchanges
			m.MaxPauseMS = max(m.MaxPauseMS, x.MaxPauseMS)
			m.StartMS = max(m.StartMS, x.StartMS)
			m.ControlDenied = m.ControlDenied && x.ControlDenied
		}
		merged[n] = m
	}
	fmt.Fprintf(&b, "clawker-fw rule change -> effective benchmark (issue 13 §4)\n")
	fmt.Fprintf(&b, "date %s, %d CPUs, %s; shared machine: other agents' work ran meanwhile\n", start.Format(time.RFC3339), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "load average at start: %s", load)
	fmt.Fprintf(&b, "load average at end:   %s", loadEnd)
	fmt.Fprintf(&b, "method: one network of %d rules (bench/scalegen, as bench/scale) + 5 label rules per endpoint; each endpoint\n", merged[last].Rules)
	fmt.Fprintf(&b, "count in its own process (%d round(s), counts in order %v). The real plugin core (plugin.New) restored from a\n", rounds, counts)
	fmt.Fprintf(&b, "state.json of N identified endpoints, with the real builtin proxy on loopback (flows: %s), the real BPF\n", merged[last].Splice)
	fmt.Fprintf(&b, "programs and maps (own pin dir, empty cgroup of its own), the real DNS snapshot sink and the clawker CoreDNS\n")
	fmt.Fprintf(&b, "plugin's Watcher (default poll) loading its file in-process; fakes only for bridges/nftables and Docker.\n")
	fmt.Fprintf(&b, "%d established streams per count (half TLS passthrough echo, half plain HTTP keep-alive GETs, one exchange per\n", pr.Streams)
	fmt.Fprintf(&b, "%s each, from endpoints spread over all) open before the changes and moving during all of them. Then %d\n", exchangeEvery, pr.Changes)
	fmt.Fprintf(&b, "changes per round: a runtime rule rtK.effective.test added, then removed, through the admin API (POST/DELETE\n")
	fmt.Fprintf(&b, "/v1/networks/NET/rules, the call of `clawker-fw rules add|rm`), 100 ms apart. From the call on, each consumer\n")
	fmt.Fprintf(&b, "is probed every %s until the change is effective there: proxy = a new TLS connection from an endpoint to\n", pr.Probe)
	fmt.Fprintf(&b, "the name through the 443 listener completes its handshake with the upstream (removed: is refused); DNS = the\n")
	fmt.Fprintf(&b, "clawker plugin's ServeDNS answers the name for that endpoint (removed: NXDOMAIN); BPF = base_routes holds the\n")
	fmt.Fprintf(&b, "name's route (removed: does not). overall = the last of the three. Times in ms from the call; a probe's own\n")
	fmt.Fprintf(&b, "duration and its pause bound the resolution. Percentiles are nearest-rank over adds and removes pooled\n")
	n := pr.Changes * rounds
	if k := n - int(float64(n)*0.99+0.999999) + 1; k <= 1 {
		fmt.Fprintf(&b, "(p99 of %d samples is their maximum).\n\n", n)
	} else {
		fmt.Fprintf(&b, "(p99 of %d samples is the %d. largest).\n\n", n, k)
	}

	fmt.Fprintf(&b, "%-34s", "endpoints")
	for _, n := range counts {
		fmt.Fprintf(&b, "%10d", n)
	}
	fmt.Fprintf(&b, "%10s  target at %d\n", fmt.Sprintf("%d/%d", last, first), last)
	row := func(name string, f func(result) float64, target string) {
		fmt.Fprintf(&b, "%-34s", name)
		for _, n := range counts {
			fmt.Fprintf(&b, "%10.1f", f(merged[n]))
		}
		fmt.Fprintf(&b, "%10.2f  %s\n", scaleenv.Ratio(f(merged[last]), f(merged[first])), target)
	}
	for _, c := range consumers {
		target := ""
		if c == cOverall {
			target = scaleenv.Check(pct(pool(merged[last].Add, merged[last].Remove)[c], 99) <= 100 && merged[last].Timeouts[c] == 0, "p99 <= 100 ms")
		}
		row(c+" p50 (ms)", func(r result) float64 { return pct(pool(r.Add, r.Remove)[c], 50) }, "")
		row(c+" p99 (ms)", func(r result) float64 { return pct(pool(r.Add, r.Remove)[c], 99) }, target)
	}
	row("  added: overall p50 (ms)", func(r result) float64 { return pct(r.Add[cOverall], 50) }, "")
	row("  removed: overall p50 (ms)", func(r result) float64 { return pct(r.Remove[cOverall], 50) }, "")
	row("changes not effective in time", func(r result) float64 {
		t := 0
		for _, v := range r.Timeouts {
			t += v
		}
		return float64(t)
	}, fmt.Sprintf("(limit %s per consumer)", pr.Timeout))
	row("established streams", func(r result) float64 { return float64(r.Streams) }, "")
	row("dropped established streams", func(r result) float64 { return float64(r.Dropped) }, scaleenv.Check(merged[last].Dropped == 0 && merged[last].Streams > 0, "0"))
	row("stream exchanges during changes", func(r result) float64 { return float64(r.Exchanges) }, "")
	row("longest stream exchange (ms)", func(r result) float64 { return r.MaxPauseMS }, "")
	row("setup: BPF load + plugin start (ms)", func(r result) float64 { return r.StartMS }, "")
	fmt.Fprintf(&b, "\nchecks: a name no rule allows was refused by the proxy, NXDOMAIN in DNS and unrouted in BPF at every count: %v\n", all(merged, counts))
	for _, n := range counts {
		for _, w := range merged[n].DropReasons {
			fmt.Fprintf(&b, "dropped at %d endpoints: %s\n", n, w)
		}
	}
	return b.String()
}

func all(m map[int]result, counts []int) bool {
	for _, n := range counts {
		if !m[n].ControlDenied {
			return false
		}
	}
	return true
}
