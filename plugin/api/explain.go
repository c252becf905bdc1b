package api

// ExplainRequest is the body of POST /v1/explain: what the firewall would
// decide for a flow from Container to Destination, worked out from the
// container's effective policy without sending anything.
//
// Destination is spelled as a URL ("https://api.example.com/v1/x",
// "http://h/p"), a rule item ("tcp://db:5432", "ssh://github.com",
// "udp://ntp.example.com:123"), an address with a port ("10.1.2.3:443") or
// a plain name or address (https on 443, as in a rule).
type ExplainRequest struct {
	Container   string `json:"container"`
	Destination string `json:"destination"`
	// Method is the HTTP method for path rules (default GET).
	Method string `json:"method,omitempty"`
}

// ExplainFlow is the flow an ExplainRequest's destination stands for.
type ExplainFlow struct {
	// Name is set for a host name, Addr for an IP address.
	Name  string `json:"name,omitempty"`
	Addr  string `json:"addr,omitempty"`
	Port  uint16 `json:"port"`
	Proto string `json:"proto"` // https, http, ssh, tcp, udp
	L4    string `json:"l4"`    // tcp, udp
	// Path and Method are set for http and https URLs with a path.
	Path   string `json:"path,omitempty"`
	Method string `json:"method,omitempty"`
}

// Origins of a rule (where it was given).
const (
	OriginOption  = "network option"
	OriginLabel   = "label"
	OriginRuntime = "runtime rule"
)

// ExplainRule is one rule with where it came from.
type ExplainRule struct {
	// Rule is the rule in the form `clawker-fw rules add` takes.
	Rule string `json:"rule"`
	// Origin is OriginOption, OriginLabel or OriginRuntime.
	Origin string `json:"origin"`
	// Key and Item are the option or label key and the item as written
	// ("clawker.allow", "api.example.com"); Key is "runtime" for runtime
	// rules.
	Key  string `json:"key"`
	Item string `json:"item"`
	// Path is the path rule within Rule that decided ("path /v1/ GET
	// allow"), when one did.
	Path string `json:"path,omitempty"`
}

// ExplainFix is the smallest rule that would allow a denied flow, in the
// three places a rule can be given.
type ExplainFix struct {
	// Rule is the rule item; empty when no rule can allow the flow (then
	// Note says what would).
	Rule string `json:"rule,omitempty"`
	// Label, Option and Command give Rule as a container label (this
	// container only, at docker run), a network option (every container,
	// at docker network create) and a runtime rule (every container on the
	// network, live).
	Label   string `json:"label,omitempty"`
	Option  string `json:"option,omitempty"`
	Command string `json:"command,omitempty"`
	// Note says what else must change (a deny to remove, a label to fix).
	Note string `json:"note,omitempty"`
}

// ExplainResponse is the answer of POST /v1/explain.
type ExplainResponse struct {
	Container   string      `json:"container"`
	ContainerID string      `json:"container_id"`
	Network     string      `json:"network"`
	NetworkName string      `json:"network_name,omitempty"`
	Generation  uint64      `json:"generation"`
	Flow        ExplainFlow `json:"flow"`
	Allowed     bool        `json:"allowed"`
	// Reason is the decision's stable reason (allowed, no-rule, deny-rule,
	// port-not-allowed, path-rule, pending, bad-label, bypass).
	Reason string `json:"reason"`
	// Mode is how an allowed flow is carried: passthrough (TLS, SNI
	// checked), inspect (TLS terminated, HTTP checked), http (plain HTTP,
	// Host checked), tcp or udp (a dedicated listener), ip (an IP/CIDR
	// rule: the proxy dials the address asked for).
	Mode string `json:"mode,omitempty"`
	// Detail says in words what decided.
	Detail string `json:"detail"`
	// Rule is the rule that decided (an allow or a deny); nil when none did.
	Rule *ExplainRule `json:"rule,omitempty"`
	// Fix is set for a denied flow.
	Fix *ExplainFix `json:"fix,omitempty"`
	// Notes are caveats (what explain cannot see without traffic).
	Notes []string `json:"notes,omitempty"`
}
