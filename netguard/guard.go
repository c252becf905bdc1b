package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the name of the plugin's nftables tables (one inet, one
// bridge).
const TableName = "clawker_fw"

// Chain priorities. Filter chains run just ahead of iptables-nft's (0) and of
// the bridge family's filter priority; the nat chain runs ahead of Docker's
// DNAT (-100) so that our redirect is the one that binds.
const (
	prioFilter       = -10
	prioNAT          = -110
	prioBridgeFilter = -200
)

// Docker's user chain (iptables-nft) in which the ICC accept goes.
const (
	dockerTable = "filter"
	dockerChain = "DOCKER-USER"
)

// Network describes the closed network of one clawker-fw network.
type Network struct {
	// Bridge is the name of the network's bridge.
	Bridge string
	// Subnet is the network's IPv4 subnet; Gateway is the bridge's address in it.
	Subnet  netip.Prefix
	Gateway netip.Addr
	// ICC allows traffic between endpoints of the network.
	ICC bool
	// DNSPort receives the redirected DNS (udp and tcp port 53 to any address)
	// and is reachable on the gateway (udp, tcp).
	DNSPort uint16
	// TransparentPort receives TCP to anything outside the subnet; it is
	// reachable only by redirected flows (ct status dnat).
	TransparentPort uint16
	// CAPort, when not zero, is reachable on the gateway over TCP (the CA
	// listener, to which the hooks steer gateway:80).
	CAPort uint16
	// The allocated listener ports reachable on the gateway are not part of
	// Network: they change with every rule, and SetListenerPorts sets them
	// (the Handle remembers them, so GuardNetwork restores them too).
}

// Ports are listener ports by transport.
type Ports struct {
	TCP, UDP []uint16
}

func (n Network) validate() error {
	if err := checkIfName(n.Bridge); err != nil {
		return err
	}
	switch {
	case !n.Subnet.IsValid() || !n.Subnet.Addr().Is4():
		return fmt.Errorf("network %s: subnet %v is not an IPv4 prefix", n.Bridge, n.Subnet)
	case n.Subnet.Masked() != n.Subnet:
		return fmt.Errorf("network %s: subnet %v has host bits set", n.Bridge, n.Subnet)
	case !n.Gateway.Is4() || !n.Subnet.Contains(n.Gateway):
		return fmt.Errorf("network %s: gateway %v is not in subnet %v", n.Bridge, n.Gateway, n.Subnet)
	case n.DNSPort == 0 || n.TransparentPort == 0:
		return fmt.Errorf("network %s: DNS port and transparent port must be set", n.Bridge)
	}
	return nil
}

// Endpoint describes one endpoint: its host-side veth on Bridge and the only
// addresses its frames may carry.
type Endpoint struct {
	Bridge, HostVeth string
	IP               netip.Addr
	MAC              net.HardwareAddr
}

func (e Endpoint) validate() error {
	if err := checkIfName(e.Bridge); err != nil {
		return err
	}
	if err := checkIfName(e.HostVeth); err != nil {
		return err
	}
	if !e.IP.Is4() {
		return fmt.Errorf("endpoint %s: IP %v is not IPv4", e.HostVeth, e.IP)
	}
	if len(e.MAC) != 6 || e.MAC[0]&1 != 0 {
		return fmt.Errorf("endpoint %s: MAC %q is not a unicast Ethernet address", e.HostVeth, e.MAC)
	}
	return nil
}

func inetTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

func bridgeTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
}

// Chain and set names, per network bridge BR and per host veth V; and the
// plugin-wide input chain and sets of the listener guard.
const (
	reservedChain = "listeners"
	bridgesSet    = "bridges"
	boundTCPSet   = "bound_tcp"
	boundUDPSet   = "bound_udp"
)

func inChain(br string) string   { return "in_" + br }
func lTCPSet(br string) string   { return "ltcp_" + br }
func lUDPSet(br string) string   { return "ludp_" + br }
func fwdChain(br string) string  { return "fwd_" + br }
func natChain(br string) string  { return "nat_" + br }
func portsSet(br string) string  { return "ports_" + br }
func epChain(veth string) string { return "ep_" + veth }

func netComment(br string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "clawker-fw net="+br)
}

func epComment(br, veth string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "clawker-fw net="+br+" ep="+veth)
}

// parseComment returns the network and endpoint a rule's comment names, and
// whether it is one of ours.
func parseComment(ud []byte) (br, veth string, ok bool) {
	s, found := userdata.GetString(ud, userdata.TypeComment)
	if !found {
		return "", "", false
	}
	fields := strings.Fields(s)
	if len(fields) < 2 || fields[0] != "clawker-fw" {
		return "", "", false
	}
	for _, f := range fields[1:] {
		if v, ok := strings.CutPrefix(f, "net="); ok {
			br = v
		} else if v, ok := strings.CutPrefix(f, "ep="); ok {
			veth = v
		}
	}
	return br, veth, br != ""
}

func baseChain(t *nftables.Table, name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: name, Table: t, Type: typ, Hooknum: hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)), Policy: &accept,
	}
}

// setIDs gives sets created in a batch IDs of our own (the library's default
// allocator is a package global without locking).
var setIDs atomic.Uint32

func newPortsSet(br string) *nftables.Set {
	return &nftables.Set{
		Table: bridgeTable(), Name: portsSet(br), ID: setIDs.Add(1) + 1<<20,
		KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian,
	}
}

func newServiceSet(name string) *nftables.Set {
	return &nftables.Set{Table: inetTable(), Name: name, ID: setIDs.Add(1) + 1<<20, KeyType: nftables.TypeInetService}
}

func portElems(ports []uint16) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ports))
	seen := map[uint16]bool{}
	for _, p := range ports {
		if !seen[p] {
			seen[p] = true
			out = append(out, nftables.SetElement{Key: be16(p)})
		}
	}
	return out
}

// fillPortSet adds set (idempotent), empties it and fills it with ports, in
// c's batch.
func fillPortSet(c *nftables.Conn, set *nftables.Set, ports []uint16) error {
	if err := c.AddSet(set, nil); err != nil {
		return fmt.Errorf("add set %s: %w", set.Name, err)
	}
	c.FlushSet(set)
	if elems := portElems(ports); len(elems) > 0 {
		if err := c.SetAddElements(set, elems); err != nil {
			return fmt.Errorf("fill set %s: %w", set.Name, err)
		}
	}
	return nil
}

// guardListeners installs (or replaces) the plugin-wide input chain that
// keeps the plugin's listener ports (set bound_tcp, bound_udp) from every
// interface except loopback and the guarded bridges (set bridges), in c's
// batch: the listeners bind every host address, and rp_filter is off on
// the hosts this runs on, so a packet spoofing an endpoint's address from
// any other interface would otherwise be taken for that endpoint's. Called
// with h.mu held.
func (h *Handle) guardListeners(c *nftables.Conn) (*nftables.Set, error) {
	inet := c.AddTable(inetTable())
	bridges := &nftables.Set{Table: inetTable(), Name: bridgesSet, ID: setIDs.Add(1) + 1<<20, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(bridges, nil); err != nil {
		return nil, fmt.Errorf("add set %s: %w", bridges.Name, err)
	}
	btcp, budp := newServiceSet(boundTCPSet), newServiceSet(boundUDPSet)
	if err := fillPortSet(c, btcp, h.bound.TCP); err != nil {
		return nil, err
	}
	if err := fillPortSet(c, budp, h.bound.UDP); err != nil {
		return nil, err
	}
	ch := c.AddChain(baseChain(inet, reservedChain, nftables.ChainTypeFilter, nftables.ChainHookInput, prioFilter))
	c.FlushChain(ch)
	ud := userdata.AppendString(nil, userdata.TypeComment, "clawker-fw listeners")
	add := func(exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: inet, Chain: ch, Exprs: cat(exprs...), UserData: ud})
	}
	add(iif("lo"), accept())
	add(inSet(expr.MetaKeyIIFNAME, bridges), accept())
	add(l4(unix.IPPROTO_TCP), dportIn(btcp), drop())
	add(l4(unix.IPPROTO_UDP), dportIn(budp), drop())
	return bridges, nil
}

// SetListenerPorts records which ports the plugin's listeners are bound to
// (bound: reachable from loopback and the guarded bridges only) and which of
// them each network may reach on its gateway (perBridge, by bridge name),
// and updates the guard of every guarded network in one transaction. The
// Handle remembers them: GuardNetwork installs them too. A bridge missing
// from perBridge reaches no allocated listener.
func (h *Handle) SetListenerPorts(bound Ports, perBridge map[string]Ports) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bound = bound
	h.perBr = make(map[string]Ports, len(perBridge))
	for br, p := range perBridge {
		h.perBr[br] = p
	}
	c, st, err := h.state()
	if err != nil {
		return err
	}
	if !st.inetExists {
		return nil // nothing guarded yet: GuardNetwork installs them
	}
	if err := fillPortSet(c, newServiceSet(boundTCPSet), bound.TCP); err != nil {
		return err
	}
	if err := fillPortSet(c, newServiceSet(boundUDPSet), bound.UDP); err != nil {
		return err
	}
	for _, ch := range st.inet {
		br, ok := strings.CutPrefix(ch.Name, "in_")
		if !ok {
			continue
		}
		p := h.perBr[br]
		if err := fillPortSet(c, newServiceSet(lTCPSet(br)), p.TCP); err != nil {
			return err
		}
		if err := fillPortSet(c, newServiceSet(lUDPSet(br)), p.UDP); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("set listener ports: %w", err)
	}
	return nil
}

// GuardNetwork installs (or replaces, atomically) the closed network of n:
// see the package documentation for the rules. It is idempotent. With ICC on
// it also accepts bridged traffic of n.Bridge in Docker's DOCKER-USER chain
// when that chain exists in table ip filter; if there is no such chain
// (iptables-legacy, or no Docker) that step is skipped.
func (h *Handle) GuardNetwork(n Network) error {
	if err := n.validate(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c, err := h.nft()
	if err != nil {
		return err
	}
	br := n.Bridge
	ud := netComment(br)

	inet := c.AddTable(inetTable())
	add := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: cat(exprs...), UserData: ud})
	}

	// The plugin-wide listener guard, and this bridge in its set.
	bridges, err := h.guardListeners(c)
	if err != nil {
		return err
	}
	if err := c.SetAddElements(bridges, []nftables.SetElement{{Key: ifname(br)}}); err != nil {
		return fmt.Errorf("add %s to set %s: %w", br, bridgesSet, err)
	}
	ltcp, ludp := newServiceSet(lTCPSet(br)), newServiceSet(lUDPSet(br))
	if err := fillPortSet(c, ltcp, h.perBr[br].TCP); err != nil {
		return err
	}
	if err := fillPortSet(c, ludp, h.perBr[br].UDP); err != nil {
		return err
	}

	// Input: only the gateway's listener ports that this network's routes
	// use (never the rest of the reserved range: a host service there is
	// not the plugin's).
	in := c.AddChain(baseChain(inet, inChain(br), nftables.ChainTypeFilter, nftables.ChainHookInput, prioFilter))
	c.FlushChain(in)
	gw := ipAddr(ipDaddr, expr.CmpOpEq, n.Gateway)
	add(in, iif(br), ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_UDP), dport(n.DNSPort), accept())
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_TCP), dport(n.DNSPort), accept())
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_TCP), dport(n.TransparentPort), ctBits(expr.CtKeySTATUS, ipsDstNAT), accept())
	if n.CAPort != 0 {
		add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_TCP), dport(n.CAPort), accept())
	}
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_TCP), dportIn(ltcp), accept())
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_UDP), dportIn(ludp), accept())
	add(in, iif(br), drop())

	// Forward: nothing in or out, except bridged endpoint-to-endpoint traffic
	// (seen here through br_netfilter) when ICC is on.
	fwd := c.AddChain(baseChain(inet, fwdChain(br), nftables.ChainTypeFilter, nftables.ChainHookForward, prioFilter))
	c.FlushChain(fwd)
	if n.ICC {
		add(fwd, iif(br), oif(br), accept())
	}
	add(fwd, iif(br), drop())
	add(fwd, oif(br), drop())

	// NAT prerouting: carry DNS and outbound TCP to the plugin's listeners.
	nat := c.AddChain(baseChain(inet, natChain(br), nftables.ChainTypeNAT, nftables.ChainHookPrerouting, prioNAT))
	c.FlushChain(nat)
	add(nat, iif(br), ipv4(), l4(unix.IPPROTO_UDP), dport(53), redirectTo(n.DNSPort))
	add(nat, iif(br), ipv4(), l4(unix.IPPROTO_TCP), dport(53), redirectTo(n.DNSPort))
	add(nat, iif(br), ipv4(), ipDaddrOutside(n.Subnet), l4(unix.IPPROTO_TCP), redirectTo(n.TransparentPort))

	// Bridge level: with ICC off nothing is bridged between the network's
	// endpoints. (meta ibrname would name the bridge directly, but needs
	// nft_meta_bridge, which kernels may lack; the set of guarded ports does
	// not.)
	brt := c.AddTable(bridgeTable())
	set := newPortsSet(br)
	if err := c.AddSet(set, nil); err != nil {
		return fmt.Errorf("add set %s: %w", set.Name, err)
	}
	bfwd := c.AddChain(baseChain(brt, fwdChain(br), nftables.ChainTypeFilter, nftables.ChainHookForward, prioBridgeFilter))
	c.FlushChain(bfwd)
	if !n.ICC {
		add(bfwd, inSet(expr.MetaKeyIIFNAME, set), drop())
		add(bfwd, inSet(expr.MetaKeyOIFNAME, set), drop())
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("guard network %s: %w", br, err)
	}
	return h.syncDockerUser(c, br, n.ICC)
}

// syncDockerUser removes our accept for br from DOCKER-USER and, when icc,
// inserts it again at the top. A missing chain is the skip path.
func (h *Handle) syncDockerUser(c *nftables.Conn, br string, icc bool) error {
	ch, rules, err := dockerUserRules(c, br)
	if err != nil || ch == nil {
		return err
	}
	for _, r := range rules {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("delete %s rule: %w", dockerChain, err)
		}
	}
	if icc {
		c.InsertRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: cat(iif(br), oif(br), accept()), UserData: netComment(br)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("update %s for %s: %w", dockerChain, br, err)
	}
	return nil
}

// dockerUserRules returns chain DOCKER-USER of table ip filter and its rules
// whose comment names bridge; the chain is nil when it does not exist (no
// Docker, or iptables-legacy), which is not an error.
func dockerUserRules(c *nftables.Conn, bridge string) (*nftables.Chain, []*nftables.Rule, error) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: dockerTable}
	ch, err := c.ListChain(t, dockerChain)
	if err != nil {
		return nil, nil, nil
	}
	ch.Table = t
	rules, err := c.GetRules(t, ch)
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", dockerChain, err)
	}
	var mine []*nftables.Rule
	for _, r := range rules {
		if br, _, ok := parseComment(r.UserData); ok && br == bridge {
			mine = append(mine, r)
		}
	}
	return ch, mine, nil
}

// state returns a connection and what the plugin's tables hold. Callers
// hold h.mu.
func (h *Handle) state() (*nftables.Conn, nftState, error) {
	c, err := h.nft()
	if err != nil {
		return nil, nftState{}, err
	}
	st, err := listState(c)
	return c, st, err
}

// UnguardNetwork removes the network rules of bridge (and its DOCKER-USER
// accept). Endpoint guards are removed by UnguardEndpoint (or Cleanup). The
// plugin's tables are deleted once they hold nothing. Missing rules are not
// an error.
func (h *Handle) UnguardNetwork(bridge string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, st, err := h.state()
	if err != nil {
		return err
	}
	for _, ch := range st.inet {
		switch ch.Name {
		case inChain(bridge), fwdChain(bridge), natChain(bridge):
			c.DelChain(ch)
		}
	}
	for _, ch := range st.bridge {
		switch ch.Name {
		case fwdChain(bridge):
			c.DelChain(ch)
		}
	}
	for _, s := range st.sets {
		if s.Name == portsSet(bridge) {
			c.DelSet(s)
		}
	}
	for _, s := range st.inetSets {
		switch s.Name {
		case lTCPSet(bridge), lUDPSet(bridge):
			c.DelSet(s)
		case bridgesSet:
			elems, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("list set %s: %w", s.Name, err)
			}
			for _, el := range elems {
				if ifnameString(el.Key) == bridge {
					if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: el.Key}}); err != nil {
						return fmt.Errorf("remove %s from set %s: %w", bridge, bridgesSet, err)
					}
				}
			}
		}
	}
	delete(h.perBr, bridge)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("unguard network %s: %w", bridge, err)
	}
	if err := h.syncDockerUser(c, bridge, false); err != nil {
		return err
	}
	return deleteEmptyTables(c)
}

// GuardEndpoint installs (or replaces, atomically) the anti-spoofing guard of
// e on its host veth, which must already be a port of e.Bridge: frames from
// it must carry e.MAC as Ethernet source, IPv4 must carry e.IP as source, ARP
// must carry e.IP and e.MAC as sender, and every other ethertype is dropped.
// It also marks the port as guarded for the network's blanket drop of
// unguarded ports. Call it before Join returns.
func (h *Handle) GuardEndpoint(e Endpoint) error {
	if err := e.validate(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()

	link, err := h.nl.LinkByName(e.HostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", e.HostVeth, err)
	}
	brl, err := h.nl.LinkByName(e.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", e.Bridge, err)
	}
	if link.Attrs().MasterIndex != brl.Attrs().Index {
		return fmt.Errorf("guard endpoint %s: not a port of bridge %s", e.HostVeth, e.Bridge)
	}

	c, err := h.nft()
	if err != nil {
		return err
	}
	ud := epComment(e.Bridge, e.HostVeth)
	brt := c.AddTable(bridgeTable())
	ch := c.AddChain(baseChain(brt, epChain(e.HostVeth), nftables.ChainTypeFilter, nftables.ChainHookPrerouting, prioBridgeFilter))
	c.FlushChain(ch)
	add := func(exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: brt, Chain: ch, Exprs: cat(exprs...), UserData: ud})
	}
	port := iif(e.HostVeth)
	ip4 := e.IP.As4()
	mac := []byte(e.MAC)
	add(port, llBytes(6, expr.CmpOpNeq, mac), drop())
	add(port, etherType(expr.CmpOpEq, etherTypeIPv4), nhBytes(ipSaddr, expr.CmpOpNeq, ip4[:]), drop())
	// ARP for IPv4 over Ethernet: hlen 6 and plen 4 (the kernel drops other
	// lengths anyway), sender hardware address at 8, sender IP at 14.
	add(port, etherType(expr.CmpOpEq, etherTypeARP), nhBytes(4, expr.CmpOpNeq, []byte{6, 4}), drop())
	add(port, etherType(expr.CmpOpEq, etherTypeARP), nhBytes(8, expr.CmpOpNeq, mac), drop())
	add(port, etherType(expr.CmpOpEq, etherTypeARP), nhBytes(14, expr.CmpOpNeq, ip4[:]), drop())
	add(port, etherType(expr.CmpOpNeq, etherTypeIPv4), etherType(expr.CmpOpNeq, etherTypeARP), drop())

	set := newPortsSet(e.Bridge)
	if err := c.AddSet(set, nil); err != nil {
		return fmt.Errorf("add set %s: %w", set.Name, err)
	}
	if err := c.SetAddElements(set, []nftables.SetElement{{Key: ifname(e.HostVeth)}}); err != nil {
		return fmt.Errorf("add %s to set %s: %w", e.HostVeth, set.Name, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("guard endpoint %s: %w", e.HostVeth, err)
	}
	return nil
}

// UnguardEndpoint removes the guard of the endpoint whose host veth is
// hostVeth. While that veth still exists and is a bridge port, its chain is
// not removed but reset to drop every frame (as after CreateVeth), in the same
// transaction; DeleteVeth removes it. Missing rules are not an error.
func (h *Handle) UnguardEndpoint(hostVeth string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	pending := ""
	if link, err := h.nl.LinkByName(hostVeth); err == nil && link.Attrs().MasterIndex > 0 {
		if br, err := h.nl.LinkByIndex(link.Attrs().MasterIndex); err == nil {
			pending = br.Attrs().Name
		}
	}
	c, err := h.nft()
	if err != nil {
		return err
	}
	if err := unguardEndpoints(c, map[string]string{hostVeth: pending}); err != nil {
		return err
	}
	return deleteEmptyTables(c)
}

// addPending makes (or resets) the chain of hostVeth drop every frame from
// it, in c's batch.
func addPending(c *nftables.Conn, bridge, hostVeth string) {
	brt := c.AddTable(bridgeTable())
	ch := c.AddChain(baseChain(brt, epChain(hostVeth), nftables.ChainTypeFilter, nftables.ChainHookPrerouting, prioBridgeFilter))
	c.FlushChain(ch)
	c.AddRule(&nftables.Rule{Table: brt, Chain: ch, Exprs: cat(iif(hostVeth), drop()), UserData: epComment(bridge, hostVeth)})
}

// unguardEndpoints removes the given host veths from every ports set and
// either deletes their chains (value "") or resets them to drop everything
// as pending ports of the bridge named by the value, in one transaction.
func unguardEndpoints(c *nftables.Conn, veths map[string]string) error {
	st, err := listState(c)
	if err != nil {
		return err
	}
	for _, s := range st.sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("list set %s: %w", s.Name, err)
		}
		var del []nftables.SetElement
		for _, el := range elems {
			if _, ok := veths[ifnameString(el.Key)]; ok {
				del = append(del, nftables.SetElement{Key: el.Key})
			}
		}
		if len(del) > 0 {
			if err := c.SetDeleteElements(s, del); err != nil {
				return fmt.Errorf("remove ports from set %s: %w", s.Name, err)
			}
		}
	}
	for _, ch := range st.bridge {
		v, ok := strings.CutPrefix(ch.Name, "ep_")
		if !ok {
			continue
		}
		if br, ok := veths[v]; ok && br == "" {
			c.DelChain(ch)
		}
	}
	for v, br := range veths {
		if br != "" {
			addPending(c, br, v)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("unguard endpoints: %w", err)
	}
	return nil
}

func ifnameString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// nftState is what the plugin's tables hold.
type nftState struct {
	inet, bridge []*nftables.Chain
	sets         []*nftables.Set // of the bridge table
	inetSets     []*nftables.Set
	inetExists   bool
	bridgeExists bool
}

func listState(c *nftables.Conn) (nftState, error) {
	var st nftState
	tables, err := c.ListTables()
	if err != nil {
		return st, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name != TableName {
			continue
		}
		switch t.Family {
		case nftables.TableFamilyINet:
			st.inetExists = true
		case nftables.TableFamilyBridge:
			st.bridgeExists = true
		}
	}
	if !st.inetExists && !st.bridgeExists {
		return st, nil
	}
	chains, err := c.ListChains()
	if err != nil {
		return st, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		switch ch.Table.Family {
		case nftables.TableFamilyINet:
			st.inet = append(st.inet, ch)
		case nftables.TableFamilyBridge:
			st.bridge = append(st.bridge, ch)
		}
	}
	if st.inetExists {
		sets, err := c.GetSets(inetTable())
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return st, fmt.Errorf("list nftables sets: %w", err)
		}
		st.inetSets = sets
	}
	if st.bridgeExists {
		sets, err := c.GetSets(bridgeTable())
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return st, fmt.Errorf("list nftables sets: %w", err)
		}
		st.sets = sets
	}
	return st, nil
}

func deleteEmptyTables(c *nftables.Conn) error {
	st, err := listState(c)
	if err != nil {
		return err
	}
	n := 0
	// The listener guard alone guards nothing: it goes with the last network.
	if st.inetExists && !slices.ContainsFunc(st.inet, func(ch *nftables.Chain) bool { return ch.Name != reservedChain }) {
		c.DelTable(inetTable())
		n++
	}
	if st.bridgeExists && len(st.bridge) == 0 && len(st.sets) == 0 {
		c.DelTable(bridgeTable())
		n++
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete empty tables: %w", err)
	}
	return nil
}
