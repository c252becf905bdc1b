package plugin

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
)

// Names resolves Docker's references for the admin API, through Docker
// itself, so that a network or container is named exactly as the docker CLI
// names it. Implementations must never inspect a container (it blocks while
// the container starts): they list.
type Names interface {
	// Network resolves a network reference as dockerd does (a full id,
	// then an exact name, then a unique id prefix; an ambiguous name or
	// prefix is an error). found is false when nothing matches.
	Network(ctx context.Context, ref string) (id, name string, found bool, err error)
	// Container resolves a container reference as dockerd does (a full id,
	// then an exact name, then a unique id prefix), in any state.
	Container(ctx context.Context, ref string) (id string, found bool, err error)
	// NetworkNames returns every network's name by id.
	NetworkNames(ctx context.Context) (map[string]string, error)
}

// networkNames caches the Docker names of the plugin's networks (a network
// cannot be renamed). Docker tells a driver only ids, so names are learned:
// from the container list at identification, from resolving references,
// and from Docker's network list when a name is missing.
type networkNames struct {
	mu      sync.Mutex
	byID    map[string]string
	askedAt time.Time // the last background list
	asking  bool
	// listedAt is the last list made for the admin API.
	listedAt time.Time
}

// namesEvery is how often a missing name may send the plugin to Docker's
// network list.
const namesEvery = 5 * time.Second

// learnNetworkName records a network's name.
func (p *Plugin) learnNetworkName(id, name string) {
	if id == "" || name == "" {
		return
	}
	p.names.mu.Lock()
	defer p.names.mu.Unlock()
	if p.names.byID == nil {
		p.names.byID = map[string]string{}
	}
	p.names.byID[id] = name
}

// knownNetworkName is a network's Docker name as far as the plugin has
// learned it, "" when not (never asks Docker).
func (p *Plugin) knownNetworkName(id string) string {
	p.names.mu.Lock()
	defer p.names.mu.Unlock()
	return p.names.byID[id]
}

// NetworkName returns a network's Docker name, "" while it is unknown. A
// missing name is asked from Docker in the background, at most once per
// namesEvery (never on the caller's path: denials are recorded on the data
// planes' paths).
func (p *Plugin) NetworkName(id string) string {
	p.names.mu.Lock()
	name, ok := p.names.byID[id]
	ask := !ok && p.cfg.Names != nil && !p.names.asking && time.Since(p.names.askedAt) > namesEvery
	if ask {
		p.names.asking, p.names.askedAt = true, time.Now()
	}
	p.names.mu.Unlock()
	if ask {
		go func() {
			ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
			defer cancel()
			p.loadNetworkNames(ctx)
			p.names.mu.Lock()
			p.names.asking = false
			p.names.mu.Unlock()
		}()
	}
	return name
}

// networkRef is how texts name a network: its name, else its short id (both
// resolve in the CLI).
func (p *Plugin) networkRef(id string) string {
	if name := p.NetworkName(id); name != "" {
		return name
	}
	return short(id)
}

// loadNetworkNames reads every network's name from Docker.
func (p *Plugin) loadNetworkNames(ctx context.Context) {
	if p.cfg.Names == nil {
		return
	}
	names, err := p.cfg.Names.NetworkNames(ctx)
	if err != nil {
		p.log.WithError(err).Debug("list Docker's networks for their names")
		return
	}
	for id, name := range names {
		p.learnNetworkName(id, name)
	}
}

// namesMissing reports whether a network of the store has no known name.
func (p *Plugin) namesMissing() bool {
	snap := p.Snapshot()
	p.names.mu.Lock()
	defer p.names.mu.Unlock()
	for id := range snap.Networks {
		if _, ok := p.names.byID[id]; !ok {
			return true
		}
	}
	return false
}

// ensureNetworkNames asks Docker for the names when one of the plugin's
// networks has none (the admin API's answers show names; operators call it
// at their own pace).
func (p *Plugin) ensureNetworkNames(ctx context.Context) {
	if !p.namesMissing() {
		return
	}
	// A network Docker no longer lists (removed while the plugin was down)
	// stays nameless: status polled in a loop must not list Docker's
	// networks on every call.
	p.names.mu.Lock()
	recent := time.Since(p.names.listedAt) < namesAdminEvery
	if !recent {
		p.names.listedAt = time.Now()
	}
	p.names.mu.Unlock()
	if !recent {
		p.loadNetworkNames(ctx)
	}
}

// namesAdminEvery is how often the admin API may list Docker's networks for
// a missing name.
const namesAdminEvery = time.Second

// ResolveNetwork resolves a network reference to the id of one of the
// plugin's networks, as Docker resolves it (Names.Network: a full id, an
// exact name, a unique id prefix among all of Docker's networks). A network
// Docker knows that is not the plugin's is NETWORK_NOT_FOUND. When Docker
// cannot be asked, or finds nothing, the plugin's own store answers: a full
// id, a learned name, a unique id prefix, the bridge name.
func (p *Plugin) ResolveNetwork(ctx context.Context, ref string) (string, error) {
	snap := p.Snapshot()
	if _, ok := snap.Networks[ref]; ok {
		return ref, nil
	}
	if p.cfg.Names != nil {
		id, name, found, err := p.cfg.Names.Network(ctx, ref)
		switch {
		case err == nil && found:
			if _, ok := snap.Networks[id]; !ok {
				return "", rejected(ReasonNetworkNotFound, "network %q (%s) is not a clawker-fw network", ref, short(id))
			}
			p.learnNetworkName(id, name)
			return id, nil
		case err != nil && !errors.As(err, new(errUnavailable)):
			return "", rejected(ReasonNetworkNotFound, "network %q: %v", ref, err)
		case err != nil:
			p.log.WithError(err).Warn("resolve a network through Docker failed; using the plugin's own store")
		}
	}
	var id string
	err := p.q.Do(p.ctx, queue.KindRead, func() error {
		if n := p.st.networkByName(ref, p.knownNames()); n != nil {
			id = n.ID
			return nil
		}
		return rejected(ReasonNetworkNotFound, "network %q is not a clawker-fw network (`docker network ls` lists networks by name and id)", ref)
	})
	return id, err
}

// knownNames returns a copy of the learned names.
func (p *Plugin) knownNames() map[string]string {
	p.names.mu.Lock()
	defer p.names.mu.Unlock()
	out := make(map[string]string, len(p.names.byID))
	for id, n := range p.names.byID {
		out[id] = n
	}
	return out
}

// networkByName is the store's own answer to a network reference: a full
// id, a learned name, then a unique id prefix or bridge name (networkByRef).
func (st *State) networkByName(ref string, names map[string]string) *Network {
	if n, ok := st.Networks[ref]; ok {
		return n
	}
	var found *Network
	for id, n := range st.Networks {
		if names[id] == ref {
			if found != nil {
				return nil // ambiguous
			}
			found = n
		}
	}
	if found != nil {
		return found
	}
	return st.networkByRef(ref)
}

// ResolveContainer resolves a container reference to a container id as
// Docker resolves it (Names.Container); when Docker cannot be asked, or
// does not know it, the plugin's endpoints answer (a full id, a name, an id
// prefix of at least 12 characters). found is false when neither knows it.
func (p *Plugin) ResolveContainer(ctx context.Context, ref string) (id string, found bool) {
	if p.cfg.Names != nil {
		id, found, err := p.cfg.Names.Container(ctx, ref)
		if err == nil && found {
			return id, true
		}
		if err != nil {
			p.log.WithError(err).Warn("resolve a container through Docker failed; using the plugin's own endpoints")
		}
	}
	_ = p.q.Do(p.ctx, queue.KindRead, func() error {
		if ep := p.st.endpointByContainer(ref); ep != nil {
			id, found = ep.ContainerID, true
		}
		return nil
	})
	return id, found
}

// errUnavailable marks a Names error that says Docker could not be asked
// (as opposed to an answer such as "ambiguous").
type errUnavailable struct{ err error }

func (e errUnavailable) Error() string { return e.err.Error() }
func (e errUnavailable) Unwrap() error { return e.err }

// Unavailable wraps an error of a Names implementation that could not ask
// Docker at all: the plugin then answers from its own store.
func Unavailable(err error) error { return errUnavailable{err} }
