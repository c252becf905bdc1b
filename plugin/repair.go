package plugin

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
)

// Reload regenerates everything from the store (break-glass).
func (p *Plugin) Reload() error {
	return p.q.Do(p.ctx, queue.KindReconcile, func() error {
		var errs []error
		// The route sync compares with what it last wrote: read the maps.
		p.k.ForgetWritten()
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
