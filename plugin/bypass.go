package plugin

import (
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
)

// Bypass gives a container allow-all through DNS and the proxy until the
// deadline (never NAT or forwarding: the closed network still carries every
// flow through the proxy). A dead-man timer restores enforcement, and Start
// re-arms it after a restart.
func (p *Plugin) Bypass(containerRef string, d time.Duration) (time.Time, error) {
	return p.bypass(containerRef, d, false)
}

// bypass grants a bypass, in learn mode when learn is set (a plain bypass
// of a learning container ends its learning).
func (p *Plugin) bypass(containerRef string, d time.Duration, learn bool) (time.Time, error) {
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
		next.Endpoints[ep.ID].Learn = learn
		if err := p.commit(next); err != nil {
			return err
		}
		epID = ep.ID
		if learn {
			p.startLearning(ep, until, false)
		} else {
			p.stopLearning(ep)
		}
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
	err := p.endBypassNow(epID)
	if err != nil && !isPartial(err) {
		// The store write failed: retry soon, enforcement must come back.
		p.log.WithError(err).Error("end bypass failed; retrying")
		time.AfterFunc(time.Second, func() { p.endBypass(epID) })
	}
}

// endBypassNow ends an endpoint's bypass (and learning) and restores its
// enforcement.
func (p *Plugin) endBypassNow(epID string) error {
	return p.q.Do(p.ctx, queue.KindBypass, func() error {
		ep, ok := p.st.Endpoints[epID]
		if !ok || ep.BypassUntil.IsZero() {
			return nil
		}
		next := p.st.clone()
		next.Endpoints[epID].BypassUntil = time.Time{}
		next.Endpoints[epID].Learn = false
		if err := p.commit(next); err != nil {
			return err
		}
		p.stopLearning(ep)
		p.log.WithField(FieldEndpoint, short(epID)).WithField(FieldContainer, ep.ContainerName).Warn("bypass ended: enforcement restored")
		return p.applyEnrollment(epID)
	})
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
