package dns

import (
	"sync/atomic"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"

	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics, exported by CoreDNS's prometheus plugin (default registry).
var (
	snapshotGeneration = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "snapshot_generation",
		Help:      "Generation of the policy snapshot being served.",
	})
	snapshotErrors = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "snapshot_errors_total",
		Help:      "Snapshot file versions that could not be read or decoded.",
	})
	allowedCount = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "allowed_total",
		Help:      "Queries answered for a name the endpoint may reach (forwarded or answered locally).",
	})
	deniedCount = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "denied_total",
		Help:      "Queries denied, by reason.",
	}, []string{"reason"})
	forwardedCount = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "forwarded_total",
		Help:      "Queries forwarded upstream.",
	})
	errorCount = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "errors_total",
		Help:      "Queries answered SERVFAIL, by cause.",
	}, []string{"cause"})
	pendingWaits = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "pending_waits_total",
		Help:      "Queries that waited for a pending endpoint's policy.",
	})
	learnedCount = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "learned_total",
		Help:      "Addresses written into the BPF learned map.",
	})
	learnedEvicted = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "clawker",
		Name:      "learned_evicted_total",
		Help:      "Unexpired learned addresses evicted because their endpoint's quota was full (the endpoint's own oldest).",
	})
)

// eventsDropped counts the decisions the events socket could not take
// (the plugin slow or restarting).
var eventsDropped = &droppedEvents{}

type droppedEvents struct {
	sink atomic.Pointer[decisionlog.Sink]
}

func (d *droppedEvents) set(s *decisionlog.Sink) { d.sink.Store(s) }

var _ = promauto.NewCounterFunc(prometheus.CounterOpts{
	Namespace: plugin.Namespace,
	Subsystem: "clawker",
	Name:      "events_dropped_total",
	Help:      "Decisions not delivered to the plugin's events socket (queue full or socket absent).",
}, func() float64 {
	if s := eventsDropped.sink.Load(); s != nil {
		return float64(s.Dropped())
	}
	return 0
})

// deniedCounters caches the counters of the reasons the plugin gives, so the
// hot path skips the label hash.
var deniedCounters = func() map[policy.Reason]prometheus.Counter {
	m := map[policy.Reason]prometheus.Counter{}
	for _, r := range []policy.Reason{policy.ReasonNoRule, policy.ReasonDenyRule, policy.ReasonUnknownPeer, policy.ReasonBadLabel, "class", ReasonBadName} {
		m[r] = deniedCount.WithLabelValues(string(r))
	}
	return m
}()

func deniedCounter(r policy.Reason) prometheus.Counter {
	if c, ok := deniedCounters[r]; ok {
		return c
	}
	return deniedCount.WithLabelValues(string(r))
}
