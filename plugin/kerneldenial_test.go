package plugin

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKernelDenialFix: a hook denial names what would allow it, except for
// Docker's embedded resolver on its real ports, which no rule opens.
func TestKernelDenialFix(t *testing.T) {
	r := newRig(t)
	r.p.RecordKernelDenial(1, netip.MustParseAddr("127.0.0.11"), 41234, 17, "docker's embedded resolver")
	r.p.RecordKernelDenial(1, netip.MustParseAddr("192.0.2.7"), 443, 6, "unknown destination")
	got := r.p.Denials.Recent()
	require.Len(t, got, 2)
	require.Equal(t, "127.0.0.11", got[0].Destination)
	require.Contains(t, got[0].Fix, "port 53")
	require.NotContains(t, got[0].Fix, "clawker.allow")
	require.Contains(t, got[1].Fix, "clawker.allow=tcp://192.0.2.7:443")
}
