package plugin

import (
	"context"
	"maps"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Swarm. A driver that reports global data scope (CLAWKER_SCOPE=global) is
// a network allocator for Swarm (moby's remote driver registers it so):
//
//  1. `docker network create -d clawker-fw:latest --scope swarm -o ...` on
//     a manager stores the network in Swarm's raft store; the manager's
//     allocator takes a subnet and gateway from Swarm's IPAM and calls
//     AllocateNetwork with the network's options (the `-o` map, flat);
//  2. what AllocateNetwork returns is stored as the network's DriverState
//     options, and every node that runs a task of the network (or an
//     attachable container) creates it locally with those options, which
//     reach CreateNetwork under com.docker.network.generic as for a local
//     network (moby daemon/cluster/executor/container networkCreateRequest);
//  3. FreeNetwork is called on the manager when the network is removed.
//
// So AllocateNetwork validates the clawker.* options and echoes them: the
// network's rules then travel through Swarm's store, no replication of our
// own. A local-scope driver is never asked (Swarm hands it no options at
// all). Enforcement stays node-local: each node's plugin builds the closed
// network for the endpoints it hosts.

// ScopeGlobal is the data scope of a CLAWKER_SCOPE=global install.
const ScopeGlobal = "global"

// Scope is the data (and connectivity) scope the driver reports.
func (p *Plugin) Scope() string {
	if p.cfg.Scope == ScopeGlobal {
		return ScopeGlobal
	}
	return "local"
}

// AllocateNetwork validates a swarm network's options on the manager and
// returns what every node's CreateNetwork will receive: the options, which
// are validated as CreateNetwork validates a local network's (clawker.*
// only; an invalid one fails the allocation with the option named; Swarm
// then keeps the network unallocated and its tasks pending, and logs the
// error; authz refuses the create before that, with the same message).
// Nothing is stored: the options are the network's whole state.
func (p *Plugin) AllocateNetwork(id string, options map[string]string) (map[string]string, error) {
	cfg, err := policy.ParseNetworkOptions(options, id)
	if err != nil {
		return nil, rejected(ReasonInvalidRule, "%w", err)
	}
	if err := model.CheckLimit(cfg.Rules, model.MaxPortsPerNetwork, "a network"); err != nil {
		return nil, rejected(ReasonPortLimit, "option %w", err)
	}
	p.log.WithField(FieldNetwork, short(id)).WithField("rules", len(cfg.Rules)).Info("swarm network allocated")
	out := make(map[string]string, len(options))
	maps.Copy(out, options)
	return out, nil
}

// NetworkScoper is what Names may also answer: the scope Docker gives a
// network ("local", "swarm", "global").
type NetworkScoper interface {
	NetworkScope(ctx context.Context, id string) (string, error)
}

// refuseSwarmRules refuses runtime rules on a swarm network. A runtime rule
// lives in one node's plugin store, and a swarm network spans nodes: on the
// others the rule would be missing, silently, and Swarm has no object that
// every node reads and the network's rules could ride on (networks cannot
// be updated, configs and secrets reach only the tasks that mount them, a
// worker's API serves no services). The per-service path goes through
// Swarm's own update instead: `docker service update --container-label-add
// clawker.allow=...` replaces each task with the new labels, on every node.
//
// A network is a swarm network when it was created while the driver
// reported global scope, or when Docker says so (a swarm-scope network of
// a local-scope install). It fails closed when Docker cannot answer.
func (p *Plugin) refuseSwarmRules(netRef string) error {
	var id, scope string
	err := p.q.Do(p.ctx, queue.KindRead, func() error {
		if n := p.st.networkByRef(netRef); n != nil {
			id, scope = n.ID, n.Scope
		}
		return nil
	})
	if err != nil || id == "" {
		return err // not found: the mutation says so
	}
	if scope != ScopeGlobal {
		s, ok := p.cfg.Names.(NetworkScoper)
		if !ok {
			return nil
		}
		if v, ok := p.scopes.Load(id); ok {
			scope = v.(string)
		} else {
			ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
			defer cancel()
			if scope, err = s.NetworkScope(ctx, id); err != nil {
				return rejected(ReasonInvalidRequest, "cannot tell whether network %s is a swarm network (Docker: %v); retry", short(id), err)
			}
			// A network's scope never changes: one question per network.
			p.scopes.Store(id, scope)
		}
	}
	if scope == "swarm" || scope == ScopeGlobal {
		return rejected(ReasonInvalidRequest, "network %s is a swarm network: a runtime rule would hold on this node only, so runtime rules are refused there. Give the rule to the service through Swarm, which replaces its tasks on every node: docker service update --container-label-add clawker.allow=RULE SERVICE (or add it to the network's options by recreating the network)", short(id))
	}
	return nil
}
