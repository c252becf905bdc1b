package wire

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
	"github.com/clawker-fw/clawker-fw/plugin/metrics"
)

// dropReportEvery is how often the lines dropped over the rate limit are
// summarized (one line, only when some were).
const dropReportEvery = 30 * time.Second

// decisions is the process's decisionlog.Hub, wired before the plugin core
// exists (the proxy is built first): its explanations and the denial log
// reach the core once it is set.
type decisions struct {
	*decisionlog.Hub
	core    atomic.Pointer[plugin.Plugin]
	denials *plugin.DenialLog
}

func newDecisions(rate float64, denials *plugin.DenialLog, log *logrus.Entry) *decisions {
	d := &decisions{denials: denials}
	d.Hub = decisionlog.New(decisionlog.Config{Log: log, Rate: rate,
		Enrich: func(r *decisionlog.Record) {
			if p := d.core.Load(); p != nil {
				p.ExplainDecision(r)
			}
		},
		OnDeny: func(r decisionlog.Record) {
			if p := d.core.Load(); p != nil {
				denials.Add(p.DenialOf(&r))
			}
		}})
	return d
}

// serveMetrics serves the one Prometheus endpoint at addr: reg (the proxy's
// counters), the hub's decisions, the kernel's counters and learned-map
// fill, authz, and the DNS sidecar's own metrics.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, hub *decisionlog.Hub, mgr *bpf.Manager,
	p *plugin.Plugin, az *authz.Authz) (net.Addr, error) {
	endpoints := func() []metrics.Endpoint {
		snap := p.Snapshot()
		if snap == nil {
			return nil
		}
		out := make([]metrics.Endpoint, 0, len(snap.Endpoints))
		for idx, ep := range snap.Endpoints {
			e := metrics.Endpoint{Index: idx, Container: ep.ContainerName, Network: p.NetworkName(ep.NetworkID)}
			if e.Network == "" {
				e.Network = ep.NetworkID[:min(12, len(ep.NetworkID))]
			}
			out = append(out, e)
		}
		return out
	}
	col := metrics.NewCollector(metrics.Sources{
		Endpoints: func() []metrics.Endpoint {
			eps := endpoints()
			live := make(map[uint32]bool, len(eps))
			for _, e := range eps {
				live[e.Index] = true
			}
			hub.Metrics.Retain(func(i uint32) bool { return live[i] })
			return eps
		},
		BPF: func(i uint32) (metrics.BPFCounters, error) {
			c, err := mgr.Counters(i)
			return metrics.BPFCounters{Allowed: c.Allowed, Denied: c.Denied, DNS: c.DNS}, err
		},
		LearnedFill:  mgr.LearnedFill,
		LearnedQuota: bpf.LearnedPerEndpoint,
		Authz: func() (uint64, uint64, uint64) {
			st := az.Stats()
			return st.Calls, st.Inspected, st.Denied
		},
	})
	for _, c := range []prometheus.Collector{col, hub.Metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return metrics.Serve(ctx, addr, metrics.Handler(reg,
		metrics.Sidecar{URL: "http://" + dns.DefaultMetricsAddr + "/metrics", Prefix: "coredns_"}))
}
