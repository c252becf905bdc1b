package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
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
	// PortLo-PortHi is the range of allocated listeners reachable on the
	// gateway (tcp, and udp for dedicated udp listeners). Passing the whole
	// reserved range 15000-15999 covers DNS, CA and transparent ports too.
	PortLo, PortHi uint16
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
	case n.PortLo == 0 || n.PortLo > n.PortHi:
		return fmt.Errorf("network %s: bad listener range %d-%d", n.Bridge, n.PortLo, n.PortHi)
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

// Chain and set names, per network bridge BR and per host veth V.
func inChain(br string) string   { return "in_" + br }
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

	// Input: only the gateway's listener ports.
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
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_TCP), dportRange(n.PortLo, n.PortHi), accept())
	add(in, iif(br), ipv4(), gw, l4(unix.IPPROTO_UDP), dportRange(n.PortLo, n.PortHi), accept())
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
	if st.inetExists && len(st.inet) == 0 {
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
