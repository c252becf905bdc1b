package envoy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	pv "github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// freeListenerPort finds a port in the allocator's range that nothing on
// 127.0.0.1 uses right now (other packages' tests bind that range too).
func freeListenerPort(t *testing.T) uint16 {
	t.Helper()
	for range 200 {
		p := model.AllocLo + uint16(rand.IntN(int(model.AllocHi-model.AllocLo)))
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(int(p)))
		if err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatal("no free port in the listener range")
	return 0
}

// TestLiveEnvoy runs a real Envoy against the xDS server: a plain HTTP rule
// for localhost:<upstream port> from endpoint 127.0.0.1 must reach the
// upstream through Envoy, and another Host must get the 403 with
// X-Clawker-Denied. It needs an envoy binary on PATH, which cannot be
// obtained where this project's CI runs.
func TestLiveEnvoy(t *testing.T) {
	bin, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("no envoy binary on PATH: the Envoy engine is validated in Go only; see README")
	}

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from upstream")
	}))
	t.Cleanup(upstream.Close)
	upPort, err := strconv.Atoi(upstream.URL[strings.LastIndex(upstream.URL, ":")+1:])
	require.NoError(t, err)

	snap := (&policy.Snapshot{
		Generation: 1,
		Endpoints: map[uint32]*policy.Endpoint{1: {
			Index: 1, IP: netip.MustParseAddr("127.0.0.1"), ContainerName: "live",
			Policy: &policy.Policy{Allows: []policy.Allowed{{
				Identity: 1, Pattern: "localhost",
				Ports: []policy.PortRange{{Proto: policy.ProtoHTTP, Lo: uint16(upPort), Hi: uint16(upPort)}},
			}}},
		}},
	}).Index()
	alloc := model.NewPortAllocator()
	lport := freeListenerPort(t)
	seed, err := json.Marshal(map[string]uint16{model.WebKey(uint16(upPort)): lport})
	require.NoError(t, err)
	require.NoError(t, alloc.UnmarshalJSON(seed))
	m, err := model.Build(snap, alloc)
	require.NoError(t, err)

	dir := t.TempDir()
	sock := "unix://" + filepath.Join(dir, "xds.sock")
	srv, err := NewServer(context.Background(), ServerConfig{Address: sock, Options: Options{BindAddress: "127.0.0.1"}})
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	require.NoError(t, srv.Update(snap, m))

	bopts := BootstrapOptions{XDSAddress: sock, AdminAddress: "127.0.0.1:0", AdminAddressPath: filepath.Join(dir, "admin")}
	boot, err := Bootstrap(bopts)
	require.NoError(t, err)
	bootPath := filepath.Join(dir, "bootstrap.json")
	require.NoError(t, os.WriteFile(bootPath, boot, 0o644))

	ctx, cancel := context.WithCancel(context.Background())
	cmd := Command(ctx, bin, bootPath, 1000+rand.IntN(50000), bopts)
	logf, err := os.Create(filepath.Join(dir, "envoy.log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("envoy log:\n%s", b)
		}
	})

	client := &http.Client{Timeout: 2 * time.Second}
	get := func(host string) (*http.Response, string, error) {
		req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(int(lport))+"/", nil)
		if err != nil {
			return nil, "", err
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}

	allowedHost := "localhost:" + strconv.Itoa(upPort)
	var body string
	require.Eventually(t, func() bool {
		resp, b, err := get(allowedHost)
		if err != nil || resp.StatusCode != http.StatusOK {
			return false
		}
		body = b
		return true
	}, 30*time.Second, 200*time.Millisecond, "envoy never proxied %s", allowedHost)
	require.Equal(t, "hello from upstream", body)

	resp, b, err := get("evil.example.test")
	require.NoError(t, err)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Equal(t, "GET evil.example.test / (no-rule); "+pv.Fix(pv.Denial{Dest: "evil.example.test", Port: uint16(upPort),
		Proto: policy.ProtoHTTP, Reason: policy.ReasonNoRule}), resp.Header.Get(DeniedHeader))
	require.Equal(t, denial{port: uint16(upPort), proto: policy.ProtoHTTP, reason: policy.ReasonNoRule}.body(), b)
}
