package verdict

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Denial is what Fix needs of a denial.
type Denial struct {
	// Dest is the name or address that was denied; Port 0 means any port
	// (a DNS query).
	Dest string
	Port uint16
	// Proto is the protocol the flow spoke ("" when unknown); L4 its
	// transport.
	Proto policy.Proto
	L4    policy.L4
	// Reason, Rule (provenance of the deciding rule) and Detail as in
	// Verdict.
	Reason policy.Reason
	Rule   string
	Detail string
	// Network names the network in the suggested command ("NETWORK" when
	// empty).
	Network string
}

// Fix is the one text that says what would allow a denied flow, or why no
// rule can: the proxy's 403 bodies and X-Clawker-Denied headers (both
// engines), the denial log and the DNS denials use it.
func Fix(d Denial) string {
	switch d.Reason {
	case policy.ReasonDenyRule:
		return fmt.Sprintf("a deny rule (%s) covers %s; remove it to allow", d.Rule, d.Dest)
	case policy.ReasonBadLabel:
		return "the container's clawker labels are invalid (" + d.Detail + "); fix the label to get egress"
	case policy.ReasonPending:
		return "the container's policy is not known yet; retry"
	case policy.ReasonUnknownPeer:
		return "the source address is no clawker-fw endpoint"
	case policy.ReasonPath:
		return fmt.Sprintf("the request path is denied by %s (%s)", d.Detail, d.Rule)
	case ReasonPrivateUpstream:
		return fmt.Sprintf("%s resolves to a private address; allow that address with an IP/CIDR rule", d.Dest)
	case ReasonDomainFronting:
		return "the HTTP Host differs from the TLS server name"
	case ReasonHostLocal:
		return fmt.Sprintf("%s is an address of the Docker host; reach the host with an exact rule tcp://host.docker.internal:PORT, or name the address in an IP/CIDR rule", d.Dest)
	case ReasonECH:
		return fmt.Sprintf("encrypted ClientHello (ECH) hides the real server name; connect to %s without ECH (clients retry without it or fail; Chromium sends GREASE ECH by default: set its EncryptedClientHelloEnabled policy to false or run it with --disable-features=EncryptedClientHello), or inspect this rule (clawker.tls.inspect=all or a path rule)", d.Dest)
	case ReasonUpgrade:
		return "only WebSocket may upgrade a checked HTTP connection (its stream is opaque after the handshake); h2c, CONNECT and other tunnels are refused because the requests inside them would not be checked"
	case ReasonNoSNI:
		return "the TLS ClientHello names no server (SNI): connect by name"
	case ReasonSniffFailed:
		return "the proxy read no TLS ClientHello or HTTP request from the connection in time"
	case ReasonBadRequest:
		return "the HTTP request is malformed (" + d.Detail + ")"
	case ReasonNoInspection:
		return "the rule needs TLS inspection and the proxy has no CA; see `clawker-fw status`"
	case ReasonUpstream:
		return fmt.Sprintf("the proxy could not reach %s (%s)", d.Dest, d.Detail)
	case ReasonConnLimit, ReasonUDPLimit:
		return "the container is over its cap of concurrent connections (CLAWKER_PROXY_MAX_CONNS, CLAWKER_PROXY_MAX_UDP_SESSIONS); close some"
	case ReasonProtoMismatch:
		return fmt.Sprintf("the rule (%s) allows another protocol on this port; ", d.Rule) + allowText(d)
	}
	return allowText(d)
}

// allowText suggests the smallest rule that allows d, in the three places
// a rule can be given.
func allowText(d Denial) string {
	item := Item(d.Dest, d.Port, d.Proto, d.L4)
	network := d.Network
	if network == "" {
		network = "NETWORK"
	}
	return fmt.Sprintf("allow it with the container label clawker.allow=%s, the network option -o clawker.allow=%s, or `clawker-fw rules add %s %s`", item, item, network, item)
}

// Item is the compact rule that allows dest on port for proto (the
// spelling policy/README.md gives): an address as tcp:// (udp://) with its
// port, ssh/tcp/udp with their scheme, plain HTTP as http://, https bare
// with a port other than 443. Port 0 (a DNS query: any port) is the bare
// name.
func Item(dest string, port uint16, proto policy.Proto, l4 policy.L4) string {
	p := strconv.Itoa(int(port))
	_, ipErr := netip.ParseAddr(dest)
	switch {
	case port == 0:
		return dest
	case ipErr == nil && (l4 == policy.L4UDP || proto == policy.ProtoUDP):
		return "udp://" + dest + ":" + p
	case ipErr == nil:
		return "tcp://" + dest + ":" + p
	case proto == policy.ProtoSSH && port == 22:
		return "ssh://" + dest
	case proto == policy.ProtoSSH || proto == policy.ProtoTCP || proto == policy.ProtoUDP:
		return string(proto) + "://" + dest + ":" + p
	case proto == policy.ProtoHTTP && port == 80, proto == "" && port == 80:
		return "http://" + dest
	case proto == policy.ProtoHTTP:
		return "http://" + dest + ":" + p
	case port == 443:
		return dest
	}
	return dest + ":" + p
}
