package builtin

import (
	"errors"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"

	"github.com/prometheus/client_golang/prometheus"
)

// Field names of the decision line (decisionlog's, under the names the
// tests use).
const (
	fieldEndpoint  = decisionlog.FEndpoint
	fieldName      = decisionlog.FDestName
	fieldReason    = decisionlog.FReason
	fieldMode      = decisionlog.FMode
	fieldDecision  = decisionlog.FVerdict
	fieldContainer = decisionlog.FContainer
	fieldRule      = decisionlog.FRule
	fieldBytesUp   = decisionlog.FBytesUp
	fieldBytesDown = decisionlog.FBytesDown
	fieldClosedBy  = decisionlog.FClosedBy

	logMessage = decisionlog.Message
)

type metrics struct {
	allowed *prometheus.CounterVec
	denied  *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	// bytesUp and bytesDown are bytes' two series, bound once (every flow
	// adds to both).
	bytesUp, bytesDown prometheus.Counter
	capped             *prometheus.CounterVec
	// kernelSplice counts decided flows by relay: kernel, fallback (the
	// kernel refused the pair).
	kernelSplice *prometheus.CounterVec
	// kernelBytes counts bytes the splice program moved in the kernel.
	kernelBytes *prometheus.CounterVec
	// kernelPauses counts pauses of spliced sockets whose receiver fell
	// behind (backpressure).
	kernelPauses *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		allowed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "allowed_total",
			Help: "Connections and HTTP requests the builtin proxy allowed.",
		}, []string{"listener"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "denied_total",
			Help: "Connections and HTTP requests the builtin proxy denied, by reason.",
		}, []string{"listener", "reason"}),
		capped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "capped_total",
			Help: "Connections and UDP sessions refused because their endpoint had reached its cap.",
		}, []string{"reason"}),
		kernelSplice: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "kernel_splice_total",
			Help: "Allowed passthrough and tcp flows by relay: kernel (sockmap splice) or fallback (the kernel refused the pair: splice(2) in the proxy).",
		}, []string{"path"}),
		kernelBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "kernel_splice_bytes_total",
			Help: "Bytes of allowed flows moved by the kernel splice program (up = client to upstream), counted when a flow ends.",
		}, []string{"direction"}),
		kernelPauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "kernel_splice_pauses_total",
			Help: "Times a kernel-spliced direction (up = client to upstream) was paused because its receiver fell 4 MiB behind (its sender then waits on TCP's window), counted when a flow ends.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clawker", Subsystem: "proxy", Name: "bytes_total",
			Help: "Bytes relayed by the builtin proxy (up = client to upstream).",
		}, []string{"direction"}),
	}
	m.bytesUp, m.bytesDown = m.bytes.WithLabelValues("up"), m.bytes.WithLabelValues("down")
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.allowed, m.denied, m.bytes, m.capped, m.kernelSplice, m.kernelBytes, m.kernelPauses} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
