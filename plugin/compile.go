package plugin

import (
	"sync"
	"sync/atomic"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Compiler keeps what one commit compiled for the next, so that a mutation
// compiles only what it changed: a network's base is compiled again only
// when its option rules or settings changed, and patched when only its
// runtime rules did (policy.BaseIndex.Patch: the entries the changed rules
// touch, unless a runtime deny changed); an endpoint's label layer is
// compiled again only when its labels changed or its network's new base
// differs in a part the layer was compiled from (policy.Layered.Rebase: a
// runtime rule that no label touches carries every layer over). An
// endpoint that joins compiles its labels, not the world.
//
// A cached policy is used as it is only when every identity it carries is
// the one st.Identities holds for its pattern (a commit whose write failed
// may have allocated identities that the state kept does not have);
// otherwise it is compiled again (a base is patched: Patch takes every
// identity from st.Identities). Safe for concurrent use.
type Compiler struct {
	mu     sync.Mutex
	bases  map[string]*cachedBase  // by network ID
	layers map[string]*cachedLayer // by endpoint ID
	// baseCompiles and basePatches count the bases compiled and patched
	// (tests).
	baseCompiles, basePatches atomic.Int64
}

type cachedBase struct {
	rules, runtime []policy.EgressRule
	settings       policy.NetworkSettings
	idx            *policy.BaseIndex
}

type cachedLayer struct {
	labels []policy.EgressRule
	lay    *policy.Layered
}

// NewCompiler returns an empty Compiler.
func NewCompiler() *Compiler {
	return &Compiler{bases: map[string]*cachedBase{}, layers: map[string]*cachedLayer{}}
}

// base returns network n's compiled base: from the cache when n's rules
// are those it was compiled from, patched from it when only n's runtime
// rules changed, else compiled.
func (c *Compiler) base(st *State, n *Network, gen uint64) (*policy.BaseIndex, error) {
	if c == nil {
		return policy.CompileBase(policy.CompileInput{Network: n.Config.Rules, Runtime: n.Runtime,
			Settings: n.Config.Settings, Generation: gen}, st.Identities)
	}
	c.mu.Lock()
	b := c.bases[n.ID]
	c.mu.Unlock()
	if b != nil && b.settings.Equal(n.Config.Settings) && policy.EqualRules(b.rules, n.Config.Rules) {
		if policy.EqualRules(b.runtime, n.Runtime) && holds(st.Identities, b.idx.Policy()) {
			return b.idx, nil
		}
		if idx, ok := b.idx.Patch(n.Runtime, gen, st.Identities); ok {
			c.basePatches.Add(1)
			c.keepBase(n, idx)
			return idx, nil
		}
	}
	c.baseCompiles.Add(1)
	idx, err := policy.CompileBase(policy.CompileInput{Network: n.Config.Rules, Runtime: n.Runtime,
		Settings: n.Config.Settings, Generation: gen}, st.Identities)
	if err != nil {
		return nil, err
	}
	c.keepBase(n, idx)
	return idx, nil
}

// keepBase caches idx as network n's base, compiled from n's rules.
func (c *Compiler) keepBase(n *Network, idx *policy.BaseIndex) {
	c.mu.Lock()
	c.bases[n.ID] = &cachedBase{rules: n.Config.Rules, runtime: n.Runtime, settings: n.Config.Settings, idx: idx}
	c.mu.Unlock()
}

// layer returns endpoint ep's label rules layered over base, from the
// cache when its labels did not change and the layer is the one Layer
// would compile on base (the same base, or one Rebase carries it to).
func (c *Compiler) layer(st *State, ep *Endpoint, base *policy.BaseIndex, gen uint64) (*policy.Policy, error) {
	if c != nil {
		c.mu.Lock()
		l := c.layers[ep.ID]
		c.mu.Unlock()
		if l != nil && policy.EqualRules(l.labels, ep.LabelRules) && holds(st.Identities, l.lay.Policy) {
			if lay, ok := l.lay.Rebase(base, gen); ok {
				if lay != l.lay {
					c.mu.Lock()
					c.layers[ep.ID] = &cachedLayer{labels: ep.LabelRules, lay: lay}
					c.mu.Unlock()
				}
				return lay.Policy, nil
			}
		}
	}
	lay, err := policy.LayerTracked(base, ep.LabelRules, gen, st.Identities)
	if err != nil {
		return nil, err
	}
	if c != nil {
		c.mu.Lock()
		c.layers[ep.ID] = &cachedLayer{labels: ep.LabelRules, lay: lay}
		c.mu.Unlock()
	}
	return lay.Policy, nil
}

// forget drops what st no longer has (networks and endpoints gone).
func (c *Compiler) forget(st *State) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.bases {
		if st.Networks[id] == nil {
			delete(c.bases, id)
		}
	}
	for id := range c.layers {
		if st.Endpoints[id] == nil {
			delete(c.layers, id)
		}
	}
}

// holds reports whether every identity of pol's own entries is the one
// ids has for its pattern.
func holds(ids *policy.IdentityTable, pol *policy.Policy) bool {
	for i := range pol.Allows {
		a := &pol.Allows[i]
		if id, ok := ids.Lookup(a.Pattern); !ok || id != a.Identity {
			return false
		}
	}
	return true
}
