package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLineMsg(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{`time="2026-12-07T02:55:02Z" level=info msg="{\"component\":\"proxy\",\"level\":\"info\",\"msg\":\"allowed\",\"sampled_of\":12}" plugin=0123abcd`,
			"proxy: allowed (a sample)"},
		{`time="2026-12-07T02:55:02Z" level=info msg="{\"component\":\"dns\",\"msg\":\"first answer\"}" plugin=0123abcd`,
			"dns: first answer"},
		{`time="2026-12-07T02:55:02Z" level=error msg="not json at all" plugin=0123abcd`, "not json at all"},
	} {
		if got := lineMsg(c.line); got != c.want {
			t.Errorf("lineMsg(%s) = %q, want %q", c.line, got, c.want)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("odd: %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("even: %v", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("empty: %v", m)
	}
}

// TestFormat: every row of the report and of the Markdown table carries
// the medians and ratios of its arms, and the log-line counts add up.
func TestFormat(t *testing.T) {
	b := &bench{o: opts{rounds: 1, bulkBytes: 1e9, newconnN: 10, kaConns: 2}, samples: map[string]map[string][]sample{}, relayed: map[string]int{}}
	for _, w := range b.workloads() {
		b.samples[w.name] = map[string][]sample{
			"bridge":      {{MBps: 100, P50: 2, P99: 4, RPS: 1000, HostCPUPerGB: 5}},
			"cfw/on":      {{MBps: 90, P50: 3, P99: 4, RPS: 950, HostCPUPerGB: 6, Lines: 1, Flows: w.flows}},
			"cfw/off":     {{MBps: 50, P50: 4, P99: 4, RPS: 500, HostCPUPerGB: 5, Flows: w.flows}},
			"cfw-insp/on": {{RPS: 600, PluginCPU: 2.1, Secs: 3}}, "cfw-insp/off": {{RPS: 500, PluginCPU: 2.1, Secs: 3}},
			"floor": {{RPS: 500, PluginCPU: 1.4, Secs: 3}},
		}
	}
	report, md := b.format("1 1 1", "2 2 2", 0)
	for _, want := range []string{
		"TLS passthrough bulk download (MB/s)            100.00      90.00   0.90x      50.00   0.50x  >=0.95x  NOT met / NOT met; [0.90 | 0.50]",
		"HTTPS keep-alive INSPECTING h1 (req/s)         1000.00     600.00   0.60x     500.00   0.50x  >=0.60x  met / NOT met",
		"splice on       1 lines for     15 allowed HTTPS connections",
		"load average at start: 1 1 1; at end: 2 2 2",
		"floor relay keep-alive h2 (req/s)            1000.00     500.00   0.50x  [0.50]; CPU us per request: relay 800, clawker-fw inspecting 1100 (1.38x)",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	for _, want := range []string{
		"| TLS passthrough bulk download (MB/s) | 100.00 | 90.00 (0.90x) | 50.00 (0.50x) | ≥ 0.95x: **not met** / **not met** |",
		"| download: host CPU seconds per GB | 5.00 | 6.00 (1.20x) | 5.00 (1.00x) | ≤ 1.20x: met / met |",
		"| log lines dockerd relayed from the plugin, lines / allowed flows | — | 1 / 15 allowed HTTPS connections;",
		"| download: client+server+plugin CPU s/GB | 0.00 | 0.00 (0.00x) |",
		"| download: plugin CPU seconds per GB | — | 0.00 |",
		"| none per flow: met |\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestPairedRatio: each clawker-fw sample is compared with the bridge
// sample of its own block, not with the median of all bridge samples.
func TestPairedRatio(t *testing.T) {
	b := &bench{samples: map[string]map[string][]sample{"w": {
		"bridge": {{MBps: 100, Block: 0}, {MBps: 200, Block: 1}, {MBps: 400, Block: 2}},
		"cfw/on": {{MBps: 90, Block: 0}, {MBps: 180, Block: 1}, {MBps: 400, Block: 2}},
	}}}
	mbps := func(s sample) float64 { return s.MBps }
	if r := b.pairedRatio("w", "cfw/on", mbps); r != 0.9 {
		t.Errorf("paired ratio %v, want 0.9", r)
	}
	if r := b.pairedRatio("w", "cfw/off", mbps); r != 0 {
		t.Errorf("no samples: %v, want 0", r)
	}
}

// TestStartRelay: startRelay runs `load passrelay` and returns once it
// accepts connections; its stop ends the process; a relay that never
// listens at the address asked is reported with its name.
func TestStartRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the load binary")
	}
	dir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "load"), "./load").CombinedOutput(); err != nil {
		t.Fatalf("build load: %v: %s", err, out)
	}
	b := &bench{dir: dir}
	addr := freeAddr(t)
	stop, pid, err := b.startRelay("test relay", addr, "passrelay", "-listen", addr, "-upstream", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if pid == 0 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("pid %d is not a running relay", pid)
	}
	stop()
	if _, err := net.DialTimeout("tcp4", addr, time.Second); err == nil {
		t.Fatal("the relay still accepts after stop")
	}

	other := freeAddr(t)
	stop, _, err = b.startRelay("test relay", other, "passrelay", "-listen", freeAddr(t), "-upstream", "127.0.0.1:1")
	defer stop()
	if err == nil || !strings.Contains(err.Error(), "test relay at "+other+" not reachable") {
		t.Fatalf("a relay listening elsewhere: err = %v", err)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
