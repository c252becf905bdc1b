// Package api is the wire contract of the plugin's admin API: the stable
// reasons (error codes), the failure layers and the request and response
// bodies. It imports only the standard library, so the admin CLI links it
// without the plugin core; the plugin's admin server serves these same
// types (plugin re-exports them as aliases).
package api

import "time"

// Layer says how far an operation got before it failed (the three-layer
// failure model): callers and the CLI dispatch remediation on Reason.
type Layer string

// Failure layers.
const (
	// LayerNotRunning: nothing was touched; the plugin is not running.
	LayerNotRunning Layer = "not-running"
	// LayerRejected: failed before the store write; the store is unchanged.
	LayerRejected Layer = "rejected"
	// LayerPartial: the store committed, applying it failed partly.
	LayerPartial Layer = "partial"
)

// Stable reason strings on the admin API wire.
const (
	ReasonNotRunning        = "PLUGIN_NOT_RUNNING"
	ReasonInvalidRule       = "INVALID_RULE"
	ReasonRuleNotFound      = "RULE_NOT_FOUND"
	ReasonNetworkNotFound   = "NETWORK_NOT_FOUND"
	ReasonContainerGone     = "CONTAINER_GONE"
	ReasonStoreWriteFailed  = "STORE_WRITE_FAILED"
	ReasonInvalidRequest    = "INVALID_REQUEST"
	ReasonConfigRegenFailed = "CONFIG_REGENERATION_FAILED"
	ReasonSidecarRestart    = "SIDECAR_RESTART_FAILED"
	ReasonStackUnhealthy    = "STACK_UNHEALTHY"
	ReasonRouteSyncFailed   = "ROUTE_SYNC_FAILED"
	// ReasonPortLimit: the rules would need more listener ports than one
	// network may use (model.MaxPortsPerNetwork).
	ReasonPortLimit = "LISTENER_PORT_LIMIT"
	// ReasonPortsExhausted: the shared pool of listener ports has too few
	// free ports for the new rules.
	ReasonPortsExhausted = "LISTENER_PORTS_EXHAUSTED"
)

// ErrorDomain is the domain of every reason on the admin API wire (the
// equivalent of gRPC errdetails.ErrorInfo{Domain, Reason}).
const ErrorDomain = "clawker-fw.admin"

// APIError is the admin API's error body. Clients dispatch on Reason, never
// on Message.
type APIError struct {
	Message string `json:"error"`
	Reason  string `json:"reason"`
	Layer   Layer  `json:"layer"`
	Domain  string `json:"domain"`
}

// StatusReport is GET /v1/status.
type StatusReport struct {
	Running    bool            `json:"running"`
	Healthy    bool            `json:"healthy"`
	Generation uint64          `json:"generation"`
	Engine     string          `json:"engine"`
	Components []Component     `json:"components"`
	Networks   []NetworkStatus `json:"networks"`
	Listeners  []string        `json:"listeners"`
}

// Component is one part of the stack in a StatusReport.
type Component struct {
	Name     string `json:"name"`
	Healthy  bool   `json:"healthy"`
	Detail   string `json:"detail,omitempty"`
	Restarts int    `json:"restarts,omitempty"`
}

// NetworkStatus is one network in a StatusReport.
type NetworkStatus struct {
	ID string `json:"id"`
	// Name is the network's Docker name (empty until the plugin has
	// learned it from Docker).
	Name      string   `json:"name,omitempty"`
	Bridge    string   `json:"bridge"`
	Subnet    string   `json:"subnet"`
	Gateway   string   `json:"gateway"`
	Rules     int      `json:"rules"`
	Runtime   int      `json:"runtime_rules"`
	Endpoints []EPInfo `json:"endpoints"`
}

// EPInfo is one endpoint in a NetworkStatus.
type EPInfo struct {
	Index       uint32 `json:"index"`
	IP          string `json:"ip"`
	Container   string `json:"container,omitempty"`
	Enrolled    bool   `json:"enrolled"`
	Pending     bool   `json:"pending,omitempty"`
	LabelRules  int    `json:"label_rules"`
	LabelError  string `json:"label_error,omitempty"`
	BypassUntil string `json:"bypass_until,omitempty"`
	// Learning says the bypass is learn mode (its flows are recorded).
	Learning bool `json:"learning,omitempty"`
	// Failures lists the endpoint's rules that got no listener port (the
	// rest of its policy works).
	Failures []string `json:"failures,omitempty"`
	// IgnoredLabels are the container's clawker.* labels that carry no
	// rule (its image's), as "key=value (why)".
	IgnoredLabels []string `json:"ignored_labels,omitempty"`
}

// Denial is one recorded denial, with what would allow it (one line of
// GET /v1/denials, newline-delimited JSON; the query parameters
// DenialsContainer, DenialsNetwork, DenialsSince and DenialsFollow select).
type Denial struct {
	Time        time.Time `json:"time"`
	Source      string    `json:"source"` // dns, proxy, bpf
	Index       uint32    `json:"index"`
	Container   string    `json:"container,omitempty"`
	ContainerID string    `json:"container_id,omitempty"`
	// Network is the endpoint's network id, NetworkName its Docker name
	// (when known).
	Network     string `json:"network,omitempty"`
	NetworkName string `json:"network_name,omitempty"`
	Destination string `json:"destination"`
	Port        uint16 `json:"port,omitempty"`
	Reason      string `json:"reason"`
	// Rule is what the denial was decided by (a deny rule's provenance).
	Rule string `json:"rule,omitempty"`
	// Fix says exactly which option or label would allow it.
	Fix string `json:"fix,omitempty"`
}

// RulesRequest is the body of POST and DELETE /v1/networks/{net}/rules.
type RulesRequest struct {
	Rules []string `json:"rules"`
}

// RulesResponse is the answer of GET and POST /v1/networks/{net}/rules.
type RulesResponse struct {
	Network string `json:"network"`
	// Name is the network's Docker name (when known).
	Name  string   `json:"name,omitempty"`
	Rules []string `json:"rules"`
}

// BypassRequest is the body of POST /v1/bypass; For is a Go duration.
type BypassRequest struct {
	Container string `json:"container"`
	For       string `json:"for"`
}

// BypassResponse is the answer of POST /v1/bypass.
type BypassResponse struct {
	Container string    `json:"container"`
	Until     time.Time `json:"until"`
}
