package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// obsMetricsAddr is where the test turns the plugin's Prometheus endpoint
// on (the plugin runs in the host's network namespace).
const obsMetricsAddr = "127.0.0.1:19464"

// TestObserveLogsMetricsEDE runs real traffic through a firewalled container
// and checks what an operator sees of it:
//   - logs: dockerd relays the plugin's info lines at level=info and its
//     warnings at level=error, each keeping its own level, sidecar lines
//     too; one decision-line shape (the same fields) for dns, bpf, proxy
//     and authz; allowed flows and queries are counted, not logged one line
//     each (a sample stands for them); repeated identical hook denials are
//     one line with a count;
//   - the denial log still lists DNS denials (typed records from the
//     sidecar, no log text parsed) and the ring serves allowed flows;
//   - metrics: one endpoint with non-zero series from every part;
//   - EDE: dig (EDNS) sees Extended DNS Error 15 with the fix on a denied
//     name; without EDNS the answer carries none.
func TestObserveLogsMetricsEDE(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	ref := e.PluginRef()
	setMetrics := func(v string) {
		f.setAuthz(t, false)
		e.MustDocker(t, "plugin", "disable", "-f", ref)
		e.MustDocker(t, "plugin", "set", ref, "CLAWKER_METRICS_ADDR="+v)
		e.MustDocker(t, "plugin", "enable", "--timeout", "60", ref)
		f.waitAdmin(t, 30*time.Second)
	}
	setMetrics(obsMetricsAddr)
	t.Cleanup(func() { setMetrics("") })
	f.setAuthz(t, true)
	t.Cleanup(func() { f.setAuthz(t, false) })
	deb, err := e.ImportDebian()
	require.NoError(t, err)

	const net, c, digC = "cfw-obs", "cfw-obs-c", "cfw-obs-dig"
	f.network(t, net, "10.231.61.0/24", "clawker.allow=http://"+harness.AllowedHost+","+harness.AllowedHost)
	f.run(t, c, net, nil, "sleep", "3600")
	e.MustDocker(t, "run", "-d", "--name", digC, "--network", net, deb, "sleep", "3600")
	t.Cleanup(func() { _, _, _ = e.Docker("rm", "-f", digC) })
	f.waitIdentified(t, c)
	f.waitIdentified(t, digC)
	logOff := len(readFile(t, e.DockerdLog()))
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range pluginLines(readFile(t, e.DockerdLog())) {
				if strings.Contains(l, "names") || strings.Contains(l, "metrics") || strings.Contains(l, "events") {
					t.Log(l)
				}
			}
		}
	})

	// Allowed traffic: flows plain-HTTP requests, each with its DNS query.
	const flows = 30
	out, _, _ := e.Docker("exec", c, "sh", "-c", fmt.Sprintf(
		`n=0; for i in $(seq %d); do if %s 2>&1 | grep -q path=/obs; then n=$((n+1)); fi; done; echo ok=$n`,
		flows, httpScript(harness.AllowedHost, "/obs")))
	require.Contains(t, out, fmt.Sprintf("ok=%d", flows), "every allowed request answered")
	// Denials of every part.
	_, _, _ = e.Docker("exec", c, "sh", "-c", "nslookup -type=a "+harness.DeniedHost+" >/dev/null 2>&1")
	out, _, _ = e.Docker("exec", c, "sh", "-c",
		`printf 'GET /obs-fronted HTTP/1.0\r\nHost: `+harness.DeniedHost+`\r\n\r\n' | nc -w 2 `+harness.AllowedHost+` 80 2>&1`)
	require.Contains(t, out, "403", "the proxy refuses a denied Host on an allowed address")
	const literals = 5
	out, _, _ = e.Docker("exec", c, "sh", "-c", fmt.Sprintf(
		`for i in $(seq %d); do nc -w 1 10.220.0.11 80 </dev/null 2>&1; done; echo done`, literals))
	t.Logf("IP literals: %s", strings.TrimSpace(out))
	_, errOut, err := e.Docker("create", "--network", net, "--privileged", f.img, "true")
	require.Error(t, err, "authz refuses --privileged")
	require.Contains(t, errOut, "privileged")

	t.Run("denial log from typed DNS records", func(t *testing.T) {
		opsEventually(t, 10*time.Second, func() (bool, string) {
			lines := f.mustCFW(t, "denials")
			for _, l := range strings.Split(lines, "\n") {
				if strings.Contains(l, c) && strings.Contains(l, harness.DeniedHost) && strings.Contains(l, "query answered NXDOMAIN") &&
					strings.Contains(l, "clawker.allow="+harness.DeniedHost) {
					return true, ""
				}
			}
			return false, "no DNS denial naming the container, the name and the fix:\n" + lines
		})
	})

	t.Run("allowed flows are in the ring", func(t *testing.T) {
		raw, err := exec.Command("curl", "-sS", "--unix-socket", filepath.Join(e.StateDir(), "admin.sock"),
			"http://x/v1/decisions?source=proxy&verdict=allow&n=1000&container="+c).CombinedOutput()
		require.NoError(t, err, "%s", raw)
		n := strings.Count(string(raw), `"dest_name":"`+harness.AllowedHost+`"`)
		require.GreaterOrEqual(t, n, flows, "every allowed flow kept: %s", tailLines(string(raw), 3))
	})

	t.Run("metrics from every part", func(t *testing.T) {
		var fams map[string]*dto.MetricFamily
		opsEventually(t, 15*time.Second, func() (bool, string) {
			fams = scrape(t, "http://"+obsMetricsAddr+"/metrics")
			// The folded and DNS parts arrive asynchronously.
			return metricSum(fams, "clawker_decisions_total", map[string]string{"source": "bpf", "verdict": "deny", "container": c}) >= literals &&
				metricSum(fams, "clawker_decisions_total", map[string]string{"source": "dns", "verdict": "deny", "container": c}) > 0, "waiting for the bpf and dns denials"
		})
		mine := map[string]string{"network": net, "container": c}
		with := func(kv ...string) map[string]string {
			m := map[string]string{}
			for k, v := range mine {
				m[k] = v
			}
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i]] = kv[i+1]
			}
			return m
		}
		for _, chk := range []struct {
			name   string
			labels map[string]string
			min    float64
		}{
			{"clawker_decisions_total", with("source", "proxy", "verdict", "allow"), flows},
			{"clawker_decisions_total", with("source", "proxy", "verdict", "deny"), 1},
			{"clawker_decisions_total", with("source", "dns", "verdict", "allow"), flows},
			{"clawker_decisions_total", with("source", "dns", "verdict", "deny"), 1},
			{"clawker_decisions_total", with("source", "bpf", "verdict", "deny"), literals},
			{"clawker_decisions_total", map[string]string{"source": "authz", "verdict": "deny"}, 1},
			{"clawker_proxy_flow_bytes_total", with("direction", "down"), 1},
			{"clawker_proxy_allowed_total", nil, flows},
			{"clawker_proxy_denied_total", nil, 1},
			{"clawker_proxy_bytes_total", map[string]string{"direction": "down"}, 1},
			{"clawker_bpf_connects_total", with("verdict", "allow"), flows},
			{"clawker_bpf_connects_total", with("verdict", "deny"), literals},
			{"clawker_bpf_dns_steered_total", mine, 1},
			{"clawker_learned_entries", mine, 1},
			{"clawker_learned_quota", nil, 1},
			{"clawker_authz_calls_total", nil, 1},
			{"clawker_authz_inspected_total", nil, 1},
			{"clawker_authz_denied_total", nil, 1},
			{"coredns_clawker_allowed_total", nil, flows},
			{"coredns_clawker_denied_total", nil, 1},
		} {
			got := metricSum(fams, chk.name, chk.labels)
			t.Logf("%s%v = %g", chk.name, chk.labels, got)
			require.GreaterOrEqual(t, got, chk.min, "%s%v", chk.name, chk.labels)
		}
		// The Grafana dashboard asks only for families the endpoint serves
		// (those counting only what did not happen here may be absent).
		dash := readFile(t, filepath.Join(opsRepoRoot(t), "docs", "grafana-clawker-fw.json"))
		absentOK := map[string]bool{"clawker_proxy_capped_total": true, "coredns_clawker_errors_total": true}
		for _, name := range regexp.MustCompile(`\b(?:clawker|coredns_clawker|process|go)_[a-z_]+`).FindAllString(dash, -1) {
			if !absentOK[name] {
				require.Contains(t, fams, name, "the dashboard's %s is served", name)
			}
		}
	})

	t.Run("logs keep their level, one schema, no line per allowed flow", func(t *testing.T) {
		var lines []string
		// The folded hook denials are logged at the end of their period.
		opsEventually(t, 30*time.Second, func() (bool, string) {
			lines = pluginLines(readFile(t, e.DockerdLog())[logOff:])
			for _, l := range lines {
				if strings.Contains(l, `source\":\"bpf`) && strings.Contains(l, `\"count\":`+strconv.Itoa(literals-1)) {
					return true, ""
				}
			}
			return false, "no folded line for the repeated hook denials"
		})
		allowed, decisions := 0, 0
		bySource := map[string]string{}
		for _, l := range lines {
			if !strings.Contains(l, "CLAWKER-DECISION") {
				continue
			}
			decisions++
			if strings.Contains(l, `verdict\":\"allow`) {
				allowed++
				require.Contains(t, l, "level=info", "allowed lines at info: %s", l)
				require.Contains(t, l, `sampled_of`, "an allowed line is a sample: %s", l)
			}
			for _, src := range []string{"dns", "bpf", "proxy", "authz"} {
				if strings.Contains(l, `source\":\"`+src+`\"`) && strings.Contains(l, `verdict\":\"deny`) && bySource[src] == "" {
					bySource[src] = l
				}
			}
		}
		t.Logf("%d decision lines for >= %d allowed flows and queries; %d of them allowed (samples)", decisions, 2*flows, allowed)
		require.LessOrEqual(t, allowed, 6, "allowed flows and queries are sampled, not logged one line each")
		for _, src := range []string{"dns", "bpf", "proxy", "authz"} {
			l := bySource[src]
			require.NotEmpty(t, l, "a %s denial line", src)
			t.Logf("%s: %s", src, l)
			require.Contains(t, l, "level=error", "a warning is relayed at error (stderr)")
			require.Contains(t, l, `\"level\":\"warning\"`, "and keeps its own level")
			for _, field := range []string{"verdict", "reason", "protocol", "source"} {
				require.Contains(t, l, `\"`+field+`\":`, "%s line has %s", src, field)
			}
			if src != "authz" {
				for _, field := range []string{`\"container\":\"` + c + `\"`, `\"network\":\"` + net + `\"`, `\"fix\":\"`, `\"endpoint\":`} {
					require.Contains(t, l, field, "%s line", src)
				}
			}
		}
		require.Contains(t, bySource["dns"], `\"dest_name\":\"`+harness.DeniedHost+`\"`)
		require.Contains(t, bySource["bpf"], `\"dest_addr\":\"10.220.0.11\"`)
		require.Contains(t, bySource["bpf"], `\"dest_port\":80`)
		require.Contains(t, bySource["proxy"], `\"dest_name\":\"`+harness.DeniedHost+`\"`)
		require.Contains(t, bySource["authz"], `\"protocol\":\"docker-api\"`)

		// An info line of the plugin at info, with its own level.
		all := pluginLines(readFile(t, e.DockerdLog()))
		info := firstLine(all, "serving metrics")
		require.Contains(t, info, "level=info", info)
		require.Contains(t, info, `\"level\":\"info\"`, info)
		// The DNS sidecar's own lines keep their level: its [INFO] lines
		// are relayed at info, never at error.
		var sidecarInfo int
		for _, l := range all {
			if strings.Contains(l, `sidecar\":\"coredns`) && strings.Contains(l, "[INFO]") {
				require.Contains(t, l, "level=info", l)
				sidecarInfo++
			}
		}
		require.Positive(t, sidecarInfo, "CoreDNS logs [INFO] lines at start")
	})

	t.Run("EDE on a denied name for EDNS clients", func(t *testing.T) {
		dig, _, _ := e.Docker("exec", digC, "dig", "+tries=1", "+time=3", harness.DeniedHost, "A")
		t.Logf("dig:\n%s", dig)
		require.Contains(t, dig, "status: NXDOMAIN")
		require.Regexp(t, regexp.MustCompile(`EDE: 15 \(Blocked\)`), dig)
		require.Contains(t, dig, "clawker.allow="+harness.DeniedHost, "the fix text travels in the EDE")
		plain, _, _ := e.Docker("exec", digC, "dig", "+tries=1", "+time=3", "+noedns", harness.DeniedHost, "A")
		require.Contains(t, plain, "status: NXDOMAIN")
		require.NotContains(t, plain, "EDE", "no EDNS in the query, no OPT in the answer")
		// Allowed names answer without EDE.
		ok, _, _ := e.Docker("exec", digC, "dig", "+tries=1", "+time=3", harness.AllowedHost, "A")
		require.Contains(t, ok, "status: NOERROR")
		require.NotContains(t, ok, "EDE")
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// pluginLines are the lines of dockerd's log that a plugin wrote.
func pluginLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, " plugin=") {
			out = append(out, l)
		}
	}
	return out
}

func firstLine(lines []string, sub string) string {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// scrape fetches and parses a Prometheus text exposition.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// metricSum adds the values of name's samples whose labels include want.
func metricSum(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}
