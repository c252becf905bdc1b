package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
)

// TestOneEndpointServesEveryPart: the collector's kernel and authz series,
// the hub's decisions and the sidecar's coredns_* families come out of one
// scrape; the sidecar's Go runtime families do not (they would collide).
func TestOneEndpointServesEveryPart(t *testing.T) {
	sidecar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "# TYPE coredns_clawker_allowed_total counter\ncoredns_clawker_allowed_total 7\n# TYPE go_goroutines gauge\ngo_goroutines 12\n")
	}))
	defer sidecar.Close()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(NewCollector(Sources{
		Endpoints: func() []Endpoint {
			return []Endpoint{{Index: 1, Network: "agents", Container: "a1"}, {Index: 2, Network: "agents", Container: "a2"}}
		},
		BPF: func(i uint32) (BPFCounters, error) {
			return BPFCounters{Allowed: uint64(10 * i), Denied: uint64(i), DNS: 3}, nil
		},
		LearnedFill:  func() (map[uint32]int, error) { return map[uint32]int{1: 5, 9: 1}, nil },
		LearnedQuota: 4096,
		Authz:        func() (uint64, uint64, uint64) { return 40, 4, 1 },
	})))
	hub := decisionlog.New(decisionlog.Config{})
	hub.Add(decisionlog.Record{Source: decisionlog.SourceDNS, Verdict: decisionlog.Allow, Endpoint: 1, Network: "agents", Container: "a1"})
	require.NoError(t, reg.Register(hub.Metrics))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", Handler(reg, Sidecar{URL: sidecar.URL, Prefix: "coredns_"}))
	require.NoError(t, err)
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := string(body)
	for _, want := range []string{
		`clawker_bpf_connects_total{container="a2",network="agents",verdict="allow"} 20`,
		`clawker_bpf_connects_total{container="a1",network="agents",verdict="deny"} 1`,
		`clawker_bpf_dns_steered_total{container="a1",network="agents"} 3`,
		`clawker_learned_entries{container="a1",network="agents"} 5`,
		`clawker_learned_quota 4096`,
		`clawker_authz_calls_total 40`,
		`clawker_authz_denied_total 1`,
		`clawker_decisions_total{container="a1",network="agents",source="dns",verdict="allow"} 1`,
		`coredns_clawker_allowed_total 7`,
	} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, "go_goroutines 12", "the sidecar's runtime metrics stay out")
	require.NotContains(t, out, `clawker_learned_entries{container=""`, "an endpoint that is gone has no series")

	// The sidecar down: the rest is still served.
	sidecar.Close()
	resp, err = http.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "clawker_authz_calls_total 40")
}

func TestParseAddr(t *testing.T) {
	for v, ok := range map[string]bool{"": true, "127.0.0.1:9464": true, "0.0.0.0:9464": true, "[::1]:9464": true,
		"localhost:9464": false, "127.0.0.1": false, "127.0.0.1:15055": false, "127.0.0.1:0": false, ":9464": false} {
		_, err := ParseAddr(v)
		require.Equal(t, ok, err == nil, "%q: %v", v, err)
	}
}
