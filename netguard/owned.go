package netguard

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Owned lists what still exists for one network, each entry a short
// human-readable description (for logs and tests).
type Owned struct {
	// Links: the bridge and the links attached to it or named by one of its
	// endpoint guards ("bridge NAME", "veth NAME").
	Links []string
	// Chains: "FAMILY TABLE CHAIN" of every chain named for the network or
	// holding a rule whose comment names it.
	Chains []string
	// Sets: "bridge clawker_fw ports_BR" and every set element naming a port.
	Sets []string
	// Rules: rules in other tables (DOCKER-USER) whose comment names it.
	Rules []string
}

// Empty reports whether nothing is left.
func (o Owned) Empty() bool {
	return len(o.Links)+len(o.Chains)+len(o.Sets)+len(o.Rules) == 0
}

func (o Owned) String() string {
	var parts []string
	for _, l := range [][]string{o.Links, o.Chains, o.Sets, o.Rules} {
		parts = append(parts, l...)
	}
	return strings.Join(parts, "; ")
}

// ListOwned returns every link, nftables chain, set and rule that references
// the network whose bridge is bridge. After DeleteNetwork the plugin expects
// it to be empty.
func (h *Handle) ListOwned(bridge string) (Owned, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o, _, err := h.listOwned(bridge)
	return o, err
}

// ownedRefs is what Cleanup needs to remove.
type ownedRefs struct {
	veths  map[string]bool // endpoints (host veths) of the network
	bridge bool
}

func (h *Handle) listOwned(bridge string) (Owned, ownedRefs, error) {
	var o Owned
	refs := ownedRefs{veths: map[string]bool{}}
	c, st, err := h.state()
	if err != nil {
		return o, refs, err
	}
	named := map[string]bool{
		"inet/" + inChain(bridge): true, "inet/" + fwdChain(bridge): true, "inet/" + natChain(bridge): true,
		"bridge/" + fwdChain(bridge): true,
	}
	check := func(fam string, ch *nftables.Chain) error {
		desc := fam + " " + TableName + " " + ch.Name
		if named[fam+"/"+ch.Name] {
			o.Chains = append(o.Chains, desc)
			return nil
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return fmt.Errorf("list rules of %s: %w", desc, err)
		}
		for _, r := range rules {
			if br, veth, ok := parseComment(r.UserData); ok && br == bridge {
				o.Chains = append(o.Chains, desc)
				if veth != "" {
					refs.veths[veth] = true
				}
				break
			}
		}
		return nil
	}
	for _, ch := range st.inet {
		if err := check("inet", ch); err != nil {
			return o, refs, err
		}
	}
	for _, ch := range st.bridge {
		if err := check("bridge", ch); err != nil {
			return o, refs, err
		}
	}
	for _, s := range st.sets {
		if s.Name != portsSet(bridge) {
			continue
		}
		o.Sets = append(o.Sets, "bridge "+TableName+" "+s.Name)
		elems, err := c.GetSetElements(s)
		if err != nil {
			return o, refs, fmt.Errorf("list set %s: %w", s.Name, err)
		}
		for _, el := range elems {
			v := ifnameString(el.Key)
			o.Sets = append(o.Sets, "bridge "+TableName+" "+s.Name+" element "+v)
			refs.veths[v] = true
		}
	}

	for _, s := range st.inetSets {
		switch s.Name {
		case lTCPSet(bridge), lUDPSet(bridge):
			o.Sets = append(o.Sets, "inet "+TableName+" "+s.Name)
		case bridgesSet:
			elems, err := c.GetSetElements(s)
			if err != nil {
				return o, refs, fmt.Errorf("list set %s: %w", s.Name, err)
			}
			for _, el := range elems {
				if ifnameString(el.Key) == bridge {
					o.Sets = append(o.Sets, "inet "+TableName+" "+s.Name+" element "+bridge)
				}
			}
		}
	}

	// DOCKER-USER rules naming the network.
	_, rules, err := dockerUserRules(c, bridge)
	if err != nil {
		return o, refs, err
	}
	for _, r := range rules {
		o.Rules = append(o.Rules, fmt.Sprintf("ip %s %s handle %d", dockerTable, dockerChain, r.Handle))
	}

	// Links: the bridge, its ports, and the veths its guards name.
	var notFound netlink.LinkNotFoundError
	brl, err := h.nl.LinkByName(bridge)
	switch {
	case err == nil:
		refs.bridge = true
		o.Links = append(o.Links, brl.Type()+" "+bridge)
		links, err := h.nl.LinkList()
		if err != nil {
			return o, refs, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == brl.Attrs().Index {
				refs.veths[l.Attrs().Name] = true
			}
		}
	case !errors.As(err, &notFound):
		return o, refs, fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	for v := range refs.veths {
		l, err := h.nl.LinkByName(v)
		if err == nil {
			o.Links = append(o.Links, l.Type()+" "+v)
		}
	}
	return o, refs, nil
}

// Cleanup removes everything ListOwned(bridge) reports: the guards of the
// network's endpoints, the network guard, the DOCKER-USER accept, the host
// veths of its endpoints, and the bridge. It is what DeleteNetwork calls, and
// what the plugin runs for networks it finds at start-up that no longer exist.
func (h *Handle) Cleanup(bridge string) error {
	if err := checkIfName(bridge); err != nil {
		return err
	}
	h.mu.Lock()
	_, refs, err := h.listOwned(bridge)
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", bridge, err)
	}
	// Links first, so that no port is left without its guard for a moment.
	for v := range refs.veths {
		if err := h.DeleteVeth(v); err != nil {
			return fmt.Errorf("cleanup %s: %w", bridge, err)
		}
	}
	if len(refs.veths) > 0 {
		h.mu.Lock()
		c, err := h.nft()
		if err == nil {
			del := map[string]string{}
			for v := range refs.veths {
				del[v] = ""
			}
			err = unguardEndpoints(c, del)
		}
		h.mu.Unlock()
		if err != nil {
			return fmt.Errorf("cleanup %s: %w", bridge, err)
		}
	}
	if err := h.UnguardNetwork(bridge); err != nil {
		return fmt.Errorf("cleanup %s: %w", bridge, err)
	}
	if err := h.DeleteBridge(bridge); err != nil {
		return fmt.Errorf("cleanup %s: %w", bridge, err)
	}
	return nil
}

// Networks returns the bridges that the plugin's nftables state names (a
// network guard, a ports set or an endpoint guard), sorted. At start-up the
// plugin compares it with its persisted networks and runs Cleanup for the
// ones it no longer has.
func (h *Handle) Networks() ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, st, err := h.state()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, ch := range st.inet {
		for _, p := range []string{"in_", "fwd_", "nat_"} {
			if br, ok := strings.CutPrefix(ch.Name, p); ok {
				seen[br] = true
			}
		}
	}
	for _, s := range st.sets {
		if br, ok := strings.CutPrefix(s.Name, "ports_"); ok {
			seen[br] = true
		}
	}
	for _, s := range st.inetSets {
		for _, p := range []string{"ltcp_", "ludp_"} {
			if br, ok := strings.CutPrefix(s.Name, p); ok {
				seen[br] = true
			}
		}
	}
	for _, ch := range st.bridge {
		if br, ok := strings.CutPrefix(ch.Name, "fwd_"); ok {
			seen[br] = true
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			if br, _, ok := parseComment(r.UserData); ok {
				seen[br] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for br := range seen {
		out = append(out, br)
	}
	sort.Strings(out)
	return out, nil
}

// Missing returns what of the guard of network n, and of the endpoint guards
// of its host veths, is no longer installed: "FAMILY TABLE CHAIN", the ports
// set or one of its elements, or the DOCKER-USER accept (ICC on, chain
// present). Something else on the host removed it (a firewall reload that
// flushes the ruleset, say); GuardNetwork and GuardEndpoint put it back.
// Veths that no longer exist are skipped: their endpoint is gone.
func (h *Handle) Missing(n Network, veths []string) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, st, err := h.state()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, ch := range st.inet {
		have["inet "+TableName+" "+ch.Name] = true
	}
	for _, ch := range st.bridge {
		have["bridge "+TableName+" "+ch.Name] = true
	}
	br := n.Bridge
	want := []string{
		"inet " + TableName + " " + inChain(br), "inet " + TableName + " " + fwdChain(br),
		"inet " + TableName + " " + natChain(br), "bridge " + TableName + " " + fwdChain(br),
		"inet " + TableName + " " + reservedChain,
	}
	var live []string
	for _, v := range veths {
		if _, err := h.nl.LinkByName(v); err == nil {
			live = append(live, v)
			want = append(want, "bridge "+TableName+" "+epChain(v))
		}
	}
	var missing []string
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	if len(live) > 0 {
		setName := "bridge " + TableName + " " + portsSet(br)
		var set *nftables.Set
		for _, s := range st.sets {
			if s.Name == portsSet(br) {
				set = s
			}
		}
		if set == nil {
			missing = append(missing, setName)
		} else {
			elems, err := c.GetSetElements(set)
			if err != nil {
				return nil, fmt.Errorf("list set %s: %w", set.Name, err)
			}
			in := map[string]bool{}
			for _, el := range elems {
				in[ifnameString(el.Key)] = true
			}
			for _, v := range live {
				if !in[v] {
					missing = append(missing, setName+" element "+v)
				}
			}
		}
	}
	if n.ICC {
		ch, rules, err := dockerUserRules(c, br)
		if err != nil {
			return nil, err
		}
		if ch != nil && len(rules) == 0 {
			missing = append(missing, "ip "+dockerTable+" "+dockerChain+" accept for "+br)
		}
	}
	return missing, nil
}
