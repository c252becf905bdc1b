package api

import (
	"encoding/json"
	"time"
)

// Learn mode (clawker-fw learn): a bypass that records every flow, then
// proposes the rules that would have allowed them.

// LearnRequest is the body of POST /v1/learn; For is a Go duration.
type LearnRequest struct {
	Container string `json:"container"`
	For       string `json:"for"`
}

// LearnFlow is one distinct flow a learning container made: what the
// firewall saw of it, and how often.
type LearnFlow struct {
	// Proto is what the proxy saw: https (a TLS ClientHello with a server
	// name), http (plain HTTP requests), ssh (an SSH banner) or tcp
	// (anything else).
	Proto string `json:"proto"`
	// Name is the SNI, the Host, or for ssh/tcp the name the container
	// resolved to the address it connected to ("" when none is known).
	Name string `json:"name,omitempty"`
	// Addr is the address the container connected to (set when Name is
	// unknown, and for ssh/tcp flows).
	Addr string `json:"addr,omitempty"`
	Port uint16 `json:"port"`
	// Inspected says the connection's requests were visible: plain HTTP,
	// or TLS the proxy terminated (the network inspects).
	Inspected bool `json:"inspected,omitempty"`
	// Method, PathPrefix and Path are set for one HTTP request shape:
	// PathPrefix is what a path rule would allow (at most two directory
	// segments), Path the first request seen with it.
	Method     string    `json:"method,omitempty"`
	PathPrefix string    `json:"path_prefix,omitempty"`
	Path       string    `json:"path,omitempty"`
	Count      int       `json:"count"`
	First      time.Time `json:"first"`
	Last       time.Time `json:"last"`
}

// LearnRules is the proposed rule set in the forms users paste.
type LearnRules struct {
	// Rules is the whole set as a clawker.rules JSON list (path rules
	// included where inspection saw the requests). learn check reads it.
	Rules []json.RawMessage `json:"clawker.rules"`
	// Allow is the compact list for clawker.allow: every rule without path
	// rules.
	Allow []string `json:"clawker.allow,omitempty"`
	// PathRules is the clawker.rules JSON list of the rules with path rules
	// (they have no compact form).
	PathRules []json.RawMessage `json:"path_rules,omitempty"`
	// Label and Option are the docker run and docker network create
	// arguments carrying the set.
	Label  []string `json:"label"`
	Option []string `json:"option"`
	// Wildcards says which names each wildcard stands for.
	Wildcards map[string][]string `json:"wildcards,omitempty"`
	// Unruled lists flows no rule could be proposed for, and why.
	Unruled []string `json:"unruled,omitempty"`
}

// LearnReport is the answer of the learn endpoints and what the CLI writes
// to its file.
type LearnReport struct {
	Container   string    `json:"container"`
	ContainerID string    `json:"container_id"`
	Network     string    `json:"network"`
	Started     time.Time `json:"started"`
	Until       time.Time `json:"until"`
	// Ended is zero while learning runs.
	Ended  time.Time   `json:"ended,omitzero"`
	Active bool        `json:"active"`
	Flows  []LearnFlow `json:"flows"`
	// Resolved lists names the container resolved but never connected to.
	Resolved []string `json:"resolved_only,omitempty"`
	// Dropped counts flows not recorded because the recording was full.
	Dropped int        `json:"dropped,omitempty"`
	Rules   LearnRules `json:"rules"`
	// Warnings say what learn mode means and what it cannot see.
	Warnings []string `json:"warnings"`
}

// LearnCheckRequest is the body of POST /v1/learn/check: the flows of a
// learn report replayed against Rules (a clawker.rules JSON list) as if
// they were the container's labels, on its network's current rules.
type LearnCheckRequest struct {
	Container string            `json:"container"`
	Rules     []json.RawMessage `json:"clawker.rules"`
	Flows     []LearnFlow       `json:"flows"`
}

// LearnDenied is one replayed flow the rules would deny.
type LearnDenied struct {
	Flow   LearnFlow `json:"flow"`
	Reason string    `json:"reason"`
	Detail string    `json:"detail,omitempty"`
}

// LearnCheckResponse is the answer of POST /v1/learn/check.
type LearnCheckResponse struct {
	Container string        `json:"container"`
	Checked   int           `json:"checked"`
	Denied    []LearnDenied `json:"denied"`
}
