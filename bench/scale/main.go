// Command scale benchmarks clawker-fw's policy path at 1, 50 and 500
// endpoints on one network of 10,000 rules (issue 13 §4): the plugin's
// commit path (every endpoint's compile, proxy/model Build, the DNS
// snapshot encode), the size of the snapshot file the DNS sidecar reads,
// the memory held, and the DNS allowed-query latency through the clawker
// CoreDNS plugin fed that file. Each endpoint count runs in its own child
// process (so heap and RSS are its own), the counts interleaved round by
// round, and the ratios 500-vs-1 and 50-vs-1 are reported side by side.
// The DNS row is also measured through the real sidecar (realdns.go: the
// clawker-coredns process over UDP, each endpoint asking from its own
// loopback address), 1 vs 500 endpoints; -realdns runs that row alone.
//
// Rules (network options, parsed as `docker network create -o` parses
// them): 6,000 exact https names, 3,000 wildcards, 500 CIDRs, 200 path
// rules, 100 plain-http names, 160 denies, and 40 tcp/udp rules (each
// takes one of the 900 listener ports). Every endpoint adds its own label
// rules (two names, a wildcard, a path rule, a deny).
//
// Targets at 500 endpoints: compile <= 200 ms, memory <= 150 MB, DNS p50
// within 1.1x of 1 endpoint. Run from the repository root:
// go run ./bench/scale (report: bench/results/scale.txt).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	clawkerdns "github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/store"
)

func main() {
	out := flag.String("out", "bench/results/scale.txt", "report file")
	child := flag.Int("child", 0, "internal: measure this many endpoints and print JSON")
	rounds := flag.Int("rounds", 3, "rounds (each runs every endpoint count once)")
	reps := flag.Int("reps", 5, "commits timed per child (after the first)")
	queries := flag.Int("queries", 20000, "DNS queries timed per child")
	cpuprofile := flag.String("cpuprofile", "", "with -child: write a CPU profile of the commits to this file")
	memprofile := flag.String("memprofile", "", "with -child: write a heap profile after the commits to this file")
	realOnly := flag.Bool("realdns", false, "only the real-sidecar DNS row: print it, write no report")
	flag.IntVar(&realCfg.rounds, "realrounds", 20, "real-sidecar DNS row: rounds (0: no row)")
	flag.IntVar(&realCfg.queries, "realqueries", 2000, "real-sidecar DNS row: queries timed per arm and round")
	flag.IntVar(&realCfg.conc, "realc", 4, "real-sidecar DNS row: concurrent clients for qps (0: none)")
	flag.BoolVar(&realCfg.control, "realcontrol", false, "real-sidecar DNS row: also a second 1-endpoint arm (the method's noise)")
	flag.Parse()
	profCPU, profMem = *cpuprofile, *memprofile
	var err error
	if *realOnly {
		err = runReal(os.Stdout)
	} else if *child > 0 {
		err = runChild(*child, *reps, *queries)
	} else {
		err = run(*out, *rounds, *reps, *queries)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/scale:", err)
		os.Exit(1)
	}
}

var counts = []int{1, 50, 500}

// profCPU and profMem are the -cpuprofile and -memprofile files of a child.
var profCPU, profMem string

// result is one child's measurement.
type result struct {
	Endpoints     int     `json:"endpoints"`
	FirstMS       float64 `json:"first_ms"`        // first commit, cold (identities and ports allocated)
	ColdCompileMS float64 `json:"cold_compile_ms"` // of which: every network and label compiled
	CommitMS      float64 `json:"commit_ms"`       // median commit after a network rule is added: compile+model+encode
	CompileMS     float64 `json:"compile_ms"`      // of which: the base and every layer compiled again
	JoinMS        float64 `json:"join_ms"`         // median commit after an endpoint joins
	JoinCompileMS float64 `json:"join_compile_ms"` // of which: compile (its labels)
	CloneMS       float64 `json:"clone_ms"`        // the plugin's state clone + encode per mutation
	CloneJSONMS   float64 `json:"clone_json_ms"`   // the same as it was done before: JSON round trip + indented encode
	AddMS         float64 `json:"add_ms"`          // plugin.AddRules end to end (consumers no-ops)
	ModelMS       float64 `json:"model_ms"`        // model.Build
	EncodeMS      float64 `json:"encode_ms"`       // before: the JSON file's encode (dns.EncodeSnapshot)
	WriteMS       float64 `json:"write_ms"`        // before: its atomic write (temp, fsync, rename)
	SnapBytes     int     `json:"snap_bytes"`      // before: the JSON file
	FilesEncMS    float64 `json:"files_enc_ms"`    // now (dns.SnapshotWriter), rule added: head + new base encoded
	FilesWriteMS  float64 `json:"files_write_ms"`  // now, rule added: written (rename)
	FilesJoinMS   float64 `json:"files_join_ms"`   // now, endpoint joins: encode + write (the head alone)
	HeadBytes     int     `json:"head_bytes"`      // now: the head
	BaseBytes     int     `json:"base_bytes"`      // now: the network's base file
	JoinWritten   int     `json:"join_written"`    // now: bytes written when an endpoint joins
	NewLoadMS     float64 `json:"new_load_ms"`     // now: the Watcher's cold load (head + base)
	RuleLoadMS    float64 `json:"rule_load_ms"`    // now: its load after a rule added (head + new base)
	JoinLoadMS    float64 `json:"join_load_ms"`    // now: its load after an endpoint joins (head; base kept)
	JSONHeapMB    float64 `json:"json_heap_mb"`    // before: the decoded JSON snapshot's heap
	HeapMB        float64 `json:"heap_mb"`         // live heap after GC: state + snapshot + model
	RSSMB         float64 `json:"rss_mb"`          // process RSS at that point
	LoadMS        float64 `json:"load_ms"`         // sidecar: read + decode + index the file
	SideHeapMB    float64 `json:"side_heap_mb"`
	DNSP50US      float64 `json:"dns_p50_us"`
	DNSP99US      float64 `json:"dns_p99_us"`
	Allowed       int     `json:"allowed"`
	Listeners     int     `json:"listeners"`
	Failures      int     `json:"failures"`
	PolicyAllow   int     `json:"policy_allows"`
}

func run(out string, rounds, reps, queries int) error {
	load, _ := os.ReadFile("/proc/loadavg")
	start := time.Now().UTC()
	res := map[int][]result{}
	for r := 0; r < rounds; r++ {
		for _, n := range counts {
			var x result
			if err := scaleenv.Child(&x, "-child", strconv.Itoa(n), "-reps", strconv.Itoa(reps), "-queries", strconv.Itoa(queries)); err != nil {
				return fmt.Errorf("child %d endpoints: %w", n, err)
			}
			fmt.Fprintf(os.Stderr, "round %d: %d endpoints: commit %.1f ms, snapshot %d B, rss %.1f MB, dns p50 %.1f µs\n",
				r+1, n, x.CommitMS, x.SnapBytes, x.RSSMB, x.DNSP50US)
			res[n] = append(res[n], x)
		}
	}
	med := map[int]result{}
	for _, n := range counts {
		med[n] = median(res[n])
	}

	var b strings.Builder
	fmt.Fprintf(&b, "clawker-fw scale benchmark (issue 13 §4)\n")
	fmt.Fprintf(&b, "date %s, %d CPUs, %s; shared machine: other agents' work ran meanwhile\n", start.Format(time.RFC3339), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "load average at start: %s", load)
	fmt.Fprintf(&b, "method: one network of 10,000 rules (6000 names, 3000 wildcards, 500 CIDRs, 200 path rules, 100 http, 160 denies,\n")
	fmt.Fprintf(&b, "40 tcp/udp with a listener port each) + 5 label rules per endpoint; each endpoint count in its own process,\n")
	fmt.Fprintf(&b, "%d rounds interleaved (1,50,500,1,...), median of the rounds. The plugin's commit path: plugin.State.SnapshotWith\n", rounds)
	fmt.Fprintf(&b, "(the network's base compiled once, each labelled endpoint's labels layered on it, policy.Layer; the plugin's\n")
	fmt.Fprintf(&b, "Compiler keeps what is unchanged) + model.Build (the base's routes once) + the DNS sidecar's files encoded\n")
	fmt.Fprintf(&b, "(dns.SnapshotWriter: a head with the endpoints and their label layers, one file per network base, written only\n")
	fmt.Fprintf(&b, "when the base changed). cold = the first commit, nothing cached; rule added = a network runtime rule added (the\n")
	fmt.Fprintf(&b, "base and every layer compiled again), and endpoint joins = one more labelled endpoint (its labels compiled),\n")
	fmt.Fprintf(&b, "medians of %d each; sidecar load = the clawker plugin's Watcher.Poll after that commit's files were written (read,\n", reps)
	fmt.Fprintf(&b, "check, decode, index, swap; a base it holds is kept), start = a new Watcher loading the last commit. \"before\" rows\n")
	fmt.Fprintf(&b, "measure, in the same commits, the form the sidecar read before: every endpoint in one JSON file\n")
	fmt.Fprintf(&b, "(dns.EncodeSnapshot, written with store.WriteFileAtomic), loaded by the same Watcher. plugin AddRules = a real\n")
	fmt.Fprintf(&b, "plugin.Plugin started on that state, a runtime rule added through AddRules as the admin API calls it (parse, state\n")
	fmt.Fprintf(&b, "clone, validation, commit: compile + model.Build + state.json written with fsync, publish) with the consumers\n")
	fmt.Fprintf(&b, "(proxy, BPF, host guard, DNS file) as no-ops. state clone+encode = what the plugin does per mutation (a copy\n")
	fmt.Fprintf(&b, "that shares each network's immutable options and option rules, plugin.StateEncoder's compact encode, the\n")
	fmt.Fprintf(&b, "network's configuration kept encoded), and beside it the same done as before (a JSON round trip and an\n")
	fmt.Fprintf(&b, "indented encode).\n")
	fmt.Fprintf(&b, "DNS = the clawker plugin's ServeDNS in-process on the\n")
	fmt.Fprintf(&b, "store its Watcher loaded from the files (upstream: the next plugin, an in-process answer), %d allowed queries\n", queries)
	fmt.Fprintf(&b, "from endpoints round-robin, one at a time. Memory: live heap after GC of the state+snapshot+model (what the\n")
	fmt.Fprintf(&b, "plugin holds for policy), the bench process's RSS, and the heap the sidecar's decoded snapshot holds.\n\n")
	row := func(name, unit string, f func(result) float64, target string) {
		fmt.Fprintf(&b, "%-28s", name+" ("+unit+")")
		for _, n := range counts {
			fmt.Fprintf(&b, "%12.2f", f(med[n]))
		}
		r500, r50 := scaleenv.Ratio(f(med[500]), f(med[1])), scaleenv.Ratio(f(med[50]), f(med[1]))
		fmt.Fprintf(&b, "%10.2f%10.2f  %s\n", r50, r500, target)
	}
	fmt.Fprintf(&b, "%-28s%12s%12s%12s%10s%10s  %s\n", "endpoints", "1", "50", "500", "50/1", "500/1", "target at 500")
	row("cold commit", "ms", func(r result) float64 { return r.FirstMS }, "")
	row("  compile", "ms", func(r result) float64 { return r.ColdCompileMS }, scaleenv.Check(med[500].ColdCompileMS <= 200, "<= 200 ms"))
	row("commit: endpoint joins", "ms", func(r result) float64 { return r.JoinMS }, "")
	row("  compile", "ms", func(r result) float64 { return r.JoinCompileMS }, scaleenv.Check(med[500].JoinCompileMS <= 200, "<= 200 ms"))
	row("  DNS files encode+write", "ms", func(r result) float64 { return r.FilesJoinMS }, "")
	row("  sidecar load", "ms", func(r result) float64 { return r.JoinLoadMS }, "")
	row("commit: rule added", "ms", func(r result) float64 { return r.CommitMS }, "")
	row("  compile", "ms", func(r result) float64 { return r.CompileMS }, scaleenv.Check(med[500].CompileMS <= 200, "<= 200 ms"))
	row("  model.Build", "ms", func(r result) float64 { return r.ModelMS }, "")
	row("  DNS files encode", "ms", func(r result) float64 { return r.FilesEncMS }, "")
	row("  DNS files write", "ms", func(r result) float64 { return r.FilesWriteMS }, "")
	row("  sidecar load", "ms", func(r result) float64 { return r.RuleLoadMS }, "")
	row("  before: JSON encode", "ms", func(r result) float64 { return r.EncodeMS }, "")
	row("  before: JSON write", "ms", func(r result) float64 { return r.WriteMS }, "")
	row("plugin AddRules", "ms", func(r result) float64 { return r.AddMS }, "")
	row("state clone+encode", "ms", func(r result) float64 { return r.CloneMS }, "")
	row("  as before (JSON)", "ms", func(r result) float64 { return r.CloneJSONMS }, "")
	row("DNS files: head", "KB", func(r result) float64 { return float64(r.HeadBytes) / 1024 }, "")
	row("DNS files: base", "KB", func(r result) float64 { return float64(r.BaseBytes) / 1024 }, "")
	row("  written: endpoint joins", "KB", func(r result) float64 { return float64(r.JoinWritten) / 1024 }, "")
	row("  before: JSON file", "KB", func(r result) float64 { return float64(r.SnapBytes) / 1024 }, "")
	row("sidecar load: start", "ms", func(r result) float64 { return r.NewLoadMS }, "")
	row("  before: JSON", "ms", func(r result) float64 { return r.LoadMS }, "")
	row("sidecar heap", "MB", func(r result) float64 { return r.SideHeapMB }, "")
	row("  before: JSON", "MB", func(r result) float64 { return r.JSONHeapMB }, "")
	row("plugin policy heap", "MB", func(r result) float64 { return r.HeapMB }, "")
	row("process RSS", "MB", func(r result) float64 { return r.RSSMB }, scaleenv.Check(med[500].RSSMB <= 150, "<= 150 MB"))
	row("DNS allowed p50", "µs", func(r result) float64 { return r.DNSP50US }, scaleenv.Check(med[500].DNSP50US <= 1.1*med[1].DNSP50US, "<= 1.1x of 1"))
	row("DNS allowed p99", "µs", func(r result) float64 { return r.DNSP99US }, "")
	fmt.Fprintf(&b, "\nchecks: allows per policy %d, listeners %d, rules without a listener %d, DNS answers allowed %d/%d (500 endpoints)\n",
		med[500].PolicyAllow, med[500].Listeners, med[500].Failures, med[500].Allowed, queries)
	fmt.Fprintf(&b, "connect() rate at scale: go run ./bench/bpf -scale (bench/results/bpf-scale.txt)\n")
	if realCfg.rounds > 0 {
		fmt.Fprintln(&b)
		if err := runReal(&b); err != nil {
			return err
		}
	}
	fmt.Print(b.String())
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// median takes each measured (float) field's median over the rounds.
func median(rs []result) result {
	m := rs[0]
	mv := reflect.ValueOf(&m).Elem()
	for f := range mv.NumField() {
		if mv.Field(f).Kind() != reflect.Float64 {
			continue
		}
		v := make([]float64, len(rs))
		for i := range rs {
			v[i] = reflect.ValueOf(rs[i]).Field(f).Float()
		}
		slices.Sort(v)
		mv.Field(f).SetFloat(v[len(v)/2])
	}
	return m
}

const netID = "scalenet"

// buildState is the plugin's persisted state with one network and n
// identified endpoints (addresses never used on the wire).
func buildState(n int) (*fwplugin.State, []string, error) {
	return scaleenv.State(scaleenv.Net{ID: netID, Bridge: "clawker-scale",
		Subnet: netip.MustParsePrefix("10.200.0.0/22"), Gateway: netip.MustParseAddr("10.200.0.1")}, scalegen.Rules, n)
}

type commit struct {
	snap                            *policy.Snapshot
	m                               *model.Model
	raw                             []byte
	compile, build, encode, written time.Duration
	files                           clawkerdns.PublishStats
}

// commitOnce is the plugin's publish path minus the kernel and proxy: the
// DNS sidecar's files in the form the plugin writes (sw), and, for the
// comparison, the JSON file of the form before it (path).
func commitOnce(st *fwplugin.State, cc *fwplugin.Compiler, gen uint64, path string, sw *clawkerdns.SnapshotWriter) (commit, error) {
	var c commit
	t0 := time.Now()
	c.snap = st.SnapshotWith(cc, gen)
	t1 := time.Now()
	m, err := model.Build(c.snap, st.Ports)
	if err != nil {
		return c, err
	}
	c.m = m
	t2 := time.Now()
	if c.raw, err = clawkerdns.EncodeSnapshot(c.snap); err != nil {
		return c, err
	}
	t3 := time.Now()
	if err := store.WriteFileAtomic(path, c.raw, 0o644); err != nil {
		return c, err
	}
	c.compile, c.build, c.encode, c.written = t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), time.Since(t3)
	if err := sw.Publish(c.snap); err != nil {
		return c, err
	}
	c.files = sw.Last()
	return c, nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func runChild(n, reps, queries int) error {
	tmp, err := os.MkdirTemp("", "clawker-bench-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	path := filepath.Join(tmp, "snapshot.json")
	sw := &clawkerdns.SnapshotWriter{Path: filepath.Join(tmp, "dns", "snapshot")}
	st, names, err := buildState(n)
	if err != nil {
		return err
	}
	r := result{Endpoints: n}

	// Cold: every network and label compiled from nothing (the plugin's
	// first commit after a start).
	first, err := commitOnce(st, fwplugin.NewCompiler(), 1, path, &clawkerdns.SnapshotWriter{Path: filepath.Join(tmp, "cold", "snapshot")})
	if err != nil {
		return err
	}
	r.FirstMS, r.ColdCompileMS = ms(first.compile+first.build+first.files.Encode), ms(first.compile)
	// Warm: the plugin's Compiler keeps the last commit's policies.
	cc := fwplugin.NewCompiler()
	if _, err := commitOnce(st, cc, 2, path, sw); err != nil {
		return err
	}
	// The sidecar's Watcher follows the files; each commit below is
	// loaded by one Poll (what an inotify wake-up or a tick runs).
	side := clawkerdns.NewStore()
	sideW := clawkerdns.NewWatcher(sw.Path, time.Hour, side, scaleenv.Quiet{})
	sideW.Poll()
	var total, comp, build, enc, wr, join, joinComp, clone, cloneJSON []float64
	var fEnc, fWrite, fJoin, ruleLoad, joinLoad []float64
	poll := func(gen uint64) (float64, error) {
		// The sidecar is its own process with a heap of a few MB: the
		// bench's garbage (the plugin side's compile) is collected first
		// so the load is not charged for marking it.
		runtime.GC()
		t0 := time.Now()
		sideW.Poll()
		d := ms(time.Since(t0))
		if g, _ := side.Generation(); g != gen {
			return 0, fmt.Errorf("sidecar serves generation %d after a poll, want %d", g, gen)
		}
		return d, nil
	}
	var last commit
	if profCPU != "" {
		f, err := os.Create(profCPU)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer f.Close()
	}
	gen := uint64(3)
	// The plugin's state encoder keeps the network's configuration encoded
	// (the first mutation after a start encodes it).
	stEnc := fwplugin.NewStateEncoder()
	if _, err := stEnc.Encode(st); err != nil {
		return err
	}
	for i := range reps {
		runtime.GC()
		// A network rule added (clawker-fw rules add): the base and every
		// layer on it are compiled again.
		nw := st.Networks[netID]
		rule, err := policy.ParseCompact(fmt.Sprintf("rt%d.example.net", i), policy.Allow)
		if err != nil {
			return err
		}
		rule.Source = policy.Provenance{Kind: policy.SourceRuntime, Key: "runtime", Item: rule.Dst, Network: netID}
		nw.Runtime = append(slices.Clone(nw.Runtime), rule)
		c, err := commitOnce(st, cc, gen, path, sw)
		if err != nil {
			return err
		}
		total = append(total, ms(c.compile+c.build+c.files.Encode))
		comp, build, enc, wr = append(comp, ms(c.compile)), append(build, ms(c.build)), append(enc, ms(c.encode)), append(wr, ms(c.written))
		fEnc, fWrite = append(fEnc, ms(c.files.Encode)), append(fWrite, ms(c.files.Write))
		if c.files.NewBases != 1 {
			return fmt.Errorf("a rule added wrote %d base files, want 1", c.files.NewBases)
		}
		d, err := poll(gen)
		if err != nil {
			return err
		}
		ruleLoad = append(ruleLoad, d)
		gen++
		last = c

		// An endpoint joins (its container identified): its labels alone.
		runtime.GC()
		id := fmt.Sprintf("join%d", i)
		j := n + 1 + i
		rules, err := policy.ParseLabels(scalegen.Labels(j), id)
		if err != nil {
			return err
		}
		st.Endpoints[id] = &fwplugin.Endpoint{ID: id, NetworkID: netID, Index: uint32(j), IP: netip.MustParseAddr(fmt.Sprintf("10.200.3.%d", 200+i)),
			Joined: true, ContainerID: id, ContainerName: id, LabelRules: rules}
		c, err = commitOnce(st, cc, gen, path, sw)
		if err != nil {
			return err
		}
		join, joinComp = append(join, ms(c.compile+c.build+c.files.Encode)), append(joinComp, ms(c.compile))
		fJoin = append(fJoin, ms(c.files.Encode+c.files.Write))
		if c.files.NewBases != 0 {
			return fmt.Errorf("an endpoint joining wrote %d base files, want 0", c.files.NewBases)
		}
		r.JoinWritten = c.files.Written
		if d, err = poll(gen); err != nil {
			return err
		}
		joinLoad = append(joinLoad, d)
		gen++
		delete(st.Endpoints, id)
		if _, err := commitOnce(st, cc, gen, path, sw); err != nil {
			return err
		}
		if _, err := poll(gen); err != nil {
			return err
		}
		gen++

		// What a mutation also costs the plugin: the state cloned and
		// encoded for its durable write; and side by side, the same as it
		// was done before (a JSON round trip, and an indented encode).
		t0 := time.Now()
		if _, err := stEnc.Encode(st.Clone()); err != nil {
			return err
		}
		clone = append(clone, ms(time.Since(t0)))
		t0 = time.Now()
		raw, err := json.Marshal(st)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, fwplugin.NewState()); err != nil {
			return err
		}
		if _, err := json.MarshalIndent(st, "", "  "); err != nil {
			return err
		}
		cloneJSON = append(cloneJSON, ms(time.Since(t0)))
	}
	// The plugin's whole path for a rule added through the admin API.
	adds, err := pluginRuleAdds(st, reps)
	if err != nil {
		return err
	}
	pprof.StopCPUProfile()
	if profMem != "" {
		f, err := os.Create(profMem)
		if err != nil {
			return err
		}
		runtime.GC()
		err = pprof.WriteHeapProfile(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	r.CommitMS, r.CompileMS, r.ModelMS, r.EncodeMS, r.WriteMS = med(total), med(comp), med(build), med(enc), med(wr)
	r.JoinMS, r.JoinCompileMS, r.CloneMS, r.CloneJSONMS, r.AddMS = med(join), med(joinComp), med(clone), med(cloneJSON), med(adds)
	r.FilesEncMS, r.FilesWriteMS, r.FilesJoinMS = med(fEnc), med(fWrite), med(fJoin)
	r.RuleLoadMS, r.JoinLoadMS = med(ruleLoad), med(joinLoad)
	r.SnapBytes = len(last.raw)
	r.HeadBytes, r.BaseBytes = last.files.HeadBytes, last.files.BaseBytes
	r.Listeners = len(last.m.Listeners)
	for _, fs := range last.m.Failures {
		r.Failures += len(fs)
	}
	if ep := last.snap.Endpoints[1]; ep != nil && ep.Policy != nil {
		for range ep.Policy.Entries() {
			r.PolicyAllow++
		}
	}
	first, last.raw = commit{}, nil
	r.HeapMB = heapMB()
	r.RSSMB = rssMB()
	runtime.KeepAlive(st)
	runtime.KeepAlive(last.snap)
	runtime.KeepAlive(last.m)

	// Before: the sidecar's Watcher loading the JSON file.
	side, sideW = nil, nil
	before := heapMB()
	jsonStore := clawkerdns.NewStore()
	runtime.GC()
	t0 := time.Now()
	clawkerdns.NewWatcher(path, time.Hour, jsonStore, scaleenv.Quiet{}).Poll()
	r.LoadMS = ms(time.Since(t0))
	if _, ok := jsonStore.Generation(); !ok {
		return fmt.Errorf("sidecar loaded no snapshot from %s", path)
	}
	r.JSONHeapMB = heapMB() - before
	runtime.KeepAlive(jsonStore)

	// Now: a sidecar starting on the files (head and base).
	before = heapMB()
	store := clawkerdns.NewStore()
	runtime.GC()
	t0 = time.Now()
	clawkerdns.NewWatcher(sw.Path, time.Hour, store, scaleenv.Quiet{}).Poll()
	r.NewLoadMS = ms(time.Since(t0))
	if _, ok := store.Generation(); !ok {
		return fmt.Errorf("sidecar loaded no snapshot from %s", sw.Path)
	}
	r.SideHeapMB = heapMB() - before

	c := clawkerdns.New(store, scaleenv.NopLearner{})
	c.UseNext = true
	c.Next = plugin.HandlerFunc(scaleenv.Answer)
	c.Decisions = func(decisionlog.Record) {}
	rng := rand.New(rand.NewPCG(1, 2))
	ips := make([]string, n)
	for i := range n {
		ips[i] = last.snap.Endpoints[uint32(i+1)].IP.String()
	}
	lat := make([]float64, 0, queries)
	ctx := context.Background()
	for i := range queries + queries/10 {
		name := names[rng.IntN(len(names))]
		if i%10 == 9 { // some label names
			name = fmt.Sprintf("e%d.agent.test", i%n+1)
		}
		req := new(mdns.Msg)
		req.SetQuestion(name+".", mdns.TypeA)
		rw := &test.ResponseWriter{RemoteIP: ips[i%n]}
		t := time.Now()
		rc, err := c.ServeDNS(ctx, rw, req)
		d := time.Since(t)
		if err != nil {
			return fmt.Errorf("query %s: %w", name, err)
		}
		if i < queries/10 { // warm-up
			continue
		}
		if rc == mdns.RcodeSuccess {
			r.Allowed++
		}
		lat = append(lat, float64(d)/1e3)
	}
	slices.Sort(lat)
	r.DNSP50US, r.DNSP99US = lat[len(lat)/2], lat[len(lat)*99/100]
	return json.NewEncoder(os.Stdout).Encode(r)
}

func heapMB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20)
}

func rssMB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
