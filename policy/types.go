// Package policy is clawker-fw's rule model: the EgressRule schema, parsing of
// network options, container labels and runtime rules, normalization,
// validation, dedup, conflict resolution, and compilation into the per-endpoint
// Policy that every data plane (BPF, DNS, proxy, authz) consumes.
//
// The package does no I/O and never logs. Decisions are values with reasons,
// not errors; errors are reserved for input that cannot be understood.
//
// This file holds the seam types the other packages build against. Their JSON
// form is part of the seam too: the DNS sidecar receives Snapshots as JSON.
package policy

import (
	"net/netip"
	"sync"
	"time"
)

// Proto is the protocol of a rule.
type Proto string

// The protocols a rule may name. "tls" is accepted as an alias of https when
// parsing and normalized to ProtoHTTPS.
const (
	ProtoHTTPS Proto = "https"
	ProtoHTTP  Proto = "http"
	ProtoSSH   Proto = "ssh"
	ProtoTCP   Proto = "tcp"
	ProtoUDP   Proto = "udp"
)

// L4 returns the transport protocol number that carries p (6 or 17).
func (p Proto) L4() L4 {
	if p == ProtoUDP {
		return L4UDP
	}
	return L4TCP
}

// Dedicated reports whether flows of this protocol need one listener per
// (rule, port): the proxy cannot learn the intended name from raw TCP/UDP bytes.
func (p Proto) Dedicated() bool { return p == ProtoSSH || p == ProtoTCP || p == ProtoUDP }

// L4 is an IP protocol number.
type L4 uint8

// The transport protocols the firewall routes.
const (
	L4TCP L4 = 6
	L4UDP L4 = 17
)

// Action is allow or deny.
type Action string

// Rule and path actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// SourceKind says where a rule came from.
type SourceKind string

// Rule sources, in the order they are layered.
const (
	SourceOption  SourceKind = "option"  // docker network create -o
	SourceLabel   SourceKind = "label"   // docker run --label, this container only
	SourceRuntime SourceKind = "runtime" // admin API, stored per network
)

// Provenance records where one rule came from, so that a denial can say
// exactly what would allow it and an error can name its origin.
type Provenance struct {
	Kind SourceKind `json:"kind"`
	// Key is the option or label key ("clawker.allow", "clawker.rules"), or
	// "runtime" for admin rules.
	Key string `json:"key"`
	// Item is the rule as the user wrote it (one element of a compact list,
	// or the JSON of one full rule).
	Item string `json:"item"`
	// Network is the network ID the rule belongs to.
	Network string `json:"network,omitempty"`
	// Container is the container ID for label rules.
	Container string `json:"container,omitempty"`
}

// PathRule is one HTTP path rule. A request path is matched in every way an
// upstream may read it (escapes decoded or not, %2F and '\' as separators or
// not, dot segments resolved or not, ;params stripped or not; case-folded
// for denies) and is allowed only when every reading is: see DecidePath.
type PathRule struct {
	// Path is a prefix ("/repos/") or, when it starts with "~", a regular
	// expression anchored at the start of the path ("~^/v[0-9]+/").
	Path string `json:"path"`
	// Methods restricts the rule to these upper-case methods; empty means all.
	Methods []string `json:"methods,omitempty"`
	// Action defaults to allow.
	Action Action `json:"action,omitempty"`
}

// EgressRule is one normalized, validated rule.
type EgressRule struct {
	// Dst is an exact host name ("api.example.com"), a wildcard
	// (".example.com": the apex and every subdomain), an IP address or a CIDR
	// (always in canonical prefix form, "10.1.0.0/16", "192.0.2.7/32").
	Dst   string `json:"dst"`
	Proto Proto  `json:"proto"`
	// Port and PortEnd are an inclusive range; PortEnd == Port for one port.
	Port    uint16 `json:"port"`
	PortEnd uint16 `json:"port_end,omitempty"`
	Action  Action `json:"action"`
	// Paths are evaluated in order; the first match decides.
	Paths []PathRule `json:"paths,omitempty"`
	// PathDefault applies when no path rule matches: deny when any path rule
	// allows, else allow (filled in by normalization).
	PathDefault Action `json:"path_default,omitempty"`
	// Inspect turns on TLS interception; path rules force it on.
	Inspect bool       `json:"inspect,omitempty"`
	Source  Provenance `json:"source"`
}

// Identity is the stable number of a destination pattern ("example.com",
// ".example.com", "10.0.0.0/8"). It is allocated once per pattern and
// persisted, so adding or removing unrelated rules never renumbers anything.
// The BPF maps and the proxy's routes key on it. Zero means "none".
type Identity uint32

// Allocator hands out identities. Implementations must return the same
// identity for the same pattern forever (across restarts).
type Allocator interface {
	Identity(pattern string) Identity
}

// PortRange is an inclusive range of ports of one protocol.
type PortRange struct {
	Proto Proto  `json:"proto"`
	Lo    uint16 `json:"lo"`
	Hi    uint16 `json:"hi"`
}

// Contains reports whether port of transport l4 lies in r.
func (r PortRange) Contains(port uint16, l4 L4) bool {
	return r.Proto.L4() == l4 && port >= r.Lo && port <= r.Hi
}

// Allowed is one allowed destination pattern of a compiled policy, with
// everything the data planes need to route and decide for it.
type Allowed struct {
	Identity Identity `json:"identity"`
	// Pattern is the rule destination: exact name, ".wildcard", or CIDR.
	Pattern string `json:"pattern"`
	// Prefix is set for IP/CIDR patterns.
	Prefix netip.Prefix `json:"prefix,omitzero"`
	// Ports holds the ports of this pattern's own rules and of every allow
	// whose pattern encloses it (a name matching several allows takes the
	// most specific one's identity, whose routes include all of them).
	Ports []PortRange `json:"ports"`
	// Paths and PathDefault are the HTTP rules in force for this pattern.
	Paths       []PathRule `json:"paths,omitempty"`
	PathDefault Action     `json:"path_default,omitempty"`
	// Inspect is true when TLS must be terminated for this pattern.
	Inspect bool `json:"inspect,omitempty"`
	// Rules are the source rules that produced this entry (provenance).
	Rules []EgressRule `json:"rules"`
}

// Denied is one deny pattern. A deny covers its name's whole subtree (or its
// whole CIDR) on every port and wins over every overlapping allow.
type Denied struct {
	Pattern string       `json:"pattern"`
	Prefix  netip.Prefix `json:"prefix,omitzero"`
	Rule    EgressRule   `json:"rule"`
}

// Override records an allow that a deny cancelled, for diagnostics.
type Override struct {
	Allow EgressRule `json:"allow"`
	Deny  EgressRule `json:"deny"`
}

// Policy is the compiled, effective policy of one endpoint (network rules +
// runtime rules + that container's label rules). It is immutable once built:
// nothing writes its entries after its constructor returned (MatchName's
// name index notices Allows or Denies replaced, cut or appended to, and then
// scans, but not an element overwritten in place, which
// TestNoEntryWritesOutsideConstructors keeps out of the tree).
type Policy struct {
	// Generation is the snapshot generation this policy was compiled in.
	Generation uint64 `json:"generation"`
	// Allows is sorted most specific first: exact names, then wildcards by
	// descending label count, then CIDRs by descending prefix length.
	Allows []Allowed `json:"allows"`
	// Denies lists every deny pattern.
	Denies []Denied `json:"denies"`
	// Overridden lists allows removed by denies.
	Overridden []Override `json:"overridden,omitempty"`
	// InspectAll mirrors the network's clawker.tls.inspect=all setting.
	InspectAll bool `json:"inspect_all,omitempty"`
	// AllowAll is set while the endpoint is bypassed (see Endpoint.BypassUntil).
	AllowAll bool `json:"allow_all,omitempty"`
	// Learn is set with AllowAll while the endpoint is in learn mode: the
	// data planes then read every flow's name (SNI, Host, DNS answer) and
	// report it instead of splicing by address unseen.
	Learn bool `json:"learn,omitempty"`
	// Base, when set, makes this a layered policy: Allows and Denies hold
	// only the endpoint's own layer and Base is its network's policy
	// compiled without its labels, shared by every endpoint of the
	// network. Layer builds the own layer complete (every entry whose
	// merged form differs from the base's is restated), so MatchName,
	// MatchIP, DeniedAddr and Entries answer exactly as the merged
	// Compile would, entries included. Consumers that build from every
	// allow iterate Entries and DenyEntries, never Allows and Denies.
	Base *Policy `json:"-"`
	// names is the index MatchName finds this policy's own name entries
	// in, built by its constructor (nil below indexMin entries, or when
	// the policy was assembled or decoded without one: see Indexed). It
	// answers only while Allows and Denies are the slices it was built
	// from; otherwise MatchName scans.
	names *nameIndex
}

// Reason explains a decision with a stable machine-readable code.
type Reason string

// Decision reasons.
const (
	ReasonAllowed      Reason = "allowed"
	ReasonNoRule       Reason = "no-rule"   // no allow matches the name/IP
	ReasonDenyRule     Reason = "deny-rule" // a deny covers it
	ReasonPortNotAllow Reason = "port-not-allowed"
	ReasonPath         Reason = "path-rule"
	ReasonPending      Reason = "pending"   // endpoint's policy not known yet
	ReasonBadLabel     Reason = "bad-label" // the container's labels did not parse
	ReasonUnknownPeer  Reason = "unknown-endpoint"
	ReasonBypass       Reason = "bypass"
)

// Match is the result of looking a destination up in a Policy.
type Match struct {
	Allowed bool   `json:"allowed"`
	Reason  Reason `json:"reason"`
	// Entry is the allow that matched (nil when none did).
	Entry *Allowed `json:"entry,omitempty"`
	// Deny is the deny that matched (nil when none did).
	Deny *Denied `json:"deny,omitempty"`
}

// NetworkSettings are the network-wide clawker.* settings (not rules).
type NetworkSettings struct {
	// DNSUpstreams overrides the plugin's upstream resolvers ("ip[:port]").
	DNSUpstreams []string `json:"dns_upstreams,omitempty"`
	// InspectAll is clawker.tls.inspect=all.
	InspectAll bool `json:"inspect_all,omitempty"`
	// ICC allows traffic between endpoints of this network (default false).
	ICC bool `json:"icc,omitempty"`
}

// NetworkConfig is what a network's options parse into.
type NetworkConfig struct {
	Rules    []EgressRule    `json:"rules"`
	Settings NetworkSettings `json:"settings"`
}

// Network is one clawker-fw network in a Snapshot.
type Network struct {
	ID       string          `json:"id"`
	Name     string          `json:"name,omitempty"`
	Bridge   string          `json:"bridge"`
	Subnet   netip.Prefix    `json:"subnet"`
	Gateway  netip.Addr      `json:"gateway"`
	Settings NetworkSettings `json:"settings"`
	// Base is the network's option and runtime rules compiled without any
	// container's labels (nil when not compiled): the Policy of its
	// endpoints without label rules, and the base layer the DNS sidecar's
	// file shares between its endpoints (see Policy.Base).
	Base *Policy `json:"-"`
}

// Endpoint is one endpoint in a Snapshot, keyed by its stable index.
type Endpoint struct {
	// Index is the small stable integer allocated at CreateEndpoint and
	// persisted; per-endpoint state everywhere (BPF maps included) keys on it.
	Index     uint32     `json:"index"`
	ID        string     `json:"id"`
	NetworkID string     `json:"network_id"`
	IP        netip.Addr `json:"ip"`
	MAC       string     `json:"mac"`
	// ContainerID/Name/Aliases are empty until the container is identified.
	ContainerID   string   `json:"container_id,omitempty"`
	ContainerName string   `json:"container_name,omitempty"`
	Aliases       []string `json:"aliases,omitempty"`
	// Pending is true while the container (and so its labels) is unknown:
	// DNS and proxy wait, bounded, for the policy instead of denying.
	Pending bool `json:"pending,omitempty"`
	// LabelError is set when the container's clawker.* labels did not parse;
	// the endpoint then has no egress at all and denials name the label.
	LabelError string `json:"label_error,omitempty"`
	// BypassUntil, when in the future, gives the endpoint allow-all in DNS
	// and proxy (never NAT or forwarding).
	BypassUntil time.Time `json:"bypass_until,omitzero"`
	// Learn marks a bypass as learn mode (clawker-fw learn): the same
	// allow-all, with every flow reported to the plugin's recorder.
	Learn bool `json:"learn,omitempty"`
	// Policy is the endpoint's compiled policy (nil while pending).
	Policy *Policy `json:"policy,omitempty"`
	// Labels is the own layer of Policy (policy.Layer; nil without label
	// rules): with its network's Base, what the DNS sidecar's file
	// carries instead of Policy (see Policy.Base).
	Labels *Policy `json:"-"`
}

// Snapshot is an immutable view of every network's and endpoint's compiled
// state at one generation. Every change publishes a new one; consumers swap
// it atomically and never mutate it.
type Snapshot struct {
	Generation uint64               `json:"generation"`
	Networks   map[string]*Network  `json:"networks"`
	Endpoints  map[uint32]*Endpoint `json:"endpoints"`
	// byIP is built once, by Index(), for lookups by source address.
	indexOnce sync.Once
	byIP      map[netip.Addr]*Endpoint
}
