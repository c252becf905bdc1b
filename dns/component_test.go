package dns

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// The custom CoreDNS builds slowly (~60 s cold): once per test run.
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// coreDNSBinary builds ./cmd/clawker-coredns once and returns its path.
func coreDNSBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "clawker-coredns-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "clawker-coredns")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/clawker-coredns")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build clawker-coredns: %w\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return buildBin
}

// freePort returns a loopback port free for both UDP and TCP right now.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// syncBuffer collects the sidecar's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sidecar is a running clawker-coredns.
type sidecar struct {
	dnsAddr, statusAddr, metricsAddr string
	out                              *syncBuffer
	corefile                         string
	cfg                              CorefileConfig
}

func startSidecar(t testing.TB, cfg CorefileConfig) *sidecar {
	t.Helper()
	bin := coreDNSBinary(t)
	dir := t.TempDir()
	port := freePort(t)
	cfg.Bind = []string{"127.0.0.1"}
	cfg.Port = port
	cfg.HealthAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.ReadyAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.StatusAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	corefile := filepath.Join(dir, "Corefile")
	require.NoError(t, os.WriteFile(corefile, []byte(Corefile(cfg)), 0o644))

	s := &sidecar{dnsAddr: fmt.Sprintf("127.0.0.1:%d", port), statusAddr: cfg.StatusAddr, metricsAddr: cfg.MetricsAddr,
		out: &syncBuffer{}, corefile: corefile, cfg: cfg}
	cmd := exec.Command(bin, "-conf", corefile)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("clawker-coredns output:\n%s", s.out.String())
		}
	})
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + cfg.ReadyAddr + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		// The status server starts apart from the ready one: wait for both.
		return resp.StatusCode == http.StatusOK && s.generation(t) != ""
	}, 20*time.Second, 20*time.Millisecond, "sidecar never became ready:\n%s", s.out)
	return s
}

func (s *sidecar) generation(t testing.TB) string {
	resp, err := http.Get("http://" + s.statusAddr + "/generation")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// query asks the sidecar from source address src over proto.
func (s *sidecar) query(t testing.TB, src, proto, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: proto, Timeout: 5 * time.Second}
	if proto == "tcp" {
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}
	}
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, s.dnsAddr)
	require.NoError(t, err)
	return r
}

// TestComponentRealCoreDNS runs the real custom CoreDNS binary with a
// generated Corefile, a fake upstream and a real pinned learned map.
func TestComponentRealCoreDNS(t *testing.T) {
	pinDir := testPins(t)
	up := newFakeUpstream(t, testZone)
	up2 := newFakeUpstream(t, testZone)
	snapPath := filepath.Join(t.TempDir(), "snapshot.json")
	writeSnapshot(t, snapPath, testSnapshot(1, up2.Addr))

	before := time.Now()
	sc := startSidecar(t, CorefileConfig{SnapshotPath: snapPath, PinDir: pinDir, Upstreams: []string{up.Addr}})
	require.Equal(t, "1", sc.generation(t))

	tests := []struct {
		name, src, proto, qname string
		qtype                   uint16
		rcode                   int
		answers                 []string
	}{
		{"exact allowed", ep1IP, "udp", "api.example.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
		{"exact allowed over tcp", ep1IP, "tcp", "api.example.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
		{"cname chain", ep1IP, "udp", "cname.example.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.4", "192.0.2.5"}},
		{"wildcard", ep1IP, "udp", "x.wild.example.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.3"}},
		{"deny beats wildcard", ep1IP, "udp", "bad.wild.example.test", mdns.TypeA, mdns.RcodeNameError, nil},
		{"no rule", ep1IP, "udp", "evil.example.test", mdns.TypeA, mdns.RcodeNameError, nil},
		{"other endpoint", ep2IP, "udp", "api.example.test", mdns.TypeA, mdns.RcodeNameError, nil},
		{"network upstream", ep4IP, "udp", "api.example.test", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1"}},
		{"AAAA empty", ep1IP, "udp", "api.example.test", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"container name", ep1IP, "udp", "db", mdns.TypeA, mdns.RcodeSuccess, []string{ep2IP}},
		{"unknown source", noIP, "udp", "api.example.test", mdns.TypeA, mdns.RcodeRefused, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := sc.query(t, tc.src, tc.proto, tc.qname, tc.qtype)
			require.Equal(t, mdns.RcodeToString[tc.rcode], mdns.RcodeToString[r.Rcode])
			require.ElementsMatch(t, tc.answers, addrs(r))
		})
	}
	for _, q := range up.Queries() {
		require.NotContains(t, q, "evil", "denied names never reach the upstream")
		require.NotContains(t, q, "bad.wild", "denied names never reach the upstream")
	}
	require.Equal(t, []string{"api.example.test./A"}, up2.Queries())

	after := time.Now()
	type entry struct {
		id  uint32
		ttl time.Duration
	}
	want := map[string]entry{
		"1/192.0.2.1": {10, 5 * time.Minute},
		"1/192.0.2.4": {12, time.Hour},
		"1/192.0.2.5": {12, 5 * time.Minute},
		"1/192.0.2.3": {11, 5 * time.Minute},
		"4/192.0.2.1": {10, 5 * time.Minute},
	}
	got := learnedEntries(t, pinDir)
	require.Len(t, got, len(want), "%v", got)
	for k, e := range want {
		v, ok := got[k]
		require.True(t, ok, "missing %s in %v", k, got)
		require.Equal(t, e.id, v.Identity, k)
		require.WithinRange(t, v.Expires, before.Add(e.ttl-time.Millisecond), after.Add(e.ttl+time.Millisecond), k)
	}

	// HTTPS answers leave the real binary without ech (and with only the
	// kept parameters); the ipv4hint is learned.
	r := sc.query(t, ep1IP, "udp", "ech.example.test", mdns.TypeHTTPS)
	require.Equal(t, mdns.RcodeSuccess, r.Rcode)
	require.Len(t, r.Answer, 2)
	for _, rr := range r.Answer {
		for _, kv := range rr.(*mdns.HTTPS).Value {
			require.Contains(t, []mdns.SVCBKey{mdns.SVCB_MANDATORY, mdns.SVCB_ALPN, mdns.SVCB_PORT, mdns.SVCB_IPV4HINT}, kv.Key(), "%s", rr)
		}
	}
	require.Contains(t, learnedEntries(t, pinDir), "1/192.0.2.12")

	// A snapshot rewrite is served within a second.
	snap := testSnapshot(2, up2.Addr)
	snap.Endpoints[2].Policy.Allows = append(snap.Endpoints[2].Policy.Allows, allow(10, "api.example.test"))
	start := time.Now()
	writeSnapshot(t, snapPath, snap)
	for sc.generation(t) != "2" {
		require.Less(t, time.Since(start), time.Second, "snapshot rewrite not picked up within 1s")
		time.Sleep(5 * time.Millisecond)
	}
	r = sc.query(t, ep2IP, "udp", "api.example.test", mdns.TypeA)
	took := time.Since(start)
	require.Equal(t, []string{"192.0.2.1"}, addrs(r))
	require.Less(t, took, time.Second)
	t.Logf("snapshot rewrite -> served and answered in %s", took)

	// A pending endpoint's query waits for its policy and is answered as
	// soon as the snapshot that carries it is served.
	type result struct {
		r   *mdns.Msg
		err error
	}
	done := make(chan result, 1)
	go func() {
		c := &mdns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(ep3IP)}}}
		m := new(mdns.Msg)
		m.SetQuestion("api.example.test.", mdns.TypeA)
		r, _, err := c.Exchange(m, sc.dnsAddr)
		done <- result{r, err}
	}()
	time.Sleep(300 * time.Millisecond)
	snap = testSnapshot(3, up2.Addr)
	snap.Endpoints[3].Pending = false
	snap.Endpoints[3].Policy = &policy.Policy{Generation: 3, Allows: []policy.Allowed{allow(10, "api.example.test")}}
	start = time.Now()
	writeSnapshot(t, snapPath, snap)
	res := <-done
	took = time.Since(start)
	require.NoError(t, res.err)
	require.Equal(t, []string{"192.0.2.1"}, addrs(res.r))
	require.Less(t, took, time.Second)
	t.Logf("pending endpoint answered %s after its policy was written", took)
	require.Contains(t, learnedEntries(t, pinDir), "3/192.0.2.1")

	// Metrics through CoreDNS's prometheus plugin.
	resp, err := http.Get("http://" + sc.metricsAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "coredns_clawker_snapshot_generation 3")
	require.Contains(t, string(body), `coredns_clawker_denied_total{reason="no-rule"}`)
	require.Contains(t, string(body), "coredns_clawker_forwarded_total")
	require.Contains(t, string(body), "coredns_clawker_pending_waits_total 1")

	// One deny line per denied query.
	require.Contains(t, sc.out.String(), `CLAWKER-DECISION {"time":`)
	require.Contains(t, sc.out.String(), `"source":"dns","verdict":"deny","reason":"no-rule","endpoint":1,"container":"/web","src_addr":"127.0.0.2","dest_name":"evil.example.test","protocol":"dns","query_type":"A","rcode":"NXDOMAIN"}`)
}

// TestBinaryPlugins checks what the custom binary carries: the plugins the
// sidecar needs and no cache.
func TestBinaryPlugins(t *testing.T) {
	out, err := exec.Command(coreDNSBinary(t), "-plugins").CombinedOutput()
	require.NoError(t, err, "%s", out)
	plugins := strings.Fields(string(out))
	for _, p := range []string{"clawker", "forward", "health", "ready", "log", "errors", "reload", "prometheus", "bind"} {
		require.Contains(t, plugins, p)
	}
	require.NotContains(t, plugins, "cache")
}

// TestComponentReload rewrites the Corefile under the reload plugin: the new
// upstream is used and the status server keeps answering.
func TestComponentReload(t *testing.T) {
	testPinsDir := testPins(t)
	up := newFakeUpstream(t, testZone)
	upNew := newFakeUpstream(t, testZone)
	snapPath := filepath.Join(t.TempDir(), "snapshot.json")
	writeSnapshot(t, snapPath, testSnapshot(1, up.Addr))
	cfg := CorefileConfig{SnapshotPath: snapPath, PinDir: testPinsDir, Upstreams: []string{up.Addr}, ReloadInterval: 2 * time.Second}
	sc := startSidecar(t, cfg)
	require.Equal(t, []string{"192.0.2.1"}, addrs(sc.query(t, ep1IP, "udp", "api.example.test", mdns.TypeA)))
	require.Len(t, up.Queries(), 1)

	sc.cfg.Upstreams = []string{upNew.Addr}
	require.NoError(t, os.WriteFile(sc.corefile, []byte(Corefile(sc.cfg)), 0o644))
	require.Eventually(t, func() bool {
		r := sc.query(t, ep1IP, "udp", "api.example.test", mdns.TypeA)
		return len(upNew.Queries()) > 0 && len(addrs(r)) == 1
	}, 10*time.Second, 100*time.Millisecond, "reloaded Corefile not in force:\n%s", sc.out)
	// The reload keeps the served generation; a new file is served (both
	// waited for: under load a poll of the file can come late).
	require.Eventually(t, func() bool { return sc.generation(t) == "1" }, 5*time.Second, 10*time.Millisecond)
	writeSnapshot(t, snapPath, testSnapshot(2, up.Addr))
	require.Eventually(t, func() bool { return sc.generation(t) == "2" }, 10*time.Second, 10*time.Millisecond)
}
