package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDNSDenialFromSidecarLine(t *testing.T) {
	line := `[WARNING] plugin/clawker: CLAWKER-DNS-DECISION decision=deny src=10.231.4.2 endpoint=1 container=agent name="denied.example.test" type=A reason=no-rule rcode=NXDOMAIN`
	d, ok := dnsDenial(line)
	require.True(t, ok)
	require.Equal(t, "denied.example.test", d.Destination)
	require.Equal(t, "agent", d.Container)
	require.Equal(t, uint32(1), d.Index)
	require.Equal(t, "dns", d.Source)
	require.Contains(t, d.Fix, "clawker.allow=denied.example.test,")
	require.Contains(t, d.Reason, "no-rule")

	// A name the rules cannot see: its escapes are read back, and no rule
	// is suggested.
	d, ok = dnsDenial(`[WARNING] plugin/clawker: CLAWKER-DNS-DECISION decision=deny src=10.231.4.2 endpoint=1 container=agent name="b\\195\\188cher.wild.example.test" type=A reason=bad-name rcode=NXDOMAIN`)
	require.True(t, ok)
	require.Equal(t, `b\195\188cher.wild.example.test`, d.Destination)
	require.NotContains(t, d.Fix, "clawker.allow")
	require.Contains(t, d.Fix, "xn--")

	_, ok = dnsDenial(`CLAWKER-DNS-DECISION decision=allow name="allowed.example.test"`)
	require.False(t, ok)
}
