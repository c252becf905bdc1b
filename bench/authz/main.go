// Command authz measures what clawker-fw's authorization plugin adds to
// Docker API calls: a private test dockerd (package e2e/harness, without
// --debug as in production) with the plugin installed and a clawker-fw
// network, then direct Docker API calls over the unix socket under three
// authz settings in the same run, in rotating blocks so drift on the
// machine hits all of them:
//
//	off         no authorization plugin
//	null        an allow-all plugin that reads nothing (./nullauthz): what
//	            any authz plugin costs in dockerd and on the socket
//	clawker-fw  the real plugin
//
// Calls (API v1.41, the test engine is Docker 20.10):
//
//	ps          GET /containers/json                     (not inspected)
//	ps-idle     the same, each after 5 ms of quiet (CPUs gone idle)
//	inspect-404 GET /containers/<missing>/json           (not inspected)
//	update-404  POST /containers/<missing>/update + body (inspected)
//	create-fw   POST /containers/create on the clawker-fw network (inspected: labels, network, caps, mounts)
//	create-none POST /containers/create with --network none (inspected)
//	delete      DELETE /containers/{id}?force=1          (not inspected)
//
// Target: clawker-fw's authz adds under 1 ms (median) per call. Medians are
// compared with a 95% bootstrap interval, since create and delete vary by
// milliseconds on their own.
//
// It needs root (dockerd, BPF) and the plugin build (make plugin). Run from
// the repository root, under the e2e lock like the e2e tests:
//
//	make plugin && flock -o /tmp/clawker-e2e.lock go run ./bench/authz -out bench/results/authz.txt
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

const (
	apiPrefix = "http://docker/v1.41"
	netName   = "cfw-bench-authz"
	netSubnet = "10.231.250.0/24"
)

func main() {
	out := flag.String("out", "bench/results/authz.txt", "report file")
	pluginDir := flag.String("plugin", "build/plugin", "plugin build directory (make plugin)")
	rounds := flag.Int("rounds", 8, "rounds; each round runs one block per variant (off, null, clawker-fw), in rotating order")
	nPS := flag.Int("ps", 300, "calls per block of each cheap call (ps, ps-idle, inspect-404, update-404)")
	nCreate := flag.Int("create", 80, "create+delete pairs per block and kind")
	debug := flag.Bool("debug", false, "run dockerd with --debug (the e2e setting; production dockerd runs without it)")
	logLevel := flag.String("log-level", "", "plugin CLAWKER_LOG_LEVEL (default: the plugin's default)")
	flag.Parse()
	if err := run(*out, *pluginDir, *rounds, *nPS, *nCreate, *debug, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "bench/authz:", err)
		os.Exit(1)
	}
}

type sample map[string][]time.Duration // call -> durations

// variants are the authz settings compared side by side: none, the
// allow-all baseline plugin (what any authz plugin costs) and clawker-fw.
var variants = []string{"off", "null", "clawker-fw"}

const nullPlugin = "nullauthz:latest"

func run(out, pluginDir string, rounds, nPS, nCreate int, debug bool, logLevel string) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (a private dockerd and the plugin)")
	}
	pluginDir, err = filepath.Abs(pluginDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(pluginDir, "rootfs", "bin", "clawker-fw-plugin")); err != nil {
		return fmt.Errorf("plugin build missing (run make plugin): %w", err)
	}
	nullDir, err := buildNullPlugin()
	if err != nil {
		return err
	}
	defer os.RemoveAll(nullDir)
	load0, _ := os.ReadFile("/proc/loadavg")
	e, err := harness.Start(harness.Options{NoSSH: true, NoDebug: !debug, TmpfsDataRoot: true})
	if err != nil {
		return err
	}
	defer func() {
		_ = e.SetAuthzPlugins()
		if cerr := e.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := harness.CleanPluginHostState(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	img, err := e.ImportBusybox()
	if err != nil {
		return err
	}
	settings := e.PluginSettings()
	if logLevel != "" {
		settings = append(settings, "CLAWKER_LOG_LEVEL="+logLevel)
	}
	if err := e.InstallPlugin(pluginDir, settings...); err != nil {
		return err
	}
	if _, _, err := e.Docker("plugin", "create", nullPlugin, nullDir); err != nil {
		return err
	}
	if _, _, err := e.Docker("plugin", "enable", nullPlugin); err != nil {
		return err
	}
	if _, _, err := e.Docker("network", "create", "-d", harness.PluginName, "--subnet", netSubnet,
		"-o", "clawker.allow="+harness.AllowedHost, netName); err != nil {
		return err
	}
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.Socket())
		},
		MaxIdleConnsPerHost: 4,
	}, Timeout: 60 * time.Second}

	res := map[string][]sample{} // variant -> per round
	direct := sample{}           // plugin name -> socket round trips
	for r := 0; r < rounds; r++ {
		for i := range variants {
			v := variants[(r+i)%len(variants)]
			if err := setAuthz(e, v); err != nil {
				return err
			}
			if err := verifyAuthz(c, img, v); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bench/authz: round %d/%d authz=%s\n", r+1, rounds, v)
			s := sample{}
			if err := measure(c, img, nPS, nCreate, s); err != nil {
				return err
			}
			res[v] = append(res[v], s)
		}
		for _, p := range []string{nullPlugin, harness.PluginName} {
			if err := socketRTT(e, img, p, nPS/2, direct); err != nil {
				return err
			}
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	report := format(res, rounds, nPS, nCreate, debug, strings.TrimSpace(string(load0)), strings.TrimSpace(string(load1)))
	report += formatDirect(direct, nPS/2)
	fmt.Print(report)
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, []byte(report), 0o644)
	}
	return nil
}

// socketRTT calls a plugin's socket directly (no dockerd) n times with
// each of the AuthZReq bodies dockerd sends for GET /containers/json and
// for a POST /containers/create, each call after 5 ms of quiet: the
// plugin's own share of an authz round trip.
func socketRTT(e *harness.Env, img, plugin string, n int, s sample) error {
	id, _, err := e.Docker("plugin", "inspect", "-f", "{{.ID}}", plugin)
	if err != nil {
		return err
	}
	// Docker 20.10 keeps managed plugin sockets in /run/docker/plugins/<id>
	// whatever its --exec-root.
	socks, _ := filepath.Glob(filepath.Join("/run/docker/plugins", strings.TrimSpace(id), "*.sock"))
	if len(socks) != 1 {
		return fmt.Errorf("socket of plugin %s (%s) not found in /run/docker/plugins: %v", plugin, strings.TrimSpace(id), socks)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socks[0])
	}}, Timeout: 10 * time.Second}
	// No clawker label: authz refuses clawker labels off clawker-fw networks.
	createBody, _ := json.Marshal(map[string]any{"Image": img, "Cmd": []string{"true"},
		"Labels": map[string]string{"com.example.team": "bench"}, "HostConfig": map[string]any{"NetworkMode": "none"}})
	headers := map[string]string{"User-Agent": "Go-http-client/1.1", "Content-Type": "application/json"}
	for _, k := range []struct {
		name string
		req  map[string]any
	}{
		{"ps", map[string]any{"RequestMethod": "GET", "RequestUri": "/v1.41/containers/json", "RequestHeaders": headers}},
		{"create", map[string]any{"RequestMethod": "POST", "RequestUri": "/v1.41/containers/create", "RequestHeaders": headers,
			"RequestBody": createBody}},
	} {
		body, _ := json.Marshal(k.req)
		for i := 0; i < n; i++ {
			time.Sleep(5 * time.Millisecond)
			start := time.Now()
			resp, err := c.Post("http://plugin/AuthZPlugin.AuthZReq", "application/json", bytes.NewReader(body))
			if err != nil {
				return fmt.Errorf("%s socket: %w", plugin, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			s[plugin+" "+k.name] = append(s[plugin+" "+k.name], time.Since(start))
			if err != nil || !bytes.Contains(b, []byte(`"Allow":true`)) {
				return fmt.Errorf("%s socket, %s: %v %s", plugin, k.name, err, b)
			}
		}
	}
	return nil
}

func formatDirect(s sample, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nThe plugin's share, without dockerd: an AuthZReq sent straight to the plugin's socket after 5 ms of quiet\n")
	fmt.Fprintf(&b, "(%d per round and kind), round trip p50 / p90:\n", n)
	for _, k := range []string{"ps", "create"} {
		nl, cf := s[nullPlugin+" "+k], s[harness.PluginName+" "+k]
		fmt.Fprintf(&b, "  %-7s null %s / %s   clawker-fw %s / %s\n", k, us(pct(nl, .5)), us(pct(nl, .9)), us(pct(cf, .5)), us(pct(cf, .9)))
	}
	return b.String()
}

// buildNullPlugin builds ./bench/authz/nullauthz as a managed plugin
// directory (config.json + rootfs with the one static binary).
func buildNullPlugin() (string, error) {
	dir, err := os.MkdirTemp("", "nullauthz-")
	if err != nil {
		return "", err
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"run/docker/plugins", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return "", err
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(rootfs, "nullauthz"), "./bench/authz/nullauthz")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nullauthz: %v: %s", err, b)
	}
	cfg := `{"description": "allow-all authz baseline for bench/authz", "documentation": "bench/authz",
 "entrypoint": ["/nullauthz"], "network": {"type": "host"},
 "interface": {"types": ["docker.authz/1.0"], "socket": "null.sock"}}`
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644)
}

// setAuthz names the variant's plugin (none for off) as the authorization
// plugin in daemon.json and reloads dockerd (plugins are enabled first and
// removed from daemon.json before they are disabled: DESIGN.md).
func setAuthz(e *harness.Env, variant string) error {
	switch variant {
	case "null":
		return e.SetAuthzPlugins(nullPlugin)
	case "clawker-fw":
		return e.SetAuthzPlugins(harness.PluginName)
	}
	return e.SetAuthzPlugins()
}

// verifyAuthz checks the reload took effect: a bad clawker label is refused
// exactly when clawker-fw is the authz plugin, and the null plugin's probe
// exactly when it is.
func verifyAuthz(c *http.Client, img string, variant string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, err := call(c, "POST", "/containers/create", map[string]any{
			"Image": img, "Cmd": []string{"true"}, "Labels": map[string]string{"clawker.allow": "exa..mple"},
			"HostConfig": map[string]any{"NetworkMode": "none"}})
		if err != nil {
			return err
		}
		if code/100 == 2 {
			var r struct{ Id string }
			_ = json.Unmarshal(body, &r)
			_, _, _ = call(c, "DELETE", "/containers/"+r.Id+"?force=1", nil)
		}
		clawker := code == 403 && bytes.Contains(body, []byte("clawker-fw"))
		pcode, pbody, err := call(c, "GET", "/containers/json?nullauthz-probe=1", nil)
		if err != nil {
			return err
		}
		null := pcode == 403 && bytes.Contains(pbody, []byte("nullauthz probe"))
		if clawker == (variant == "clawker-fw") && null == (variant == "null") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("authz=%s not in effect: create HTTP %d %s; probe HTTP %d %s", variant, code, body, pcode, pbody)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func call(c *http.Client, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, apiPrefix+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func timed(s sample, name string, f func() error) error {
	start := time.Now()
	err := f()
	s[name] = append(s[name], time.Since(start))
	return err
}

func measure(c *http.Client, img string, nPS, nCreate int, s sample) error {
	warm := sample{}
	for i := 0; i < 20; i++ { // warm the connection and caches; discarded
		_ = timed(warm, "ps", func() error { _, _, err := call(c, "GET", "/containers/json", nil); return err })
	}
	// Cheap calls, each checked for its expected status. ps-idle is ps after
	// 5 ms of quiet, as between the calls of a docker run: both processes'
	// CPUs have gone idle when it starts.
	cheap := []struct {
		name, method, path string
		body               any
		want               int
		quiet              time.Duration
	}{
		{"ps", "GET", "/containers/json", nil, 200, 0},
		{"ps-idle", "GET", "/containers/json", nil, 200, 5 * time.Millisecond},
		{"update-404", "POST", "/containers/cfw-bench-missing/update", map[string]any{"CpuShares": 512}, 404, 0},
		{"inspect-404", "GET", "/containers/cfw-bench-missing/json", nil, 404, 0},
	}
	for _, k := range cheap {
		for i := 0; i < nPS; i++ {
			time.Sleep(k.quiet)
			if err := timed(s, k.name, func() error {
				code, b, err := call(c, k.method, k.path, k.body)
				if err == nil && code != k.want {
					err = fmt.Errorf("%s: HTTP %d %s", k.name, code, b)
				}
				return err
			}); err != nil {
				return err
			}
		}
	}
	for i := 0; i < nCreate; i++ {
		for _, kind := range []struct{ name, mode string }{{"create-fw", netName}, {"create-none", "none"}} {
			var id string
			// Clawker labels only on the firewalled network: authz refuses
			// them elsewhere (they would protect nothing).
			labels := map[string]string{"com.example.team": "bench"}
			if kind.mode == netName {
				labels = map[string]string{"clawker.allow": harness.AltHost}
			}
			if err := timed(s, kind.name, func() error {
				code, b, err := call(c, "POST", "/containers/create", map[string]any{
					"Image": img, "Cmd": []string{"true"}, "Labels": labels,
					"HostConfig": map[string]any{"NetworkMode": kind.mode}})
				if err != nil {
					return err
				}
				if code != 201 {
					return fmt.Errorf("%s: HTTP %d %s", kind.name, code, b)
				}
				var r struct{ Id string }
				if err := json.Unmarshal(b, &r); err != nil {
					return err
				}
				id = r.Id
				return nil
			}); err != nil {
				return err
			}
			if err := timed(s, "delete", func() error {
				code, b, err := call(c, "DELETE", "/containers/"+id+"?force=1", nil)
				if err == nil && code != 204 {
					err = fmt.Errorf("delete: HTTP %d %s", code, b)
				}
				return err
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[int(float64(len(s)-1)*p)]
}

func format(res map[string][]sample, rounds, nPS, nCreate int, debug bool, load0, load1 string) string {
	var b strings.Builder
	kernel, _ := exec.Command("uname", "-r").Output()
	dbg := "without --debug (as in production)"
	if debug {
		dbg = "with --debug"
	}
	fmt.Fprintf(&b, "clawker-fw authz plugin latency benchmark (go run ./bench/authz)\n")
	fmt.Fprintf(&b, "date %s, kernel %s, %d CPUs, %s, Docker 20.10 test engine %s (API v1.41 over its unix socket)\n",
		time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(kernel)), runtime.NumCPU(), runtime.Version(), dbg)
	fmt.Fprintf(&b, "load average at start: %s; at end: %s\n", load0, load1)
	fmt.Fprintf(&b, "dockerd's data root is on tmpfs: disk flushes would add milliseconds of noise to create and delete.\n")
	fmt.Fprintf(&b, "method: %d rounds of one block per variant in rotating order (off = no authz plugin; null = an allow-all\n", rounds)
	fmt.Fprintf(&b, "authz plugin that reads nothing; cfw = clawker-fw), switched by daemon.json authorization-plugins + SIGHUP\n")
	fmt.Fprintf(&b, "and checked with probes. Per block %d x each of GET /containers/json back to back (ps) and after 5 ms of\n", nPS)
	fmt.Fprintf(&b, "quiet (ps-idle), GET /containers/<missing>/json\n")
	fmt.Fprintf(&b, "(inspect-404), POST /containers/<missing>/update with a JSON body (update-404), then %d x (POST\n", nCreate)
	fmt.Fprintf(&b, "/containers/create + DELETE) for each of NetworkMode=<clawker-fw network> and NetworkMode=none;\n")
	fmt.Fprintf(&b, "sequential, one keep-alive connection. Differences are of medians, with a 95%% bootstrap interval (rounds resampled).\n")
	fmt.Fprintf(&b, "Target: the clawker-fw authz plugin adds < 1 ms median per call (cfw-off).\n\n")
	fmt.Fprintf(&b, "%-12s %6s %8s %8s %8s %24s %24s  %s\n", "call", "n/side", "off p50", "null p50", "cfw p50",
		"cfw-off [95% CI]", "cfw-null [95% CI]", "verdict (cfw-off < 1 ms)")
	for _, name := range []string{"ps", "ps-idle", "inspect-404", "update-404", "create-fw", "create-none", "delete"} {
		off, null, on := perRound(res["off"], name), perRound(res["null"], name), perRound(res["clawker-fw"], name)
		d, lo, hi := medianDiff(on, off)
		dn, lon, hin := medianDiff(on, null)
		verdict := "OK"
		switch {
		case lo >= time.Millisecond:
			verdict = "OVER"
		case hi >= time.Millisecond:
			verdict = "undecided (interval spans 1 ms)"
		}
		fmt.Fprintf(&b, "%-12s %6d %8s %8s %8s %24s %24s  %s\n", name, min(len(flat(off)), len(flat(null)), len(flat(on))),
			us(pct(flat(off), .5)), us(pct(flat(null), .5)), us(pct(flat(on), .5)), ci(d, lo, hi), ci(dn, lon, hin), verdict)
	}
	fmt.Fprintf(&b, "\ncfw-off is what the clawker-fw authz plugin adds; cfw-null is what its checks add over a plugin that\n")
	fmt.Fprintf(&b, "does nothing. With any authz plugin, dockerd calls it twice per API call (AuthZPlugin.AuthZReq and\n")
	fmt.Fprintf(&b, ".AuthZRes) over the plugin's unix socket, and buffers JSON request bodies for it; clawker-fw parses\n")
	fmt.Fprintf(&b, "and checks create, update, exec, connect and plugin calls and answers all others from method and URI.\n")
	return b.String()
}

// perRound returns one call's durations per round.
func perRound(per []sample, name string) [][]time.Duration {
	out := make([][]time.Duration, len(per))
	for i, s := range per {
		out[i] = s[name]
	}
	return out
}

func flat(r [][]time.Duration) []time.Duration {
	var out []time.Duration
	for _, d := range r {
		out = append(out, d...)
	}
	return out
}

// medianDiff returns median(a)-median(b) over all rounds and a 95%
// percentile-bootstrap interval for it. The bootstrap resamples whole
// rounds (the same rounds for a and b, whose blocks ran side by side), so
// that drift between blocks widens the interval instead of hiding in it.
// The seed is fixed: the report is reproducible from the data.
func medianDiff(a, b [][]time.Duration) (d, lo, hi time.Duration) {
	if len(a) == 0 || len(a) != len(b) {
		return 0, 0, 0
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 2000
	diffs := make([]time.Duration, n)
	for i := range diffs {
		var ra, rb []time.Duration
		for range a {
			k := rng.IntN(len(a))
			ra, rb = append(ra, a[k]...), append(rb, b[k]...)
		}
		diffs[i] = pct(ra, .5) - pct(rb, .5)
	}
	return pct(flat(a), .5) - pct(flat(b), .5), pct(diffs, .025), pct(diffs, .975)
}

func ci(d, lo, hi time.Duration) string {
	return fmt.Sprintf("%s [%s, %s]", us(d), us(lo), us(hi))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fus", float64(d)/float64(time.Microsecond)) }
