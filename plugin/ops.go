package plugin

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// networkByRef finds a network by full id, id prefix (>= 4 characters) or
// bridge name.
func (st *State) networkByRef(ref string) *Network {
	if n, ok := st.Networks[ref]; ok {
		return n
	}
	var found *Network
	for id, n := range st.Networks {
		if (len(ref) >= 4 && len(ref) <= len(id) && id[:len(ref)] == ref) || n.Bridge == ref || n.Options["clawker.name"] == ref {
			if found != nil {
				return nil // ambiguous
			}
			found = n
		}
	}
	return found
}

// RuntimeRules lists a network's runtime rules (read through the queue:
// read-after-write).
func (p *Plugin) RuntimeRules(netRef string) (string, []policy.EgressRule, error) {
	var id string
	var out []policy.EgressRule
	err := p.q.Do(p.ctx, queue.KindRead, func() error {
		n := p.st.networkByRef(netRef)
		if n == nil {
			return rejected(ReasonNetworkNotFound, "network %q is not a clawker-fw network (use its id as `docker network inspect -f {{.Id}} NAME` prints it)", netRef)
		}
		id = n.ID
		out = append(out, n.Runtime...)
		return nil
	})
	return id, out, err
}

// AddRules adds runtime rules to a network. They are durable before this
// returns (atomic write) and applied live without restarting any data plane.
func (p *Plugin) AddRules(netRef string, items []string) ([]policy.EgressRule, error) {
	var added []policy.EgressRule
	err := p.q.Do(p.ctx, queue.KindMutate, func() error {
		n := p.st.networkByRef(netRef)
		if n == nil {
			return rejected(ReasonNetworkNotFound, "network %q is not a clawker-fw network", netRef)
		}
		for _, item := range items {
			r, err := policy.ParseRuntimeRule(item, n.ID)
			if err != nil {
				return rejected(ReasonInvalidRule, "%w", err)
			}
			added = append(added, r)
		}
		next := p.st.clone()
		nn := next.Networks[n.ID]
		nn.Runtime = policy.Dedup(append(nn.Runtime, added...))
		// Validate the whole resulting policy before committing.
		if _, err := policy.Compile(policy.CompileInput{Network: nn.Config.Rules, Runtime: nn.Runtime, Settings: nn.Config.Settings}, policy.NewIdentityTable()); err != nil {
			return rejected(ReasonInvalidRule, "%w", err)
		}
		if err := p.checkPorts(append(slices.Clone(nn.Config.Rules), nn.Runtime...)); err != nil {
			return err
		}
		if err := p.commit(next); err != nil {
			return err
		}
		return p.publish()
	})
	return added, err
}

// checkPorts refuses network rules (options and runtime rules) that need
// more listener ports than a network may use, or more new ports than the
// shared pool has free. It runs in queue actions, before anything is
// written.
func (p *Plugin) checkPorts(rules []policy.EgressRule) error {
	if err := model.CheckLimit(rules, model.MaxPortsPerNetwork, "a network"); err != nil {
		var le *model.LimitError
		if errors.As(err, &le) {
			return rejected(ReasonPortLimit, "%w", err)
		}
		return rejected(ReasonInvalidRule, "%w", err)
	}
	keys, err := model.RuleKeys(rules)
	if err != nil {
		return rejected(ReasonInvalidRule, "%w", err)
	}
	fresh := 0
	for k := range keys {
		if !p.st.Ports.Has(k) {
			fresh++
		}
	}
	if free := p.st.Ports.Free(); fresh > free {
		return rejected(ReasonPortsExhausted, "the rules need %d new listener ports and only %d of the shared pool (%d-%d) are free; remove rules that use port ranges on this or other networks",
			fresh, free, model.AllocLo, model.AllocHi)
	}
	return nil
}

// RemoveRules removes runtime rules (matched by their formatted form).
func (p *Plugin) RemoveRules(netRef string, items []string) error {
	return p.q.Do(p.ctx, queue.KindMutate, func() error {
		n := p.st.networkByRef(netRef)
		if n == nil {
			return rejected(ReasonNetworkNotFound, "network %q is not a clawker-fw network", netRef)
		}
		next := p.st.clone()
		nn := next.Networks[n.ID]
		for _, item := range items {
			r, err := policy.ParseRuntimeRule(item, n.ID)
			if err != nil {
				return rejected(ReasonInvalidRule, "%w", err)
			}
			want := policy.FormatRule(r)
			kept := nn.Runtime[:0:0]
			removed := false
			for _, have := range nn.Runtime {
				if policy.FormatRule(have) == want {
					removed = true
					continue
				}
				kept = append(kept, have)
			}
			if !removed {
				return rejected(ReasonRuleNotFound, "rule %q is not a runtime rule of network %s (see `clawker-fw rules ls`)", item, short(n.ID))
			}
			nn.Runtime = kept
		}
		if err := p.commit(next); err != nil {
			return err
		}
		return p.publish()
	})
}

// Bypass gives a container allow-all through DNS and the proxy until the
// deadline (never NAT or forwarding: the closed network still carries every
// flow through the proxy). A dead-man timer restores enforcement, and Start
// re-arms it after a restart.
func (p *Plugin) Bypass(containerRef string, d time.Duration) (time.Time, error) {
	if d <= 0 || d > 24*time.Hour {
		return time.Time{}, rejected(ReasonInvalidRequest, "bypass duration %s: must be between 1s and 24h", d)
	}
	var until time.Time
	var epID string
	err := p.q.Do(p.ctx, queue.KindBypass, func() error {
		ep := p.st.endpointByContainer(containerRef)
		if ep == nil {
			return rejected(ReasonContainerGone, "container %q is not on a clawker-fw network (or not identified yet)", containerRef)
		}
		until = p.cfg.Now().Add(d).UTC()
		next := p.st.clone()
		next.Endpoints[ep.ID].BypassUntil = until
		if err := p.commit(next); err != nil {
			return err
		}
		epID = ep.ID
		return p.applyEnrollment(ep.ID)
	})
	if err == nil || isPartial(err) {
		p.armBypassTimer(epID, until)
	}
	return until, err
}

// applyEnrollment re-enrolls an endpoint with its current state and publishes.
func (p *Plugin) applyEnrollment(epID string) error {
	ep := p.st.Endpoints[epID]
	pubErr := p.publish()
	var enErr error
	if ep.NetnsCookie != 0 {
		enErr = p.k.Enroll(ep.NetnsCookie, p.enrollment(p.st.Networks[ep.NetworkID], ep))
	}
	return joinPartial([]error{pubErr, enErr})
}

func isPartial(err error) bool {
	l, _ := ReasonOf(err)
	return l == LayerPartial
}

func (p *Plugin) armBypassTimer(epID string, until time.Time) {
	p.bypassMu.Lock()
	defer p.bypassMu.Unlock()
	if t := p.bypassTimers[epID]; t != nil {
		t.Stop()
	}
	p.bypassTimers[epID] = time.AfterFunc(time.Until(until), func() { p.endBypass(epID) })
}

func (p *Plugin) stopBypassTimer(epID string) {
	p.bypassMu.Lock()
	defer p.bypassMu.Unlock()
	if t := p.bypassTimers[epID]; t != nil {
		t.Stop()
		delete(p.bypassTimers, epID)
	}
}

func (p *Plugin) endBypass(epID string) {
	err := p.q.Do(p.ctx, queue.KindBypass, func() error {
		ep, ok := p.st.Endpoints[epID]
		if !ok || ep.BypassUntil.IsZero() {
			return nil
		}
		next := p.st.clone()
		next.Endpoints[epID].BypassUntil = time.Time{}
		if err := p.commit(next); err != nil {
			return err
		}
		p.log.WithField(FieldEndpoint, short(epID)).WithField(FieldContainer, ep.ContainerName).Warn("bypass ended: enforcement restored")
		return p.applyEnrollment(epID)
	})
	if err != nil && !isPartial(err) {
		// The store write failed: retry soon, enforcement must come back.
		p.log.WithError(err).Error("end bypass failed; retrying")
		time.AfterFunc(time.Second, func() { p.endBypass(epID) })
	}
}

// restoreBypassTimers re-arms dead-man timers after a restart; expired
// bypasses end at once.
func (p *Plugin) restoreBypassTimers() {
	var pending []*Endpoint
	_ = p.q.Do(p.ctx, queue.KindRead, func() error {
		for _, ep := range p.st.Endpoints {
			if !ep.BypassUntil.IsZero() {
				c := *ep
				pending = append(pending, &c)
			}
		}
		return nil
	})
	for _, ep := range pending {
		p.armBypassTimer(ep.ID, ep.BypassUntil)
	}
}

// Reload regenerates everything from the store (break-glass).
func (p *Plugin) Reload() error {
	return p.q.Do(p.ctx, queue.KindReconcile, func() error {
		var errs []error
		for _, n := range p.sortedNetworks() {
			eps := p.st.endpointsOf(n.ID)
			errs = append(errs, p.guardHost(n, eps)...)
			for _, ep := range eps {
				if ep.NetnsCookie != 0 {
					errs = append(errs, p.k.Enroll(ep.NetnsCookie, p.enrollment(n, ep)))
				}
			}
		}
		errs = append(errs, p.publish())
		return joinPartial(errs)
	})
}

// RepairHost puts back the host guard of every network whose rules or
// chains something else removed (a firewall reload flushing the ruleset):
// the network and endpoint guards are installed again, as by Reload; BPF
// enrollment is not touched. It returns one line per repaired network,
// naming what was missing. The plugin runs it periodically.
func (p *Plugin) RepairHost() ([]string, error) {
	var repaired []string
	// Not KindReconcile: coalesced reconciles run only the last one's work.
	err := p.q.Do(p.ctx, queue.KindRepair, func() error {
		var errs []error
		for _, n := range p.sortedNetworks() {
			eps := p.st.endpointsOf(n.ID)
			missing, err := p.hn.Missing(n, eps)
			if err != nil {
				errs = append(errs, fmt.Errorf("check host guard of network %s: %w", short(n.ID), err))
				continue
			}
			if len(missing) == 0 {
				continue
			}
			repaired = append(repaired, fmt.Sprintf("network %s: %s", short(n.ID), strings.Join(missing, ", ")))
			errs = append(errs, p.guardHost(n, eps)...)
		}
		return errors.Join(errs...)
	})
	p.guardMu.Lock()
	p.guard.Checks++
	if len(repaired) > 0 {
		p.guard.Restores++
		p.guard.Last, p.guard.LastAt = strings.Join(repaired, "; "), p.cfg.Now()
	}
	p.guard.Err = ""
	if err != nil {
		p.guard.Err = err.Error()
	}
	p.guardMu.Unlock()
	return repaired, err
}

// guardHost (re)installs the host side of network n and its endpoints.
func (p *Plugin) guardHost(n *Network, eps []*Endpoint) []error {
	errs := []error{p.hn.AddNetwork(n)}
	for _, ep := range eps {
		errs = append(errs, p.hn.AddEndpoint(n, ep))
	}
	return errs
}

// HostGuardStatus is what RepairHost has seen since the plugin started.
type HostGuardStatus struct {
	Checks   int       // RepairHost runs
	Restores int       // runs that found something missing and put it back
	Last     string    // what the latest restore found missing
	LastAt   time.Time // when
	Err      string    // the latest run's error ("" when it worked)
}

// HostGuard returns the host guard checks' status.
func (p *Plugin) HostGuard() HostGuardStatus {
	p.guardMu.Lock()
	defer p.guardMu.Unlock()
	return p.guard
}

// Summary is the status in one line for `clawker-fw status`.
func (s HostGuardStatus) Summary(now time.Time) string {
	switch {
	case s.Err != "":
		return "check failed: " + s.Err
	case s.Checks == 0:
		return "not checked yet"
	case s.Restores == 0:
		return "intact"
	}
	return fmt.Sprintf("restored %d time(s), last %s ago (was missing: %s)", s.Restores, now.Sub(s.LastAt).Round(time.Second), s.Last)
}

// NetworkStatus is one network in Status (api.NetworkStatus).
type NetworkStatus = api.NetworkStatus

// EPInfo is one endpoint in Status (api.EPInfo).
type EPInfo = api.EPInfo

// Networks reports networks and endpoints (read through the queue).
func (p *Plugin) Networks() ([]NetworkStatus, uint64, error) {
	var out []NetworkStatus
	var gen uint64
	m := p.Model()
	err := p.q.Do(p.ctx, queue.KindRead, func() error {
		gen = p.lastGeneration()
		for _, n := range p.sortedNetworks() {
			ns := NetworkStatus{ID: n.ID, Bridge: n.Bridge, Subnet: n.Subnet.String(), Gateway: n.Gateway.String(),
				Rules: len(n.Config.Rules), Runtime: len(n.Runtime)}
			for _, ep := range p.st.endpointsOf(n.ID) {
				info := EPInfo{Index: ep.Index, IP: ep.IP.String(), Container: ep.ContainerName, Enrolled: ep.NetnsCookie != 0,
					Pending: ep.Joined && !ep.Identified(), LabelRules: len(ep.LabelRules), LabelError: ep.LabelError}
				if !ep.BypassUntil.IsZero() {
					info.BypassUntil = ep.BypassUntil.Format(time.RFC3339)
				}
				if m != nil {
					for _, f := range m.Failures[ep.Index] {
						info.Failures = append(info.Failures, f.String())
					}
				}
				for _, l := range ep.IgnoredLabels {
					info.IgnoredLabels = append(info.IgnoredLabels, l.String())
				}
				ns.Endpoints = append(ns.Endpoints, info)
			}
			out = append(out, ns)
		}
		return nil
	})
	return out, gen, err
}

// Denial is one recorded denial, with what would allow it (api.Denial).
type Denial = api.Denial

// DenialLog keeps the most recent denials and lets followers subscribe.
type DenialLog struct {
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

// FixFor says what would allow a denied destination for an endpoint.
func FixFor(dst string, port uint16, reason policy.Reason, deny *policy.Denied) string {
	if deny != nil {
		return fmt.Sprintf("denied by %s %s=%q; remove that deny to allow it", deny.Rule.Source.Kind, deny.Rule.Source.Key, deny.Rule.Source.Item)
	}
	item := dst
	_, ipErr := netip.ParseAddr(dst)
	switch {
	case ipErr == nil && port != 0:
		item = fmt.Sprintf("tcp://%s:%d", dst, port)
	case port == 80:
		item = "http://" + dst
	case port != 0 && port != 443:
		item = fmt.Sprintf("%s:%d", dst, port)
	}
	return fmt.Sprintf("allow it with the container label clawker.allow=%s, the network option -o clawker.allow=%s, or `clawker-fw rules add NETWORK %s`", item, item, item)
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
