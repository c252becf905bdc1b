package decisionlog

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newHub(t *testing.T, cfg Config) (*Hub, *test.Hook, *clock) {
	t.Helper()
	logger, hook := test.NewNullLogger()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	cfg.Log = logrus.NewEntry(logger)
	cfg.Now = clk.Now
	return New(cfg), hook, clk
}

func decisionLines(hook *test.Hook) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range hook.AllEntries() {
		if e.Message == Message {
			out = append(out, e)
		}
	}
	return out
}

// TestAllowedAreSampled: allowed decisions are counted and kept, and one
// line per source and period reaches the log, saying how many it stands for.
func TestAllowedAreSampled(t *testing.T) {
	h, hook, clk := newHub(t, Config{SampleEvery: 10 * time.Second})
	for range 1000 {
		h.Add(Record{Source: SourceProxy, Verdict: Allow, Endpoint: 3, DestName: "api.example.test", DestPort: 443})
		h.Add(Record{Source: SourceDNS, Verdict: Allow, Endpoint: 3, DestName: "api.example.test"})
	}
	lines := decisionLines(hook)
	require.Len(t, lines, 2, "one sampled line per source, not one per decision")
	for _, l := range lines {
		require.Equal(t, logrus.InfoLevel, l.Level)
		require.EqualValues(t, 1, l.Data[FSampledOf])
	}
	clk.Add(11 * time.Second)
	h.Add(Record{Source: SourceProxy, Verdict: Allow, Endpoint: 3, DestName: "api.example.test", DestPort: 443})
	lines = decisionLines(hook)
	require.Len(t, lines, 3)
	require.EqualValues(t, 1000, lines[2].Data[FSampledOf], "the sample stands for every allowed flow since the last one")
	require.Equal(t, "api.example.test", lines[2].Data[FDestName])
	require.Len(t, h.Recent(0, nil), DefaultRingSize, "the ring keeps the most recent")
	got := h.Recent(5, func(r *Record) bool { return r.Source == SourceProxy })
	require.Len(t, got, 5)

	// At debug every allowed decision is a line (at debug).
	hook.Reset()
	h.cfg.Log.Logger.SetLevel(logrus.DebugLevel)
	for range 3 {
		h.Add(Record{Source: SourceDNS, Verdict: Allow, Endpoint: 3, DestName: "api.example.test"})
	}
	require.Len(t, decisionLines(hook), 3)
	require.Equal(t, logrus.DebugLevel, decisionLines(hook)[0].Level)
}

// TestDenialsFoldedWithCount: identical denials in one period are one line
// at once and one line with the count of repeats at the period's end;
// different ones are lines of their own; every denial reaches OnDeny.
func TestDenialsFoldedWithCount(t *testing.T) {
	var denied int
	h, hook, _ := newHub(t, Config{OnDeny: func(Record) { denied++ },
		Enrich: func(r *Record) { r.Container, r.Network = "agent", "agents" }})
	bpfDenial := Record{Source: SourceBPF, Verdict: Deny, Endpoint: 4, DestAddr: "10.220.0.11", DestPort: 80, Protocol: "tcp", Reason: "no-route"}
	for range 500 {
		h.Add(bpfDenial)
	}
	other := bpfDenial
	other.DestPort = 81
	h.Add(other)
	require.Equal(t, 501, denied, "the denial log sees every one")
	lines := decisionLines(hook)
	require.Len(t, lines, 2, "first of each at once")
	require.Equal(t, logrus.WarnLevel, lines[0].Level)
	for _, k := range []string{FContainer, FNetwork, FEndpoint, FDestAddr, FDestPort, FProtocol, FVerdict, FReason, FSource} {
		require.Contains(t, lines[0].Data, k)
	}
	require.Equal(t, "agent", lines[0].Data[FContainer], "enriched before logging")
	h.Flush()
	lines = decisionLines(hook)
	require.Len(t, lines, 3, "one line for the repeats, none for the single one")
	require.EqualValues(t, 499, lines[2].Data[FCount])
	require.EqualValues(t, 80, lines[2].Data[FDestPort])
	h.Flush()
	require.Len(t, decisionLines(hook), 3, "nothing repeated since")
	h.Add(bpfDenial)
	require.Len(t, decisionLines(hook), 4, "a new period logs the first again")
}

// TestDenialsRateLimitedPerEndpoint: distinct denials over the rate are
// dropped per endpoint and summarized; another endpoint still logs.
func TestDenialsRateLimitedPerEndpoint(t *testing.T) {
	h, hook, _ := newHub(t, Config{Rate: 1}) // burst 10
	for i := range 100 {
		h.Add(Record{Source: SourceDNS, Verdict: Deny, Endpoint: 1, DestName: "f" + strings.Repeat("x", i) + ".denied.test", Reason: "no-rule"})
	}
	h.Add(Record{Source: SourceDNS, Verdict: Deny, Endpoint: 2, DestName: "quiet.denied.test", Reason: "no-rule"})
	lines := decisionLines(hook)
	require.Len(t, lines, 11)
	require.EqualValues(t, 2, lines[10].Data[FEndpoint])
	require.Contains(t, h.LimitSummary(), "dns 90,")
	h.ReportDropped()
	last := hook.LastEntry()
	require.Contains(t, last.Message, "log lines over the per-endpoint rate limit were dropped")
	require.Equal(t, map[string]uint64{"1": 90}, last.Data[SourceDNS])
}

// TestMetricsPerNetworkAndContainer: counters by source and verdict with
// network and container labels; endpoints that are gone lose their series;
// authz is no endpoint's.
func TestMetricsPerNetworkAndContainer(t *testing.T) {
	names := map[uint32][2]string{1: {"agents", "a1"}, 2: {"agents", "a2"}}
	h, _, _ := newHub(t, Config{Enrich: func(r *Record) {
		if n, ok := names[r.Endpoint]; ok {
			r.Network, r.Container = n[0], n[1]
		}
	}})
	h.Add(Record{Source: SourceProxy, Verdict: Allow, Endpoint: 1, BytesUp: 10, BytesDown: 300})
	h.Add(Record{Source: SourceProxy, Verdict: Deny, Endpoint: 2})
	h.Add(Record{Source: SourceDNS, Verdict: Allow, Endpoint: 2})
	h.Add(Record{Source: SourceAuthz, Verdict: Deny, Container: "x"})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(h.Metrics))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP clawker_decisions_total Decisions of the firewall by source (dns, bpf, proxy, authz) and verdict (allow, deny, error), per network and container (authz: none).
# TYPE clawker_decisions_total counter
clawker_decisions_total{container="",network="",source="authz",verdict="deny"} 1
clawker_decisions_total{container="a1",network="agents",source="proxy",verdict="allow"} 1
clawker_decisions_total{container="a2",network="agents",source="dns",verdict="allow"} 1
clawker_decisions_total{container="a2",network="agents",source="proxy",verdict="deny"} 1
# HELP clawker_proxy_flow_bytes_total Bytes of finished proxied flows (up = container to upstream), per network and container.
# TYPE clawker_proxy_flow_bytes_total counter
clawker_proxy_flow_bytes_total{container="a1",direction="down",network="agents"} 300
clawker_proxy_flow_bytes_total{container="a1",direction="up",network="agents"} 10
`)))
	h.Metrics.Retain(func(i uint32) bool { return i == 1 })
	n, err := testutil.GatherAndCount(reg, "clawker_decisions_total")
	require.NoError(t, err)
	require.Equal(t, 2, n, "a2's series are gone, authz stays")
}

// TestMetricsBounded: endpoints beyond the bound share one "_other" series.
func TestMetricsBounded(t *testing.T) {
	m := NewMetrics()
	for i := range MaxSeriesEndpoints + 50 {
		m.add(&Record{Source: SourceDNS, Verdict: Allow, Endpoint: uint32(i + 1), Container: "c" + strings.Repeat("x", i%700), Network: "n"})
	}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	n, err := testutil.GatherAndCount(reg, "clawker_decisions_total")
	require.NoError(t, err)
	require.LessOrEqual(t, n, MaxSeriesEndpoints+1)
	require.Contains(t, m.eps, otherKey)
}

// BenchmarkHubAddAllowed is the plugin's cost of one allowed decision
// (counted, kept, sampled; no line).
func BenchmarkHubAddAllowed(b *testing.B) {
	logger, _ := test.NewNullLogger()
	h := New(Config{Log: logrus.NewEntry(logger)})
	r := Record{Source: SourceProxy, Verdict: Allow, Endpoint: 3, Container: "agent", Network: "agents",
		DestName: "api.example.test", DestPort: 443, Protocol: "https", BytesUp: 100, BytesDown: 1000}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Add(r)
		}
	})
}
