// Command authz measures what clawker-fw's authorization plugin adds to
// Docker API calls: a private test dockerd (package e2e/harness) with the
// plugin installed and a clawker-fw network, then direct Docker API calls
// over the unix socket with authz on and off in the same run, alternating
// blocks (off, on, off, on, ...) so drift on the machine hits both sides.
//
// Calls (API v1.41, the test engine is Docker 20.10):
//
//	ps          GET /containers/json                   (authz: no checks, allowed at once)
//	create-fw   POST /containers/create on the clawker-fw network (inspected: labels, network, caps, mounts)
//	create-none POST /containers/create with --network none (inspected)
//	delete      DELETE /containers/{id}?force=1        (not inspected)
//
// Target: authz adds under 1 ms (median) per call.
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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
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
	blocks := flag.Int("blocks", 6, "blocks per run (alternating off/on; even)")
	nPS := flag.Int("ps", 400, "GET /containers/json calls per block")
	nCreate := flag.Int("create", 60, "create+delete pairs per block and kind")
	flag.Parse()
	if err := run(*out, *pluginDir, *blocks, *nPS, *nCreate); err != nil {
		fmt.Fprintln(os.Stderr, "bench/authz:", err)
		os.Exit(1)
	}
}

type sample map[string][]time.Duration // call -> durations

func run(out, pluginDir string, blocks, nPS, nCreate int) (err error) {
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
	load0, _ := os.ReadFile("/proc/loadavg")
	e, err := harness.Start(harness.Options{NoSSH: true})
	if err != nil {
		return err
	}
	defer func() {
		_ = setAuthz(e, false)
		if cerr := e.Close(); cerr != nil && err == nil {
			err = cerr
		}
		cleanHost()
	}()
	img, err := e.ImportBusybox()
	if err != nil {
		return err
	}
	if err := e.InstallPlugin(pluginDir); err != nil {
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

	res := map[bool]sample{false: {}, true: {}}
	for b := 0; b < blocks; b++ {
		on := b%2 == 1
		if err := setAuthz(e, on); err != nil {
			return err
		}
		if err := verifyAuthz(c, img, on); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench/authz: block %d/%d authz=%v\n", b+1, blocks, on)
		if err := measure(c, img, nPS, nCreate, res[on]); err != nil {
			return err
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	report := format(res, blocks, nPS, nCreate, strings.TrimSpace(string(load0)), strings.TrimSpace(string(load1)))
	report += handlerTimes(e.DockerdLog())
	fmt.Print(report)
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, []byte(report), 0o644)
	}
	return nil
}

// setAuthz writes daemon.json with or without the plugin as authorization
// plugin and reloads dockerd (the plugin is enabled first, and removed from
// daemon.json before it is disabled: DESIGN.md).
func setAuthz(e *harness.Env, on bool) error {
	cfg := map[string]any{}
	if on {
		cfg["authorization-plugins"] = []string{harness.PluginName}
	}
	if err := e.WriteDaemonConfig(cfg); err != nil {
		return err
	}
	return e.ReloadDockerd()
}

// verifyAuthz checks the reload took effect: a bad clawker label is refused
// by the plugin exactly when authz is on.
func verifyAuthz(c *http.Client, img string, on bool) error {
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
		denied := code == 403 && bytes.Contains(body, []byte("clawker-fw"))
		if denied == on {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("authz=%v not in effect: HTTP %d %s", on, code, body)
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
	for i := 0; i < nPS; i++ {
		if err := timed(s, "ps", func() error {
			code, b, err := call(c, "GET", "/containers/json", nil)
			if err == nil && code != 200 {
				err = fmt.Errorf("ps: HTTP %d %s", code, b)
			}
			return err
		}); err != nil {
			return err
		}
	}
	for i := 0; i < nCreate; i++ {
		for _, kind := range []struct{ name, mode string }{{"create-fw", netName}, {"create-none", "none"}} {
			var id string
			if err := timed(s, kind.name, func() error {
				code, b, err := call(c, "POST", "/containers/create", map[string]any{
					"Image": img, "Cmd": []string{"true"}, "Labels": map[string]string{"clawker.allow": harness.AltHost},
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

func format(res map[bool]sample, blocks, nPS, nCreate int, load0, load1 string) string {
	var b strings.Builder
	kernel, _ := exec.Command("uname", "-r").Output()
	fmt.Fprintf(&b, "clawker-fw authz plugin latency benchmark (go run ./bench/authz)\n")
	fmt.Fprintf(&b, "date %s, kernel %s, %d CPUs, %s, Docker 20.10 test engine (API v1.41 over its unix socket)\n",
		time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(kernel)), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "load average at start: %s; at end: %s\n", load0, load1)
	fmt.Fprintf(&b, "method: %d blocks alternating authz off/on (daemon.json authorization-plugins + SIGHUP, checked with a\n", blocks)
	fmt.Fprintf(&b, "bad-label probe), per block %d x GET /containers/json and %d x (POST /containers/create + DELETE) for each\n", nPS, nCreate)
	fmt.Fprintf(&b, "of NetworkMode=<clawker-fw network> and NetworkMode=none, sequential, one keep-alive connection.\n")
	fmt.Fprintf(&b, "Target: authz adds < 1 ms median per call.\n\n")
	fmt.Fprintf(&b, "%-12s %6s %10s %10s %10s %10s %10s %8s  %s\n", "call", "n/side", "off p50", "on p50", "diff p50", "off p90", "on p90", "on/off", "verdict")
	for _, name := range []string{"ps", "create-fw", "create-none", "delete"} {
		off, on := res[false][name], res[true][name]
		d := pct(on, .5) - pct(off, .5)
		verdict := "OK (< 1 ms)"
		if d >= time.Millisecond {
			verdict = "OVER the 1 ms target"
		}
		fmt.Fprintf(&b, "%-12s %6d %10s %10s %10s %10s %10s %8.2f  %s\n", name, min(len(off), len(on)),
			us(pct(off, .5)), us(pct(on, .5)), us(d), us(pct(off, .9)), us(pct(on, .9)),
			float64(pct(on, .5))/float64(max(pct(off, .5), 1)), verdict)
	}
	fmt.Fprintf(&b, "\nWith authz on, dockerd calls the plugin twice per API call (AuthZPlugin.AuthZReq and .AuthZRes) over\n")
	fmt.Fprintf(&b, "the plugin's unix socket; create requests are parsed and checked (labels, networks, caps, mounts).\n")
	return b.String()
}

// handlerTimes summarizes the plugin's own "authz decision" log lines
// (took_us: time inside the decision for inspected calls), which separates
// the handler's work from the transport and dockerd's authz middleware.
func handlerTimes(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	re := regexp.MustCompile(`took_us\\?":?\\?"?=?(\d+)`)
	var took []time.Duration
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "authz decision") {
			continue
		}
		if m := re.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			took = append(took, time.Duration(n)*time.Microsecond)
		}
	}
	if len(took) == 0 {
		return "\nplugin-side decision time: no took_us found in the dockerd log\n"
	}
	return fmt.Sprintf("\nplugin-side decision time of inspected calls (took_us in the plugin's authz log, n=%d): p50 %s, p90 %s, max %s\n",
		len(took), us(pct(took, .5)), us(pct(took, .9)), us(pct(took, 1)))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fus", float64(d)/float64(time.Microsecond)) }

// cleanHost removes what the plugin leaves on the host by design once it
// is gone: its BPF pins (unpinning detaches the cgroup programs) and nft
// tables.
func cleanHost() {
	_ = os.RemoveAll("/sys/fs/bpf/clawker-fw")
	for _, fam := range []string{"inet", "bridge"} {
		if exec.Command("nft", "list", "table", fam, "clawker_fw").Run() == nil {
			_ = exec.Command("nft", "delete", "table", fam, "clawker_fw").Run()
		}
	}
}
