package policy

import (
	"context"
	"net/netip"
	"time"
)

// Who is the one answer to "who is asking": an endpoint of a snapshot at one
// instant, the policy every data plane must apply to it, and why that
// policy. DNS, both proxy engines, the listener model and the hook
// enrollment all read an endpoint through it, so the order below is decided
// once:
//  1. a source address that is no endpoint of the snapshot is
//     ReasonUnknownPeer (no policy);
//  2. a bypassed endpoint (BypassUntil in the future) gets allow-all,
//     ReasonBypass, whatever its labels or identification (in learn mode
//     marked Learn, inspecting where the network inspects);
//  3. an endpoint whose labels did not parse gets an empty policy (nothing
//     allowed), ReasonBadLabel, with the label error as Detail;
//  4. an endpoint whose container is not known yet is ReasonPending (no
//     policy): DNS and the proxy wait for it, bounded (Await);
//  5. otherwise the endpoint's compiled policy, with no reason.
type Who struct {
	// Endpoint is nil when the source is no endpoint (or no snapshot is
	// loaded yet: then State is ReasonPending).
	Endpoint *Endpoint
	// Policy is the effective policy; nil for ReasonPending and
	// ReasonUnknownPeer.
	Policy *Policy
	// State is "" when Policy is the endpoint's own compiled policy, else
	// ReasonBypass, ReasonBadLabel, ReasonPending or ReasonUnknownPeer.
	State Reason
	// Detail is the label error for ReasonBadLabel.
	Detail string
	// Network names the endpoint's network as texts name it (the fix's
	// `clawker-fw rules add NETWORK ...`): its Docker name, else its short
	// id; "" without an endpoint or a snapshot (Snapshot.WhoIs fills it).
	Network string
}

// State is the order of Who's steps 2 to 4 on an endpoint's facts:
// ReasonBypass while bypassed (bypassUntil after now), then ReasonBadLabel
// with a label error, then ReasonPending while the container is unknown,
// else "". The plugin's hook enrollment applies it to its own state, which
// it enrolls before a snapshot holds the endpoint.
func State(bypassUntil time.Time, labelError string, pending bool, now time.Time) Reason {
	switch {
	case bypassUntil.After(now):
		return ReasonBypass
	case labelError != "":
		return ReasonBadLabel
	case pending:
		return ReasonPending
	}
	return ""
}

// Who answers for ep at time now (steps 2 to 5 of the type's order).
func (ep *Endpoint) Who(now time.Time) Who {
	if ep == nil {
		return Who{State: ReasonUnknownPeer}
	}
	if State(ep.BypassUntil, "", false, now) == ReasonBypass {
		if ep.Learn {
			// Learn mode: the bypass's allow-all, reporting every flow, and
			// inspecting where the network inspects so paths can be seen.
			return Who{Endpoint: ep, Policy: &Policy{AllowAll: true, Learn: true, InspectAll: ep.Policy != nil && ep.Policy.InspectAll}, State: ReasonBypass}
		}
		return Who{Endpoint: ep, Policy: &Policy{AllowAll: true}, State: ReasonBypass}
	}
	return ep.Own()
}

// Own answers for ep by its own rules, a bypass aside (steps 3 to 5): the
// listener model builds its routes from it, so they are in place when a
// bypass ends.
func (ep *Endpoint) Own() Who {
	switch State(time.Time{}, ep.LabelError, ep.Pending || ep.Policy == nil, time.Time{}) {
	case ReasonBadLabel:
		return Who{Endpoint: ep, Policy: &Policy{}, State: ReasonBadLabel, Detail: ep.LabelError}
	case ReasonPending:
		return Who{Endpoint: ep, State: ReasonPending}
	}
	return Who{Endpoint: ep, Policy: ep.Policy}
}

// WhoIs answers for the endpoint that owns source address src (sound only
// because the closed network anti-spoofs). A nil snapshot (none loaded yet)
// is pending, not unknown: the caller may wait for the first one.
func (s *Snapshot) WhoIs(src netip.Addr, now time.Time) Who {
	if s == nil {
		return Who{State: ReasonPending}
	}
	ep, ok := s.EndpointByIP(src)
	if !ok {
		return Who{State: ReasonUnknownPeer}
	}
	w := ep.Who(now)
	w.Network = s.NetworkRef(ep.NetworkID)
	return w
}

// NetworkRef is how texts name network id: its Docker name when the
// snapshot has it, else its short (12 character) id; both resolve in the
// CLI.
func (s *Snapshot) NetworkRef(id string) string {
	if n := s.Networks[id]; n != nil && n.Name != "" {
		return n.Name
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Pending reports whether the answer may still change by waiting: the
// endpoint's container is unknown, or no snapshot is loaded.
func (w Who) Pending() bool { return w.State == ReasonPending }

// Await answers who is asking from src, waiting up to limit while the answer
// is pending for a snapshot that knows (the one bounded wait of DNS and the
// proxy; DESIGN.md, "Not-yet-enrolled endpoints"). view returns the current
// snapshot (nil before the first) and a channel that is closed when it is
// replaced. The answer is still pending when the wait ran out or ctx ended;
// waited reports whether it had to wait at all.
func Await(ctx context.Context, limit time.Duration, now func() time.Time, src netip.Addr,
	view func() (*Snapshot, <-chan struct{})) (w Who, waited bool) {
	var timer *time.Timer
	for {
		snap, changed := view()
		w = snap.WhoIs(src, now())
		if !w.Pending() {
			return w, waited
		}
		if timer == nil {
			waited = true
			timer = time.NewTimer(limit)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-timer.C:
			return w, waited
		case <-ctx.Done():
			return w, waited
		}
	}
}
