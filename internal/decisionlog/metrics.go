package decisionlog

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxSeriesEndpoints bounds the endpoints that get series of their own;
// decisions of further endpoints are counted under network and container
// "_other". Together with Retain (endpoints that are gone lose their
// series) this bounds the cardinality to what the host runs.
const MaxSeriesEndpoints = 512

// Other is the network and container label of endpoints over the bound.
const Other = "_other"

var verdicts = []string{Allow, Deny, Error}

// Metrics counts decisions per endpoint (labelled by network and container
// name) and exports them as a prometheus.Collector:
//
//	clawker_decisions_total{source,verdict,network,container}
//	clawker_proxy_flow_bytes_total{direction,network,container}
type Metrics struct {
	mu  sync.Mutex
	eps map[uint32]*epCounts

	decisions, bytes *prometheus.Desc
}

type epCounts struct {
	network, container string
	n                  [4][3]uint64 // Sources x verdicts
	up, down           uint64
}

// NewMetrics returns empty counters.
func NewMetrics() *Metrics {
	labels := []string{"network", "container"}
	return &Metrics{
		eps: map[uint32]*epCounts{},
		decisions: prometheus.NewDesc("clawker_decisions_total",
			"Decisions of the firewall by source (dns, bpf, proxy, authz) and verdict (allow, deny, error), per network and container (authz: none).",
			append([]string{"source", "verdict"}, labels...), nil),
		bytes: prometheus.NewDesc("clawker_proxy_flow_bytes_total",
			"Bytes of finished proxied flows (up = container to upstream), per network and container.",
			append([]string{"direction"}, labels...), nil),
	}
}

func index(list []string, v string) int {
	for i, s := range list {
		if s == v {
			return i
		}
	}
	return -1
}

const otherKey = ^uint32(0)

func (m *Metrics) add(r *Record) {
	si, vi := index(Sources, r.Source), index(verdicts, r.Verdict)
	if si < 0 || vi < 0 {
		return
	}
	key := r.Endpoint
	if r.Source == SourceAuthz {
		key = 0 // Docker API calls are no endpoint's
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.eps[key]
	if c == nil {
		if len(m.eps) >= MaxSeriesEndpoints {
			key = otherKey
			if c = m.eps[key]; c == nil {
				c = &epCounts{network: Other, container: Other}
				m.eps[key] = c
			}
		} else {
			c = &epCounts{}
			m.eps[key] = c
		}
	}
	if key != 0 && key != otherKey {
		if r.Network != "" {
			c.network = r.Network
		}
		if r.Container != "" {
			c.container = r.Container
		}
	}
	c.n[si][vi]++
	c.up += r.BytesUp
	c.down += r.BytesDown
}

// Retain forgets the endpoints live reports false for (their series end).
func (m *Metrics) Retain(live func(index uint32) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.eps {
		if k != 0 && k != otherKey && !live(k) {
			delete(m.eps, k)
		}
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.decisions
	ch <- m.bytes
}

// Collect implements prometheus.Collector. Endpoints that share a network
// and container name (a container that rejoined) are summed.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	type labels struct{ network, container string }
	sum := map[labels]*epCounts{}
	m.mu.Lock()
	for _, c := range m.eps {
		l := labels{c.network, c.container}
		s := sum[l]
		if s == nil {
			s = &epCounts{}
			sum[l] = s
		}
		for i := range c.n {
			for j := range c.n[i] {
				s.n[i][j] += c.n[i][j]
			}
		}
		s.up += c.up
		s.down += c.down
	}
	m.mu.Unlock()
	for l, s := range sum {
		for i, src := range Sources {
			for j, v := range verdicts {
				if s.n[i][j] > 0 {
					ch <- prometheus.MustNewConstMetric(m.decisions, prometheus.CounterValue, float64(s.n[i][j]), src, v, l.network, l.container)
				}
			}
		}
		if s.up > 0 || s.down > 0 {
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(s.up), "up", l.network, l.container)
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(s.down), "down", l.network, l.container)
		}
	}
}
