package wire

import (
	"net/netip"
	"sync/atomic"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/learn"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
)

// learnSink feeds learn mode's recorder (plugin.LearnObserve,
// LearnResolved) from the data planes: the proxy's decisions and the DNS
// sidecar's answers to learning endpoints (their records carry the
// answered addresses). The proxy engine starts before the plugin core, so
// the plugin is set once it exists; until then nothing learns.
type learnSink struct{ p atomic.Pointer[plugin.Plugin] }

// decision records an allowed proxy decision of a learning endpoint.
func (l *learnSink) decision(d builtin.Decision) {
	p := l.p.Load()
	if p == nil || !d.Allowed {
		return
	}
	if o, ok := observation(d); ok {
		p.LearnObserve(d.Endpoint, o)
	}
}

// dns wraps the DNS sidecar's record handler: an answer that carries
// addresses (only a learning endpoint's do) is recorded first.
func (l *learnSink) dns(next func(decisionlog.Record)) func(decisionlog.Record) {
	return func(r decisionlog.Record) {
		if p := l.p.Load(); p != nil && len(r.Addrs) > 0 && r.Verdict == decisionlog.Allow {
			addrs := make([]netip.Addr, 0, len(r.Addrs))
			for _, a := range r.Addrs {
				if ip, err := netip.ParseAddr(a); err == nil {
					addrs = append(addrs, ip)
				}
			}
			p.LearnResolved(r.Endpoint, r.DestName, addrs)
		}
		next(r)
	}
}

// observation maps a proxy decision to what learn mode records, by the
// mode the flow was carried in: passthrough and inspect are https (inspect
// with the request's method and path), http is http; a stream learn mode
// carried by address is ssh or tcp as it read it (and ip or a dedicated
// tcp listener is tcp), named by the recorder from the container's DNS
// answers when it has no name.
func observation(d builtin.Decision) (learn.Observation, bool) {
	o := learn.Observation{Time: d.Time, Name: d.Name, Addr: d.Dst, Port: d.Port, Method: d.Method, Path: d.Path}
	switch {
	case d.Stream == "ssh":
		o.Proto = learn.ProtoSSH
		return o, true
	case d.Stream != "":
		o.Proto = learn.ProtoTCP
		return o, true
	}
	switch d.Mode {
	case "passthrough":
		o.Proto = learn.ProtoHTTPS
	case "inspect":
		o.Proto, o.Inspected = learn.ProtoHTTPS, true
	case "http":
		o.Proto, o.Inspected = learn.ProtoHTTP, true
	case "tcp", "ip":
		o.Proto = learn.ProtoTCP
	default:
		return o, false
	}
	return o, true
}
