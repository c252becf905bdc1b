package dns

import (
	"net/netip"
	"time"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Learner records that endpoint index may reach addr as destination
// identity id for ttl. The plugin calls it for every A record (and HTTPS/SVCB
// ipv4hint) of an allowed answer before the answer is returned to the client,
// so the endpoint's first connect to that address already finds the entry.
// evicted is how many of the endpoint's own unexpired entries had to go to
// make room (its quota was full; see bpf.LearnedWriter).
//
// The production implementation is bpf.LearnedWriter on the pinned map
// `learned` (its layout, version and clock belong to package bpf); tests use
// a fake at this boundary.
type Learner interface {
	Learn(index uint32, addr netip.Addr, id policy.Identity, ttl time.Duration) (evicted int, err error)
}

// MapLearner writes the pinned BPF map `learned` through bpf.LearnedWriter,
// which reopens the pins when the plugin process rebuilds them. Safe for
// concurrent use.
type MapLearner struct {
	w *bpf.LearnedWriter
}

// OpenMapLearner opens `<pinDir>/learned` after checking that `<pinDir>/meta`
// holds bpf.LayoutVersion.
func OpenMapLearner(pinDir string) (*MapLearner, error) {
	w, err := bpf.OpenLearned(pinDir)
	if err != nil {
		return nil, err
	}
	return &MapLearner{w: w}, nil
}

// Learn implements Learner. IPv6 addresses are ignored (the firewall answers
// no AAAA records and the map holds IPv4 only).
func (l *MapLearner) Learn(index uint32, addr netip.Addr, id policy.Identity, ttl time.Duration) (int, error) {
	if !addr.Unmap().Is4() {
		return 0, nil
	}
	return l.w.Learn(index, addr, uint32(id), ttl)
}

// Close releases the map.
func (l *MapLearner) Close() error {
	if l == nil {
		return nil
	}
	return l.w.Close()
}

// nopLearner is used when no pin directory is configured: nothing is
// recorded (setup logs a warning once).
type nopLearner struct{}

func (nopLearner) Learn(uint32, netip.Addr, policy.Identity, time.Duration) (int, error) {
	return 0, nil
}
