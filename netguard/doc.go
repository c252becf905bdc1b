// Package netguard builds clawker-fw's closed network: the bridge, the veth
// pairs and the nftables rules that make a clawker-fw network fail closed on
// its own, whether or not the BPF socket hooks of an endpoint are enrolled
// (invariant 1 in docs/DESIGN.md: the hooks steer and explain, the network
// guarantees). It is the only package of the
// project that talks rtnetlink or nftables; every such call goes through a
// [Handle], which can work in any network namespace (tests build their own).
//
// # Design choice: nftables, not TC
//
// The guard is written in nftables (through github.com/google/nftables, so
// the plugin's OS-less rootfs needs no nft binary) rather than as TC
// programs or TC flower filters, because:
//  1. NAT is needed: endpoints whose socket hooks are not enrolled yet
//     (Docker 20.10 creates the container netns after Join) must have their
//     DNS and TCP redirected, not dropped, to the plugin's listeners, and the
//     transparent listener must read the original destination with
//     SO_ORIGINAL_DST. That needs conntrack NAT, which nftables `redirect`
//     gives and TC does not.
//  2. Anti-spoofing is a per-port, stateless match on Ethernet/ARP/IPv4
//     headers; the nftables bridge family expresses it directly on the host
//     side of each veth, in the same transaction model as the rest.
//  3. Every change is one atomic netlink transaction: re-guarding a network
//     replaces its rules with no window in which the old ones are gone.
//
// # What is installed
//
// Two tables named [TableName] are owned by the plugin: one of family inet
// and one of family bridge. Per network (bridge BR) there are these chains,
// all base chains with policy accept whose rules only ever match traffic that
// entered from BR (an accept in one base chain never overrides a drop in
// another, so the guard composes with Docker's and the host's own rules):
//
//   - inet in_BR (input, priority -10): established/related accepted; the
//     gateway's DNS port (udp, tcp), the transparent port (tcp, only for
//     redirected flows: ct status dnat), the optional CA port (tcp) and the
//     allocated listener ports this network's routes use (sets ltcp_BR,
//     ludp_BR, filled by [Handle.SetListenerPorts]) accepted; everything else
//     from BR to any host address, IPv6 included, dropped — a host service on
//     another port of the reserved range is not reachable.
//   - inet fwd_BR (forward, priority -10): nothing from or to BR is ever
//     forwarded or routed. The one exception is bridged traffic between two
//     endpoints of BR when ICC is on: br_netfilter (which Docker loads) makes
//     bridged IPv4 traverse the IP forward hook with in and out interface BR.
//   - inet nat_BR (nat prerouting, priority -110, ahead of Docker's DNAT):
//     udp/tcp port 53 to any address is redirected to the gateway's DNS port;
//     TCP to any address outside the subnet is redirected to the transparent
//     listener. Nothing is ever masqueraded or source-NATed.
//   - bridge fwd_BR (forward, priority -200): with ICC off, every frame bridged
//     from or to a port in set ports_BR (the network's guarded endpoints) is
//     dropped. (meta ibrname would name the bridge directly but needs the
//     nft_meta_bridge module, which the development kernel lacks.)
//
// Once for all networks, inet chain listeners (input, priority -10) drops
// TCP and UDP to the ports the plugin's listeners are bound to (sets
// bound_tcp, bound_udp) unless they entered from loopback or a guarded
// bridge (set bridges). The listeners bind every host address, and with
// rp_filter off a packet that spoofs an endpoint's source address from any
// other interface would otherwise be taken for that endpoint's. The match is
// on the input interface, never on addresses. (Binding each listener to each
// gateway address instead would multiply sockets by networks, make the DNS
// sidecar restart on every network change, and still not stop such a
// packet: the host accepts a gateway address on any interface.)
//
// Per endpoint (host-side veth V) there is a bridge chain ep_V (prerouting,
// priority -200). CreateVeth installs it before V joins the bridge with a
// single rule that drops every frame from V, so a port is closed from the
// moment it exists. GuardEndpoint replaces it atomically with rules that drop
// frames from V whose Ethernet source is not the endpoint's MAC, IPv4 whose
// source is not the endpoint's IP, ARP whose sender hardware or protocol
// address differs from them (or whose lengths are not 6/4), and every other
// ethertype (IPv6, VLAN tags, raw ethertypes), and adds V to ports_BR.
// Containers have NET_RAW by default, so this is what makes identifying an
// endpoint by its source address sound. The caller must install it before the
// driver's Join returns (at CreateEndpoint, right after CreateVeth, or in
// Join), because from then on the container can send frames. UnguardEndpoint
// resets ep_V to drop-all while V still exists; DeleteVeth removes it.
//
// Every rule carries a comment "clawker-fw net=BR" (and " ep=V" for endpoint
// rules) so that [Handle.ListOwned] can find whatever still references a
// network.
//
// # Docker's FORWARD drop policy
//
// Docker sets the iptables FORWARD policy to DROP, and with br_netfilter that
// drop applies to bridged frames between two containers of one bridge. An
// accept in another nftables table cannot override it, so with ICC on,
// GuardNetwork inserts "iifname BR oifname BR accept" at the top of chain
// DOCKER-USER of table ip filter when that chain exists (iptables-nft hosts)
// and removes it again on UnguardNetwork. Hosts that run iptables-legacy need
// the equivalent rule added by hand:
//
//	iptables -I DOCKER-USER -i BR -o BR -j ACCEPT
//
// Without it, ICC on such hosts silently behaves like ICC off (fails closed).
// Likewise a host firewall that drops input must itself let the bridge reach
// the gateway's listener ports: the guard only ever narrows what others allow.
// If something flushes table ip filter (a firewall reload, a dockerd start that
// recreates it), calling GuardNetwork again restores the DOCKER-USER accept.
// [Handle.Missing] tells what of a network's guard is gone, so that the
// plugin can notice such a reload and guard again.
package netguard
