package plugin

import (
	"errors"
	"fmt"
)

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

// Error is a typed plugin error carrying its layer and stable reason.
type Error struct {
	Layer  Layer
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func rejected(reason string, format string, args ...any) error {
	return &Error{Layer: LayerRejected, Reason: reason, Err: fmt.Errorf(format, args...)}
}

func partial(reason string, err error) error {
	return &Error{Layer: LayerPartial, Reason: reason, Err: fmt.Errorf("committed, but applying failed: %w", err)}
}

// ReasonOf returns the stable reason of err, or "" when it carries none.
func ReasonOf(err error) (Layer, string) {
	var e *Error
	if errors.As(err, &e) {
		return e.Layer, e.Reason
	}
	return "", ""
}
