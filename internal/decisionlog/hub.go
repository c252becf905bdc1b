package decisionlog

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/ratelimit"
)

// Defaults of Config.
const (
	DefaultSampleEvery = 10 * time.Second
	DefaultFoldEvery   = 10 * time.Second
	DefaultRingSize    = 1024
	// maxFolded bounds the distinct denials folded in one period; beyond
	// it, new ones are logged (rate-limited) without folding.
	maxFolded = 4096
)

// Config configures a Hub.
type Config struct {
	// Log receives the decision lines; each line gets a component field
	// naming its source.
	Log *logrus.Entry
	// Rate is the denial and error lines per second per endpoint, for each
	// source, with bursts of 10 s worth; 0 turns the limit off.
	Rate float64
	// SampleEvery is the period of the sampled allowed lines (one per
	// source and period). Default DefaultSampleEvery.
	SampleEvery time.Duration
	// FoldEvery is the period over which identical denials are folded into
	// one line with a count. Default DefaultFoldEvery.
	FoldEvery time.Duration
	// RingSize is the number of recent decisions kept. Default
	// DefaultRingSize.
	RingSize int
	// Enrich, when set, completes a record before anything else sees it
	// (container and network names, the fix of a denial).
	Enrich func(*Record)
	// OnDeny, when set, sees every denial once, after Enrich (the
	// plugin's denial log).
	OnDeny func(Record)
	// Now is the clock (tests).
	Now func() time.Time
}

// Hub takes every decision of the plugin process (and those the DNS sidecar
// sends it): counts, keeps, and logs them as the package comment says. It is
// safe for concurrent use.
type Hub struct {
	cfg     Config
	limits  map[string]*ratelimit.Limiter
	logs    map[string]*logrus.Entry
	ring    *Ring
	Metrics *Metrics

	mu      sync.Mutex
	samples map[string]*sample
	folded  map[foldKey]*folded
}

type sample struct {
	last time.Time
	n    uint64
}

// foldKey identifies identical denials.
type foldKey struct {
	source, verdict, name, addr, protocol, reason, path string
	endpoint                                            uint32
	port                                                uint16
}

type folded struct {
	rec   Record
	count uint64 // repeats after the first, logged at the period's end
}

// New returns a hub.
func New(cfg Config) *Hub {
	if cfg.Log == nil {
		l := logrus.New()
		cfg.Log = logrus.NewEntry(l)
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = DefaultSampleEvery
	}
	if cfg.FoldEvery <= 0 {
		cfg.FoldEvery = DefaultFoldEvery
	}
	if cfg.RingSize <= 0 {
		cfg.RingSize = DefaultRingSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Hub{cfg: cfg, limits: map[string]*ratelimit.Limiter{}, logs: map[string]*logrus.Entry{},
		ring: NewRing(cfg.RingSize), Metrics: NewMetrics(), samples: map[string]*sample{}, folded: map[foldKey]*folded{}}
	for _, s := range Sources {
		h.limits[s] = ratelimit.New(cfg.Rate, int(cfg.Rate*10))
		h.logs[s] = cfg.Log.WithField("component", s)
		h.samples[s] = &sample{}
	}
	return h
}

// Sources are the parts that decide, in the order status lists them.
var Sources = []string{SourceProxy, SourceDNS, SourceBPF, SourceAuthz}

// Add takes one decision.
func (h *Hub) Add(r Record) {
	if r.Time.IsZero() {
		r.Time = h.cfg.Now()
	}
	if _, ok := h.logs[r.Source]; !ok {
		r.Source = SourceProxy // unknown sources never get a logger of their own
	}
	if h.cfg.Enrich != nil {
		h.cfg.Enrich(&r)
	}
	h.Metrics.add(&r)
	h.ring.Add(r)
	switch r.Verdict {
	case Allow:
		h.allowed(&r)
	default:
		if r.Verdict == Deny && h.cfg.OnDeny != nil {
			h.cfg.OnDeny(r)
		}
		h.denied(&r)
	}
}

// allowed logs every allowed decision at debug, or else one per source and
// period at info.
func (h *Hub) allowed(r *Record) {
	log := h.logs[r.Source]
	if log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		log.WithFields(r.Fields()).Debug(Message)
		return
	}
	h.mu.Lock()
	s := h.samples[r.Source]
	s.n++
	if r.Time.Sub(s.last) < h.cfg.SampleEvery {
		h.mu.Unlock()
		return
	}
	n := s.n
	s.n, s.last = 0, r.Time
	h.mu.Unlock()
	log.WithFields(r.Fields()).WithField(FSampledOf, n).Info(Message)
}

// denied folds a repeat of a denial seen in the current period, and logs a
// new one (rate-limited).
func (h *Hub) denied(r *Record) {
	k := foldKey{source: r.Source, verdict: r.Verdict, name: r.DestName, addr: r.DestAddr, protocol: r.Protocol,
		reason: r.Reason, path: r.Path, endpoint: r.Endpoint, port: r.DestPort}
	h.mu.Lock()
	if f, ok := h.folded[k]; ok {
		f.count++
		h.mu.Unlock()
		return
	}
	if len(h.folded) < maxFolded {
		h.folded[k] = &folded{rec: *r}
	}
	h.mu.Unlock()
	if h.limits[r.Source].Allow(r.Endpoint) {
		Log(h.logs[r.Source], r)
	}
}

// Flush ends a fold period: each denial repeated in it is logged once more
// with the number of repeats (count), and the period starts afresh.
func (h *Hub) Flush() {
	h.mu.Lock()
	var out []Record
	for k, f := range h.folded {
		if f.count > 0 {
			r := f.rec
			r.Count = f.count
			out = append(out, r)
		}
		delete(h.folded, k)
	}
	h.mu.Unlock()
	for i := range out {
		Log(h.logs[out[i].Source], &out[i])
	}
}

// Recent returns up to n recent decisions (all of them for n <= 0), oldest
// first, that keep returns true for (nil keeps all).
func (h *Hub) Recent(n int, keep func(*Record) bool) []Record { return h.ring.Recent(n, keep) }

// Run folds and reports until stop is closed: every FoldEvery it flushes
// the folded denials, and every report period it logs one line with the
// lines each source dropped over the rate limit.
func (h *Hub) Run(stop <-chan struct{}, report time.Duration) {
	fold := time.NewTicker(h.cfg.FoldEvery)
	defer fold.Stop()
	rep := time.NewTicker(report)
	defer rep.Stop()
	for {
		select {
		case <-stop:
			return
		case <-fold.C:
			h.Flush()
		case <-rep.C:
			h.ReportDropped()
		}
	}
}

// ReportDropped logs one line with the lines each endpoint had dropped over
// the rate limit since the last report (nothing when none were).
func (h *Hub) ReportDropped() {
	fields := logrus.Fields{}
	for _, s := range Sources {
		if d := h.limits[s].TakeDropped(); len(d) > 0 {
			per := map[string]uint64{}
			for k, n := range d {
				per[strconv.FormatUint(uint64(k), 10)] = n
			}
			fields[s] = per
		}
	}
	if len(fields) > 0 {
		h.cfg.Log.WithField("component", "log-limit").WithFields(fields).
			Warn("log lines over the per-endpoint rate limit were dropped (counts by endpoint index); the denials are all in `clawker-fw denials`")
	}
}

// LimitSummary is the status line of the rate limit.
func (h *Hub) LimitSummary() string {
	if h.cfg.Rate <= 0 {
		return "off (CLAWKER_LOG_RATE=0)"
	}
	return fmt.Sprintf("%g lines/s per endpoint; dropped since start: proxy %d, dns %d, bpf %d, authz %d",
		h.cfg.Rate, h.limits[SourceProxy].Dropped(), h.limits[SourceDNS].Dropped(), h.limits[SourceBPF].Dropped(),
		h.limits[SourceAuthz].Dropped())
}
