package plugin

import (
	"errors"
	"slices"

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
	if err := p.refuseSwarmRules(netRef); err != nil {
		return nil, err
	}
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
		// Validate the whole resulting policy before committing: compiled
		// once, through the Compiler against next (its identities go into
		// next, dropped with it when this fails), so that commit takes
		// this base from the cache instead of compiling it again.
		if _, err := p.compiler.base(next, nn, p.lastGeneration()+1); err != nil {
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
