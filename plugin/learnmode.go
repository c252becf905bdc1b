package plugin

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/plugin/learn"
	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Learn mode is a bypass (same allow-all through DNS and the proxy, same
// dead-man timer, never NAT or forwarding) whose flows are recorded: the
// endpoint's snapshot entry carries Learn, so the proxy reads every flow's
// name instead of splicing by address and reports it, and the DNS sidecar
// reports the answers (to name ssh/tcp flows). At the end the recording
// becomes a proposed rule set (package learn).

// maxLearnFlows bounds one session's distinct flows.
const maxLearnFlows = 4096

// maxLearnSessions bounds the ended sessions kept for learn show/check.
const maxLearnSessions = 64

// learnSession is one container's learning run.
type learnSession struct {
	index       uint32
	epID        string
	containerID string
	container   string
	networkID   string
	started     time.Time
	until       time.Time
	rec         *learn.Recorder
	restarted   bool // the plugin restarted during the run: earlier flows are lost

	mu    sync.Mutex
	ended time.Time
	done  chan struct{}
}

// learnBook holds the sessions: active ones by endpoint index (read on the
// data planes' report path without locks), all by container id.
type learnBook struct {
	mu       sync.Mutex
	active   atomic.Pointer[map[uint32]*learnSession]
	sessions []*learnSession // oldest first
}

func (b *learnBook) lookup(index uint32) *learnSession {
	m := b.active.Load()
	if m == nil {
		return nil
	}
	return (*m)[index]
}

// setActive replaces the active map with one where index maps to s (nil:
// removed). Callers hold b.mu.
func (b *learnBook) setActive(index uint32, s *learnSession) {
	next := map[uint32]*learnSession{}
	if m := b.active.Load(); m != nil {
		for k, v := range *m {
			next[k] = v
		}
	}
	if s == nil {
		delete(next, index)
	} else {
		next[index] = s
	}
	b.active.Store(&next)
}

func (b *learnBook) start(s *learnSession) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.lookup(s.index); old != nil {
		old.end(s.started)
	}
	b.setActive(s.index, s)
	b.sessions = append(b.sessions, s)
	if len(b.sessions) > maxLearnSessions {
		b.sessions = b.sessions[len(b.sessions)-maxLearnSessions:]
	}
}

// stop ends the active session of index, if any.
func (b *learnBook) stop(index uint32, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.lookup(index); s != nil {
		s.end(now)
		b.setActive(index, nil)
	}
}

// find returns the latest session of a container (full id, a prefix of at
// least 12 characters, or name).
func (b *learnBook) find(ref string) *learnSession {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := len(b.sessions) - 1; i >= 0; i-- {
		s := b.sessions[i]
		if s.containerID == ref || s.container == ref || (len(ref) >= 12 && strings.HasPrefix(s.containerID, ref)) {
			return s
		}
	}
	return nil
}

func (s *learnSession) end(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended.IsZero() {
		s.ended = now
		close(s.done)
	}
}

// report builds the session's report with its proposed rules.
func (s *learnSession) report() api.LearnReport {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	flows, only, dropped := s.rec.Flows()
	rep := api.LearnReport{Container: s.container, ContainerID: s.containerID, Network: s.networkID,
		Started: s.started, Until: s.until, Ended: ended, Active: ended.IsZero(),
		Flows: flows, Resolved: only, Dropped: dropped, Rules: learn.Synthesize(flows),
		Warnings: append([]string(nil), learn.Warnings...)}
	if s.restarted {
		rep.Warnings = append(rep.Warnings, "the plugin restarted while learning: flows before the restart were not kept")
	}
	if dropped > 0 {
		rep.Warnings = append(rep.Warnings, "the recording was full: some flows were not recorded (see dropped)")
	}
	return rep
}

// Learn puts a container in learn mode until the deadline: a bypass whose
// flows are recorded (see learnmode.go).
func (p *Plugin) Learn(containerRef string, d time.Duration) (api.LearnReport, error) {
	if _, err := p.bypass(containerRef, d, true); err != nil && !isPartial(err) {
		return api.LearnReport{}, err
	} else if s := p.learns.find(containerRef); s != nil {
		return s.report(), err
	}
	return api.LearnReport{}, rejected(ReasonContainerGone, "container %q left its network", containerRef)
}

// startLearning opens a recording for ep (called in the queue action that
// commits the learn bypass).
func (p *Plugin) startLearning(ep *Endpoint, until time.Time, restarted bool) {
	p.learns.start(&learnSession{index: ep.Index, epID: ep.ID, containerID: ep.ContainerID, container: ep.ContainerName,
		networkID: ep.NetworkID, started: p.cfg.Now().UTC(), until: until, rec: learn.NewRecorder(maxLearnFlows),
		restarted: restarted, done: make(chan struct{})})
}

// stopLearning ends ep's recording (its bypass ended, or it left).
func (p *Plugin) stopLearning(ep *Endpoint) {
	p.learns.stop(ep.Index, p.cfg.Now().UTC())
}

// restoreLearning reopens a recording for every endpoint still learning
// after a restart (its bypass timer is re-armed like any other).
func (p *Plugin) restoreLearning() {
	_ = p.q.Do(p.ctx, queue.KindRead, func() error {
		now := p.cfg.Now()
		for _, ep := range p.st.Endpoints {
			if ep.Learn && ep.BypassUntil.After(now) {
				p.startLearning(ep, ep.BypassUntil, true)
			}
		}
		return nil
	})
}

// LearnReport returns the latest learn session of a container; with wait,
// it first waits until the session ends (or ctx is done).
func (p *Plugin) LearnReport(ctx context.Context, containerRef string, wait bool) (api.LearnReport, error) {
	s := p.learns.find(containerRef)
	if s == nil {
		return api.LearnReport{}, rejected(ReasonContainerGone, "no learn session of container %q (start one with `clawker-fw learn %s --for 10m`)", containerRef, containerRef)
	}
	if wait {
		select {
		case <-s.done:
		case <-ctx.Done():
		}
	}
	return s.report(), nil
}

// LearnStop ends a container's learn session now (enforcement returns, as
// at the end of a bypass) and returns its report.
func (p *Plugin) LearnStop(containerRef string) (api.LearnReport, error) {
	s := p.learns.find(containerRef)
	if s == nil {
		return api.LearnReport{}, rejected(ReasonContainerGone, "no learn session of container %q", containerRef)
	}
	p.stopBypassTimer(s.epID)
	if err := p.endBypassNow(s.epID); err != nil && !isPartial(err) {
		return s.report(), err
	}
	p.learns.stop(s.index, p.cfg.Now().UTC())
	return s.report(), nil
}

// LearnObserve records a flow of endpoint index if it is learning.
func (p *Plugin) LearnObserve(index uint32, o learn.Observation) {
	if s := p.learns.lookup(index); s != nil {
		s.rec.Observe(o)
	}
}

// LearnResolved records a DNS answer of endpoint index if it is learning.
func (p *Plugin) LearnResolved(index uint32, name string, addrs []netip.Addr) {
	if s := p.learns.lookup(index); s != nil {
		s.rec.Resolved(name, addrs)
	}
}

// LearnCheck replays flows against rules (a clawker.rules list) as if they
// were the container's labels, on its network's current option and
// runtime rules, and reports the flows that would be denied. No traffic.
func (p *Plugin) LearnCheck(req api.LearnCheckRequest) (api.LearnCheckResponse, error) {
	resp := api.LearnCheckResponse{Container: req.Container, Checked: len(req.Flows)}
	if len(req.Rules) == 0 {
		return resp, rejected(ReasonInvalidRule, "the rule set is empty (clawker.rules of the learn file)")
	}
	raw, err := json.Marshal(req.Rules)
	if err != nil {
		return resp, rejected(ReasonInvalidRequest, "encode rules: %v", err)
	}
	labels, err := policy.ParseLabels(map[string]string{policy.KeyRules: string(raw)}, req.Container)
	if err != nil {
		return resp, rejected(ReasonInvalidRule, "%w", err)
	}
	var in policy.CompileInput
	err = p.q.Do(p.ctx, queue.KindRead, func() error {
		ep := p.st.endpointByContainer(req.Container)
		if ep == nil {
			return rejected(ReasonContainerGone, "container %q is not on a clawker-fw network (or not identified yet)", req.Container)
		}
		n := p.st.Networks[ep.NetworkID]
		in = policy.CompileInput{Network: n.Config.Rules, Runtime: n.Runtime, Label: labels, Settings: n.Config.Settings}
		return nil
	})
	if err != nil {
		return resp, err
	}
	pol, err := policy.Compile(in, policy.NewIdentityTable())
	if err != nil {
		return resp, rejected(ReasonInvalidRule, "%w", err)
	}
	resp.Denied = learn.Check(pol, req.Flows)
	return resp, nil
}
