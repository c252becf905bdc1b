// Package metrics is the plugin's one Prometheus endpoint
// (CLAWKER_METRICS_ADDR): everything the firewall counts, in one scrape —
//
//   - decisions of every part, per network and container
//     (clawker_decisions_total, clawker_proxy_flow_bytes_total: the
//     decisionlog.Hub's counters);
//   - the builtin proxy's counters (clawker_proxy_*: allowed, denied, bytes,
//     capped, by listener and reason);
//   - the socket hooks' per-endpoint counters, read from the BPF map at
//     scrape time (clawker_bpf_connects_total, clawker_bpf_dns_steered_total);
//   - the learned map's fill per endpoint (clawker_learned_entries, against
//     clawker_learned_quota);
//   - authz calls (clawker_authz_*_total);
//   - the DNS sidecar's own metrics (coredns_*: its loopback-only
//     prometheus listener, fetched at scrape time).
//
// Labels are network and container names; endpoints beyond
// decisionlog.MaxSeriesEndpoints share network and container "_other", and
// endpoints that are gone have no series: cardinality follows what the host
// runs, with a bound.
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	pmodel "github.com/clawker-fw/clawker-fw/proxy/model"
)

// Endpoint is one live endpoint and the names its series carry.
type Endpoint struct {
	Index              uint32
	Network, Container string
}

// BPFCounters are an endpoint's socket-hook totals.
type BPFCounters struct {
	Allowed, Denied, DNS uint64
}

// Sources are what the collectors read at scrape time; nil ones are left
// out.
type Sources struct {
	// Endpoints lists the live endpoints (from the published snapshot).
	Endpoints func() []Endpoint
	// BPF reads one endpoint's socket-hook counters.
	BPF func(index uint32) (BPFCounters, error)
	// LearnedFill counts each endpoint's learned entries; LearnedQuota is
	// the per-endpoint bound.
	LearnedFill  func() (map[uint32]int, error)
	LearnedQuota int
	// Authz returns the authz calls answered, inspected and denied.
	Authz func() (calls, inspected, denied uint64)
}

// collector turns Sources into metrics.
type collector struct {
	src                                  Sources
	connects, dnsSteered, learned, quota *prometheus.Desc
	calls, inspected, denied             *prometheus.Desc
}

// NewCollector returns a prometheus.Collector over src.
func NewCollector(src Sources) prometheus.Collector {
	l := []string{"network", "container"}
	return &collector{src: src,
		connects: prometheus.NewDesc("clawker_bpf_connects_total",
			"connect()/sendmsg() calls of enrolled containers the socket hooks steered (allow) or refused with EPERM (deny).",
			append([]string{"verdict"}, l...), nil),
		dnsSteered: prometheus.NewDesc("clawker_bpf_dns_steered_total",
			"DNS packets of enrolled containers the socket hooks steered to the firewall's DNS.", l, nil),
		learned: prometheus.NewDesc("clawker_learned_entries",
			"Addresses in an endpoint's learned map (resolved through the firewall's DNS; bounded by clawker_learned_quota).", l, nil),
		quota: prometheus.NewDesc("clawker_learned_quota",
			"Entries one endpoint's learned map holds at most (its oldest make room beyond).", nil, nil),
		calls:     prometheus.NewDesc("clawker_authz_calls_total", "Docker API calls the authz plugin answered.", nil, nil),
		inspected: prometheus.NewDesc("clawker_authz_inspected_total", "Docker API calls the authz plugin inspected.", nil, nil),
		denied:    prometheus.NewDesc("clawker_authz_denied_total", "Docker API calls the authz plugin refused.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connects, c.dnsSteered, c.learned, c.quota, c.calls, c.inspected, c.denied} {
		ch <- d
	}
}

// names bounds the endpoints to MaxSeriesEndpoints label pairs.
func names(eps []Endpoint) map[uint32][2]string {
	sort.Slice(eps, func(i, j int) bool { return eps[i].Index < eps[j].Index })
	out := make(map[uint32][2]string, len(eps))
	for i, e := range eps {
		if i >= decisionlog.MaxSeriesEndpoints {
			out[e.Index] = [2]string{decisionlog.Other, decisionlog.Other}
			continue
		}
		out[e.Index] = [2]string{e.Network, e.Container}
	}
	return out
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Authz != nil {
		calls, inspected, denied := c.src.Authz()
		ch <- prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(calls))
		ch <- prometheus.MustNewConstMetric(c.inspected, prometheus.CounterValue, float64(inspected))
		ch <- prometheus.MustNewConstMetric(c.denied, prometheus.CounterValue, float64(denied))
	}
	if c.src.LearnedQuota > 0 {
		ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(c.src.LearnedQuota))
	}
	if c.src.Endpoints == nil {
		return
	}
	labels := names(c.src.Endpoints())
	type sums struct{ allowed, denied, dns, learned float64 }
	per := map[[2]string]*sums{}
	at := func(idx uint32) *sums {
		l, ok := labels[idx]
		if !ok {
			return nil // gone since the snapshot: no series
		}
		s := per[l]
		if s == nil {
			s = &sums{}
			per[l] = s
		}
		return s
	}
	if c.src.BPF != nil {
		for idx := range labels {
			bc, err := c.src.BPF(idx)
			if err != nil {
				ch <- prometheus.NewInvalidMetric(c.connects, err)
				break
			}
			s := at(idx)
			s.allowed += float64(bc.Allowed)
			s.denied += float64(bc.Denied)
			s.dns += float64(bc.DNS)
		}
	}
	learned := map[[2]string]bool{}
	if c.src.LearnedFill != nil {
		fill, err := c.src.LearnedFill()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.learned, err)
		}
		for idx, n := range fill {
			if s := at(idx); s != nil {
				s.learned += float64(n)
				learned[labels[idx]] = true
			}
		}
	}
	for l, s := range per {
		if c.src.BPF != nil {
			ch <- prometheus.MustNewConstMetric(c.connects, prometheus.CounterValue, s.allowed, "allow", l[0], l[1])
			ch <- prometheus.MustNewConstMetric(c.connects, prometheus.CounterValue, s.denied, "deny", l[0], l[1])
			ch <- prometheus.MustNewConstMetric(c.dnsSteered, prometheus.CounterValue, s.dns, l[0], l[1])
		}
		if learned[l] {
			ch <- prometheus.MustNewConstMetric(c.learned, prometheus.GaugeValue, s.learned, l[0], l[1])
		}
	}
}

// Sidecar gathers another process's metrics over HTTP (the DNS sidecar's
// loopback-only prometheus listener), keeping only the families whose
// names start with Prefix: the sidecar's Go runtime metrics would collide
// with the plugin's own.
type Sidecar struct {
	URL    string
	Prefix string
	Client *http.Client
}

// Gather implements prometheus.Gatherer.
func (s Sidecar) Gather() ([]*dto.MetricFamily, error) {
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 3 * time.Second}
	}
	resp, err := client.Get(s.URL)
	if err != nil {
		return nil, fmt.Errorf("scrape sidecar: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape sidecar %s: HTTP %d", s.URL, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse sidecar metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for name, f := range fams {
		if strings.HasPrefix(name, s.Prefix) {
			out = append(out, f)
		}
	}
	return out, nil
}

// Handler serves the gatherers as one exposition; a gatherer that fails
// (the sidecar restarting) leaves its part out and the rest is served.
func Handler(g ...prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers(g), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ParseAddr checks the CLAWKER_METRICS_ADDR setting: "" (off) or
// IP:PORT, the port outside the listener range the firewall reserves.
func ParseAddr(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", fmt.Errorf("setting CLAWKER_METRICS_ADDR: %q: want IP:PORT (e.g. 127.0.0.1:9464)", v)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return "", fmt.Errorf("setting CLAWKER_METRICS_ADDR: %q: the host must be an IP address (127.0.0.1 keeps it on the host)", v)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", fmt.Errorf("setting CLAWKER_METRICS_ADDR: %q: bad port", v)
	}
	if uint16(p) >= pmodel.ReservedLo && uint16(p) <= pmodel.ReservedHi {
		return "", fmt.Errorf("setting CLAWKER_METRICS_ADDR: port %d is in the range the firewall reserves for its listeners (%d-%d)", p, pmodel.ReservedLo, pmodel.ReservedHi)
	}
	return v, nil
}

// Serve serves h at addr ("host:port") on /metrics until ctx ends.
func Serve(ctx context.Context, addr string, h http.Handler) (net.Addr, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return l.Addr(), nil
}
