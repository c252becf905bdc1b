package plugin

import (
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Denial is one recorded denial, with what would allow it (api.Denial).
type Denial = api.Denial

// DenialLog keeps the most recent denials and lets followers subscribe.
type DenialLog struct {
	// Enrich, when set, completes each denial before it is kept (the
	// plugin names the container and the network).
	Enrich func(*Denial)

	mu   sync.Mutex
	max  int
	ring []Denial
	subs map[chan Denial]struct{}
}

// NewDenialLog keeps up to max denials.
func NewDenialLog(max int) *DenialLog {
	return &DenialLog{max: max, subs: map[chan Denial]struct{}{}}
}

// Add records d and notifies followers (dropping for slow ones).
func (l *DenialLog) Add(d Denial) {
	if l.Enrich != nil {
		l.Enrich(&d)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring = append(l.ring, d)
	if len(l.ring) > l.max {
		l.ring = l.ring[len(l.ring)-l.max:]
	}
	for c := range l.subs {
		select {
		case c <- d:
		default:
		}
	}
}

// Recent returns the recorded denials, oldest first.
func (l *DenialLog) Recent() []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]Denial(nil), l.ring...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// Follow subscribes to new denials until cancel is called.
func (l *DenialLog) Follow() (<-chan Denial, func()) {
	c := make(chan Denial, 64)
	l.mu.Lock()
	l.subs[c] = struct{}{}
	l.mu.Unlock()
	return c, func() {
		l.mu.Lock()
		delete(l.subs, c)
		l.mu.Unlock()
	}
}

// networkPlaceholder is how a fix text made without knowing the network
// names it in the suggested command; EnrichDenial puts the name in.
const networkPlaceholder = "`clawker-fw rules add NETWORK "

// EnrichDenial completes a denial from the endpoint it names (by index in
// the current snapshot): the container's name and id, the network's id and
// Docker name, and that name in the fix's `clawker-fw rules add` command.
func (p *Plugin) EnrichDenial(d *Denial) {
	ep, ok := p.Snapshot().Endpoints[d.Index]
	if !ok {
		return
	}
	if d.Container == "" {
		d.Container = ep.ContainerName
	}
	if d.ContainerID == "" {
		d.ContainerID = ep.ContainerID
	}
	if d.Network == "" {
		d.Network = ep.NetworkID
	}
	if d.NetworkName == "" {
		d.NetworkName = p.NetworkName(d.Network)
	}
	if ref := d.NetworkName; d.Network != "" {
		if ref == "" {
			ref = short(d.Network)
		}
		d.Fix = strings.ReplaceAll(d.Fix, networkPlaceholder, "`clawker-fw rules add "+ref+" ")
	}
}

// DenialFilter selects denials (the admin API's query).
type DenialFilter struct {
	ContainerID string
	NetworkID   string
	Since       time.Time
}

// Match reports whether d passes the filter.
func (f DenialFilter) Match(d Denial) bool {
	return (f.ContainerID == "" || d.ContainerID == f.ContainerID) &&
		(f.NetworkID == "" || d.Network == f.NetworkID) &&
		(f.Since.IsZero() || !d.Time.Before(f.Since))
}

// dockerResolver is Docker's embedded resolver inside each container.
var dockerResolver = netip.AddrFrom4([4]byte{127, 0, 0, 11})

// RecordKernelDenial takes a denial reported by the socket hooks.
func (p *Plugin) RecordKernelDenial(index uint32, addr netip.Addr, port uint16, l4 uint8, reason string) {
	r := decisionlog.Record{Time: p.cfg.Now(), Source: decisionlog.SourceBPF, Verdict: decisionlog.Deny, Endpoint: index,
		DestPort: port, Protocol: l4Name(policy.L4(l4)), Reason: reason}
	if addr.IsValid() {
		r.DestAddr = addr.String()
	}
	if p.cfg.Decisions != nil {
		p.cfg.Decisions(r)
		return
	}
	p.ExplainDecision(&r)
	p.Denials.Add(p.DenialOf(&r))
}

// ExplainDecision completes a decision record from the published snapshot:
// the container's and network's names and, for a denial, what would allow
// it (unless the record says already).
func (p *Plugin) ExplainDecision(r *decisionlog.Record) {
	snap := p.Snapshot()
	var ep *policy.Endpoint
	if snap != nil && r.Endpoint != 0 {
		ep = snap.Endpoints[r.Endpoint]
	}
	if ep != nil {
		if r.Container == "" {
			r.Container = ep.ContainerName
		}
		r.Network = p.networkRef(ep.NetworkID)
	}
	if r.Verdict != decisionlog.Deny {
		return
	}
	if ep != nil && ep.LabelError != "" && r.Detail == "" {
		r.Detail = ep.LabelError
	}
	if r.Fix != "" {
		// A fix made where the network was unknown (the proxy's) names it.
		if r.Network != "" {
			r.Fix = strings.ReplaceAll(r.Fix, networkPlaceholder, "`clawker-fw rules add "+r.Network+" ")
		}
		return
	}
	dest := r.DestName
	if dest == "" {
		dest = r.DestAddr
	}
	switch {
	case r.Source == decisionlog.SourceBPF:
		r.Fix = p.kernelFix(r)
	case r.Reason == dnsBadName:
		// No rule can name it: suggesting one would mislead.
		r.Fix = "query names may hold only letters, digits, '-' and '_' between dots; write internationalized names in their xn-- (punycode) form"
	case dest != "":
		r.Fix = verdict.Fix(fixOf(r, dest))
	}
}

// fixOf is what verdict.Fix needs of a record.
func fixOf(r *decisionlog.Record, dest string) verdict.Denial {
	d := verdict.Denial{Dest: dest, Port: r.DestPort, Reason: policy.Reason(r.Reason), Rule: r.Rule, Detail: r.Detail,
		Network: r.Network, L4: policy.L4TCP}
	switch r.Protocol {
	case "udp":
		d.L4 = policy.L4UDP
	case decisionlog.SourceDNS:
		return d // a query: any port, any protocol
	}
	if r.Source == decisionlog.SourceProxy {
		d.Proto = policy.Proto(r.Protocol)
	}
	return d
}

// dnsBadName is the DNS sidecar's reason for names outside the rules'
// alphabet (dns.ReasonBadName).
const dnsBadName = "bad-name"

// kernelFix says what would allow a connection the hooks refused.
func (p *Plugin) kernelFix(r *decisionlog.Record) string {
	// A rule that got no listener port is allowed on paper and refused by
	// the hooks: say so instead of suggesting a rule that exists.
	if m := p.Model(); m != nil {
		l4 := policy.L4TCP
		if r.Protocol == "udp" {
			l4 = policy.L4UDP
		}
		for _, f := range m.Failures[r.Endpoint] {
			if f.Covers(r.DestPort, l4) {
				r.Reason += "; " + f.String()
				return "the rule exists but has no listener port: see `clawker-fw status`; remove other port ranges or split the rule"
			}
		}
	}
	switch {
	case r.DestAddr == dockerResolver.String():
		// No rule opens Docker's resolver on its real ports (bpf refuses
		// them whatever the policy): do not suggest one.
		return "send DNS to port 53 (the firewall's DNS answers it, container names included)"
	case r.DestAddr != "":
		d := fixOf(r, r.DestAddr)
		d.Reason = "" // the hooks' reasons are no verdict's: suggest the rule
		return "connect by name (IP literals are denied unless an IP/CIDR rule allows them); " + verdict.Fix(d)
	}
	return ""
}

// DenialOf is the denial log's entry of a denial record (the ids of its
// endpoint's container and network from the published snapshot).
func (p *Plugin) DenialOf(r *decisionlog.Record) Denial {
	d := Denial{Time: r.Time, Source: r.Source, Index: r.Endpoint, Container: r.Container, NetworkName: r.Network,
		Destination: r.DestName, Port: r.DestPort, Reason: r.Reason, Rule: r.Rule, Fix: r.Fix}
	if snap := p.Snapshot(); snap != nil && r.Endpoint != 0 {
		if ep := snap.Endpoints[r.Endpoint]; ep != nil {
			d.ContainerID, d.Network = ep.ContainerID, ep.NetworkID
		}
	}
	if d.Destination == "" {
		d.Destination = r.DestAddr
	}
	if r.Source == decisionlog.SourceDNS {
		d.Reason += " (" + r.QueryType + " query answered " + r.Rcode + ")"
	}
	if r.Detail != "" && (r.Source != decisionlog.SourceProxy || r.Reason == string(policy.ReasonBadLabel)) {
		d.Reason += "; " + r.Detail
	}
	return d
}
