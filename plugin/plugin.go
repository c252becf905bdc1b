// Package plugin is the Docker-facing process of clawker-fw: the network
// driver's state machine (networks, endpoints, enrollment), the persisted
// state, snapshot publication to the data planes, and the admin operations.
// The HTTP surfaces (driver, authz, admin) only decode, call and encode.
//
// Every mutation goes through one serialized action queue (plugin/queue);
// the data planes and authz never wait on it: they read the latest published
// snapshot.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Log field names.
const (
	FieldComponent = "component"
	FieldNetwork   = "network"
	FieldEndpoint  = "endpoint"
	FieldIndex     = "index"
	FieldContainer = "container"
	FieldError     = "error"
)

// Config configures the plugin core.
type Config struct {
	// StateDir holds state.json.
	StateDir string
	Log      *logrus.Entry
	// IdentifyTimeout bounds how long an endpoint may stay unidentified
	// after Join before it is left with no egress (default 60 s).
	IdentifyTimeout time.Duration
	// PendingPass is how long the hooks leave a pending endpoint's flows to
	// the closed network's redirect (default 15 s).
	PendingPass time.Duration
	Now         func() time.Time
	// Firewalled, when set, is told each container identified on a
	// clawker-fw network (authz remembers it as firewalled for its life).
	Firewalled func(containerID, networkID string)
	// Decisions, when set, takes the socket hooks' denials as decision
	// records (the process's decisionlog.Hub: it counts, folds,
	// rate-limits and logs them, and feeds Denials through
	// ExplainDecision and DenialOf). When nil they go to Denials directly.
	Decisions func(decisionlog.Record)
	// GivenLabels returns the clawker labels a container's create request
	// gave (authz records them); recorded is false when none is known.
	// Only those labels carry rules (see given.go).
	GivenLabels func(containerID string) (labels map[string]string, recorded bool)
	// Names, when set, resolves network and container references through
	// Docker for the admin API, and gives networks their names (nil: the
	// plugin's own store answers).
	Names Names
	// Scope is the data scope the driver reports to Docker: "" or "local",
	// or "global" (CLAWKER_SCOPE=global, for Swarm nodes; see swarm.go).
	Scope string
	// EngineWait bounds how long CreateEndpoint and Join wait for the
	// engine to register this plugin process as a driver (engine.go);
	// 0 does not wait.
	EngineWait time.Duration
}

// Plugin is the running plugin core.
type Plugin struct {
	cfg   Config
	log   *logrus.Entry
	k     Kernel
	hn    HostNet
	dp    DataPlane
	dk    Docker
	sinks []SnapshotSink

	q  *queue.Queue
	st *State // owned by queue actions
	// scopes caches Docker's scope of each network asked (refuseSwarmRules).
	scopes sync.Map
	// pre, when set, is the generation the next publish serves, compiled by
	// commit from the current state and already held (identities, listener
	// ports, generation) in the state it wrote: publish neither writes nor
	// compiles again.
	pre *prebuilt
	// enc encodes the state for save (owned by queue actions).
	enc *StateEncoder
	// configs keeps the networks' configuration files beside state.json.
	configs *configFiles
	// saves counts state writes and builds compilations of the snapshot
	// (tests: one of each per mutation).
	saves, builds atomic.Int64
	// compiler keeps the last commit's compiled policies for the next.
	compiler *Compiler
	snap     atomic.Pointer[policy.Snapshot]
	model    atomic.Pointer[model.Model]

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	bypassMu     sync.Mutex
	bypassTimers map[string]*time.Timer

	guardMu sync.Mutex
	guard   HostGuardStatus

	failMu   sync.Mutex
	failSeen map[string]bool

	names networkNames

	Denials *DenialLog

	learns learnBook

	engine *engineGate
}

// New loads the persisted state and returns a plugin that is not started.
func New(cfg Config, k Kernel, hn HostNet, dp DataPlane, dk Docker, sinks ...SnapshotSink) (*Plugin, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdentifyTimeout == 0 {
		cfg.IdentifyTimeout = 60 * time.Second
	}
	if cfg.PendingPass == 0 {
		cfg.PendingPass = 15 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	st, err := loadState(filepath.Join(cfg.StateDir, "state.json"))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Plugin{
		cfg: cfg, log: cfg.Log.WithField(FieldComponent, "plugin"),
		k: k, hn: hn, dp: dp, dk: dk, sinks: sinks,
		q: queue.New(), st: st, ctx: ctx, cancel: cancel,
		bypassTimers: map[string]*time.Timer{}, compiler: NewCompiler(), enc: NewStateEncoder(), engine: newEngineGate(),
		configs: &configFiles{dir: filepath.Join(cfg.StateDir, configDir)},
		Denials: NewDenialLog(500),
	}
	p.Denials.Enrich = p.EnrichDenial
	p.snap.Store((&policy.Snapshot{Networks: map[string]*policy.Network{}, Endpoints: map[uint32]*policy.Endpoint{}}).Index())
	return p, nil
}

func (p *Plugin) statePath() string { return filepath.Join(p.cfg.StateDir, "state.json") }

// Snapshot returns the latest published snapshot (never waits on the queue).
func (p *Plugin) Snapshot() *policy.Snapshot { return p.snap.Load() }

// Model returns the latest published listener model.
func (p *Plugin) Model() *model.Model { return p.model.Load() }

// Start restores every persisted network and endpoint (Docker does not
// replay CreateNetwork/CreateEndpoint), publishes the first snapshot, and
// re-identifies joined endpoints so running containers are enforced exactly
// as before.
func (p *Plugin) Start() error {
	var rejoin []*Endpoint
	err := p.q.Do(p.ctx, queue.KindBringUp, func() error {
		var errs []error
		known := map[string]bool{}
		for _, n := range p.st.Networks {
			known[n.Bridge] = true
		}
		if gone, err := p.hn.RemoveOrphans(known); err != nil {
			errs = append(errs, fmt.Errorf("remove orphaned networks: %w", err))
		} else if len(gone) > 0 {
			p.log.WithField("bridges", gone).Warn("removed networks left behind while the plugin was down")
		}
		for _, n := range p.sortedNetworks() {
			if err := p.hn.AddNetwork(n); err != nil {
				errs = append(errs, fmt.Errorf("restore network %s: %w", short(n.ID), err))
			}
			for _, ep := range p.st.endpointsOf(n.ID) {
				if err := p.hn.AddEndpoint(n, ep); err != nil {
					errs = append(errs, fmt.Errorf("restore endpoint %s: %w", short(ep.ID), err))
				}
				if ep.Joined {
					rejoin = append(rejoin, ep)
				}
			}
		}
		if err := p.publish(); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	for _, ep := range rejoin {
		p.identifyAsync(ep.ID, ep.HostVeth, true)
	}
	p.restoreBypassTimers()
	p.restoreLearning()
	return err
}

// Close stops background work and drains the queue. Enforcement (pinned BPF,
// nftables, bridges) stays in place.
func (p *Plugin) Close() {
	p.cancel()
	p.wg.Wait()
	p.bypassMu.Lock()
	for _, t := range p.bypassTimers {
		t.Stop()
	}
	p.bypassMu.Unlock()
	p.q.Close()
}

func (p *Plugin) sortedNetworks() []*Network {
	out := make([]*Network, 0, len(p.st.Networks))
	for _, n := range p.st.Networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// commit makes next the current state after writing it durably; on a failed
// write the current state is unchanged. What it writes is the state the
// following publish serves: the next generation, with the identities and
// listener ports that generation allocates (compiled here once ahead), so a
// mutation writes state.json once, not once here and again in publish.
func (p *Plugin) commit(next *State) error {
	prev, prevPre := p.st, p.pre
	last := p.lastGeneration()
	p.st, p.pre = next, nil
	next.Generation = last
	snap := p.buildSnapshot(last + 1)
	if m, err := model.Build(snap, next.Ports); err == nil {
		next.Generation, p.pre = last+1, &prebuilt{st: next, snap: snap, m: m}
	}
	if err := p.save(); err != nil {
		p.st, p.pre = prev, prevPre
		return &Error{Layer: LayerRejected, Reason: ReasonStoreWriteFailed, Err: fmt.Errorf("write state: %w", err)}
	}
	return nil
}

// prebuilt is a generation commit compiled ahead of publish.
type prebuilt struct {
	st   *State // the state it was compiled from (never changed in place: mutations commit a clone)
	snap *policy.Snapshot
	m    *model.Model
}

// lastGeneration is the generation last published (or loaded): the state
// holds the next one when commit wrote it ahead.
func (p *Plugin) lastGeneration() uint64 {
	if p.pre != nil {
		return p.st.Generation - 1
	}
	return p.st.Generation
}

// save writes the current state durably. Every caller has changed it
// since the last write (commit writes a new state, publish a new
// generation), so it is encoded and written without comparing it with
// the file first.
// The networks' configuration files it names are written first (only the
// new ones: a runtime rule change writes none), and those no longer named
// are removed after.
func (p *Plugin) save() error {
	files, err := saveState(p.enc, p.configs, p.statePath(), p.st)
	if err != nil {
		return err
	}
	p.saves.Add(1)
	if err := p.configs.prune(files); err != nil {
		p.log.WithError(err).Warn("state saved; an old network configuration file is left behind (removed at a later save)")
	}
	return nil
}

// buildSnapshot compiles every endpoint's policy from the current state.
func (p *Plugin) buildSnapshot(gen uint64) *policy.Snapshot {
	p.builds.Add(1)
	snap := p.st.SnapshotWith(p.compiler, gen)
	// Docker's names (known once a container on the network was listed):
	// the fix texts and DNS's PTR answers name the network with them.
	for id, n := range snap.Networks {
		n.Name = p.knownNetworkName(id)
	}
	return snap
}

// Snapshot compiles every endpoint's policy of st into generation gen,
// from nothing. It allocates identities in st.Identities.
func (st *State) Snapshot(gen uint64) *policy.Snapshot { return st.SnapshotWith(nil, gen) }

// SnapshotWith is Snapshot taking from c what an earlier commit compiled
// and is still current (the plugin's commit path; bench/scale calls it on
// a generated state).
func (st *State) SnapshotWith(c *Compiler, gen uint64) *policy.Snapshot {
	defer c.forget(st)
	snap := &policy.Snapshot{Generation: gen, Networks: map[string]*policy.Network{}, Endpoints: map[uint32]*policy.Endpoint{}}
	for id, n := range st.Networks {
		snap.Networks[id] = &policy.Network{ID: id, Bridge: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway, Settings: n.Config.Settings}
	}
	// A network's option and runtime rules are compiled once (its base):
	// the policy of every endpoint without label rules, shared, and the
	// base an endpoint with label rules is layered on (policy.Layer: the
	// labels compiled over the base's index, deciding exactly as the
	// merged compile would), so the work and memory per labelled endpoint
	// are its labels', not its network's thousands of rules.
	type compiled struct {
		idx *policy.BaseIndex
		err error
	}
	bases := map[string]compiled{}
	base := func(n *Network) (*policy.BaseIndex, error) {
		b, ok := bases[n.ID]
		if !ok {
			b.idx, b.err = c.base(st, n, gen)
			if b.err == nil {
				snap.Networks[n.ID].Base = b.idx.Policy()
			}
			bases[n.ID] = b
		}
		return b.idx, b.err
	}
	for _, ep := range st.Endpoints {
		n := st.Networks[ep.NetworkID]
		if n == nil {
			continue
		}
		sep := &policy.Endpoint{
			Index: ep.Index, ID: ep.ID, NetworkID: ep.NetworkID, IP: ep.IP, MAC: ep.MAC,
			ContainerID: ep.ContainerID, ContainerName: ep.ContainerName, Aliases: ep.Aliases,
			BypassUntil: ep.BypassUntil, Learn: ep.Learn,
		}
		switch {
		case !ep.Identified():
			sep.Pending = true
		case ep.LabelError != "":
			sep.LabelError = ep.LabelError
		default:
			var pol *policy.Policy
			b, err := base(n)
			if err == nil {
				pol = b.Policy()
				if len(ep.LabelRules) > 0 {
					if pol, err = c.layer(st, ep, b, gen); err == nil {
						_, sep.Labels = pol.Layers()
					}
				}
			}
			if err != nil {
				sep.LabelError = fmt.Sprintf("compile policy: %v", err)
			} else {
				sep.Policy = pol
			}
		}
		snap.Endpoints[ep.Index] = sep
	}
	return snap.Index()
}

// publish compiles everything into generation N+1 (or takes what the
// commit before it compiled from this same state) and hands it to every
// consumer: the proxy, the host guard's listener ports, BPF routes, the DNS
// sidecar's file, and the in-process pointer authz reads. It runs inside
// queue actions only. Errors here come after the store committed: they are
// partial failures.
//
// Nothing that fails for one rule may hold back the others, and above all
// never a revocation: a rule whose listener ports cannot be allocated
// (budgets, an exhausted pool) or opened (a bind failure) fails alone and is
// listed in Model.Failures (status and denials show it), and everything
// else is published. Only when new identities or ports cannot be persisted
// is nothing applied (they would be renumbered after a restart); a change
// that allocates nothing (rules removed, containers gone) is applied even
// then.
func (p *Plugin) publish() error {
	gen := p.lastGeneration() + 1
	ids := p.st.Identities.Len()
	var snap *policy.Snapshot
	var m *model.Model
	// written: commit wrote this very state, with generation gen and what
	// it allocates (states are never changed in place: a mutation commits
	// a clone), so there is nothing more to persist.
	written := false
	if pre := p.pre; pre != nil && pre.st == p.st && pre.snap.Generation == gen {
		snap, m = pre.snap, pre.m
		written = p.st.Generation == gen
	} else {
		snap = p.buildSnapshot(gen)
		var err error
		if m, err = model.Build(snap, p.st.Ports); err != nil {
			return partial(ReasonConfigRegenFailed, fmt.Errorf("build listener model: %w", err))
		}
	}
	p.st.Generation, p.pre = gen, nil
	var errs []error
	// Identities and ports may have grown: persist them before anyone uses them.
	if !written {
		if err := p.save(); err != nil {
			err = partial(ReasonStoreWriteFailed, fmt.Errorf("persist identities and listener ports: %w", err))
			if m.NewPorts > 0 || p.st.Identities.Len() != ids {
				return err
			}
			errs = append(errs, err)
		}
	}
	// Listeners first, so that routes only ever steer to open ones.
	if err := p.dp.Apply(snap, m); err != nil {
		var be *model.BindError
		if errors.As(err, &be) {
			m = m.WithoutListeners(snap, be.Failed)
			for _, f := range be.Failed {
				p.log.WithField("listener", f.Listener.Key).WithField("port", f.Listener.Port).WithField(FieldError, f.Err).
					Error("proxy listener could not be opened: its routes are withdrawn and its rules refused until it opens")
			}
		}
		errs = append(errs, partial(ReasonConfigRegenFailed, fmt.Errorf("apply proxy config: %w", err)))
	}
	if err := p.hn.SetListenerPorts(p.listenerPorts(m)); err != nil {
		errs = append(errs, partial(ReasonConfigRegenFailed, fmt.Errorf("update the host guard's listener ports: %w", err)))
	}
	if err := p.k.SyncRoutes(m); err != nil {
		errs = append(errs, partial(ReasonRouteSyncFailed, fmt.Errorf("sync BPF routes: %w", err)))
	}
	for _, s := range p.sinks {
		if err := s.Publish(snap); err != nil {
			errs = append(errs, partial(ReasonConfigRegenFailed, fmt.Errorf("publish snapshot: %w", err)))
		}
	}
	p.snap.Store(snap)
	p.model.Store(m)
	p.logFailures(m)
	p.log.WithField("generation", gen).WithField("endpoints", len(snap.Endpoints)).Debug("published snapshot")
	return errors.Join(errs...)
}

// listenerPorts returns the ports the plugin's listeners are bound to (the
// model's, which only lists listeners that opened, and DNS) and, per
// network bridge, the ones its endpoints' routes steer to: the host guard
// accepts exactly those from each bridge and no others.
func (p *Plugin) listenerPorts(m *model.Model) (ListenerPorts, map[string]ListenerPorts) {
	var all ListenerPorts
	all.TCP, all.UDP = m.ListenerPorts()
	all.TCP = append(all.TCP, model.DNSPort)
	all.UDP = append(all.UDP, model.DNSPort)
	per := make(map[string]ListenerPorts, len(p.st.Networks))
	for _, n := range p.st.Networks {
		var idx []uint32
		for _, ep := range p.st.endpointsOf(n.ID) {
			idx = append(idx, ep.Index)
		}
		var lp ListenerPorts
		lp.TCP, lp.UDP = m.RoutePorts(idx)
		per[n.Bridge] = lp
	}
	return all, per
}

// logFailures logs each rule that got no listener once, when it first
// fails (the failure is in status and denials for as long as it lasts).
func (p *Plugin) logFailures(m *model.Model) {
	p.failMu.Lock()
	defer p.failMu.Unlock()
	now := map[string]bool{}
	for idx, fs := range m.Failures {
		for _, f := range fs {
			line := fmt.Sprintf("%d %s", idx, f.String())
			now[line] = true
			if p.failSeen[line] {
				continue
			}
			p.log.WithField(FieldIndex, idx).WithField("rule", f.Rule).WithField("reason", string(f.Reason)).
				Warn(f.String())
		}
	}
	p.failSeen = now
}

// enrollment builds the hook enrollment of ep.
func (p *Plugin) enrollment(n *Network, ep *Endpoint) Enrollment {
	e := Enrollment{Index: ep.Index, IP: ep.IP, Gateway: n.Gateway, Subnet: n.Subnet, ICC: n.Config.Settings.ICC}
	now := p.cfg.Now()
	switch policy.State(ep.BypassUntil, ep.LabelError, !ep.Identified(), now) {
	case policy.ReasonBypass:
		e.PassUntil = ep.BypassUntil
	case policy.ReasonPending:
		e.PassUntil = now.Add(p.cfg.PendingPass)
	}
	return e
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// parsePrefixAddr parses Docker's "10.0.0.2/24" form.
func parsePrefixAddr(s string) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !pf.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s is not IPv4 (IPv6 is not supported yet)", s)
	}
	return pf, nil
}
