package plugin

import (
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

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

// FixFor says what would allow a denied destination for an endpoint (port 0:
// any port, as for a DNS query), or why no rule can: verdict.Fix, the one
// fix text of the proxy's 403s, the denial log and DNS.
func FixFor(dst string, port uint16, reason policy.Reason, deny *policy.Denied) string {
	d := verdict.Denial{Dest: dst, Port: port, Reason: reason}
	if deny != nil {
		d.Reason, d.Rule = policy.ReasonDenyRule, verdict.Rule(policy.Match{Deny: deny})
	}
	return verdict.Fix(d)
}

// dockerResolver is Docker's embedded resolver inside each container.
var dockerResolver = netip.AddrFrom4([4]byte{127, 0, 0, 11})

// RecordKernelDenial records a denial reported by the socket hooks.
func (p *Plugin) RecordKernelDenial(index uint32, addr netip.Addr, port uint16, l4 uint8, reason string) {
	d := Denial{Time: p.cfg.Now(), Source: "bpf", Index: index, Port: port, Reason: reason}
	if addr.IsValid() {
		d.Destination = addr.String()
	}
	if snap := p.Snapshot(); snap != nil {
		if ep, ok := snap.Endpoints[index]; ok {
			d.Container = ep.ContainerName
			if ep.LabelError != "" {
				d.Reason += "; " + ep.LabelError
			}
		}
	}
	switch {
	case addr == dockerResolver:
		// No rule opens Docker's resolver on its real ports (bpf refuses
		// them whatever the policy): do not suggest one.
		d.Fix = "send DNS to port 53 (the firewall's DNS answers it, container names included)"
	case d.Destination != "":
		d.Fix = "connect by name (IP literals are denied unless an IP/CIDR rule allows them); " + FixFor(d.Destination, port, "", nil)
	}
	// A rule that got no listener port is allowed on paper and refused by
	// the hooks: say so instead of suggesting a rule that exists.
	if m := p.Model(); m != nil {
		for _, f := range m.Failures[index] {
			if f.Covers(port, policy.L4(l4)) {
				d.Reason += "; " + f.String()
				d.Fix = "the rule exists but has no listener port: see `clawker-fw status`; remove other port ranges or split the rule"
				break
			}
		}
	}
	p.Denials.Add(d)
	if !p.cfg.KernelLogLimit.Allow(index) {
		return
	}
	p.log.WithField(FieldIndex, index).WithField(FieldContainer, d.Container).WithField("dst", d.Destination).
		WithField("port", port).WithField("l4", l4).WithField("reason", d.Reason).Warn("connection denied by socket hook")
}
