package plugin

import (
	"errors"
	"fmt"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// Layer says how far an operation got before it failed (api.Layer).
type Layer = api.Layer

// Failure layers (api's).
const (
	LayerNotRunning = api.LayerNotRunning
	LayerRejected   = api.LayerRejected
	LayerPartial    = api.LayerPartial
)

// Stable reason strings on the admin API wire (api's).
const (
	ReasonNotRunning        = api.ReasonNotRunning
	ReasonInvalidRule       = api.ReasonInvalidRule
	ReasonRuleNotFound      = api.ReasonRuleNotFound
	ReasonNetworkNotFound   = api.ReasonNetworkNotFound
	ReasonContainerGone     = api.ReasonContainerGone
	ReasonStoreWriteFailed  = api.ReasonStoreWriteFailed
	ReasonInvalidRequest    = api.ReasonInvalidRequest
	ReasonConfigRegenFailed = api.ReasonConfigRegenFailed
	ReasonSidecarRestart    = api.ReasonSidecarRestart
	ReasonStackUnhealthy    = api.ReasonStackUnhealthy
	ReasonRouteSyncFailed   = api.ReasonRouteSyncFailed
	ReasonPortLimit         = api.ReasonPortLimit
	ReasonPortsExhausted    = api.ReasonPortsExhausted
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
