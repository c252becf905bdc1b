package wire

import (
	"fmt"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
)

func TestDNSLinesLimitedPerEndpoint(t *testing.T) {
	l := newLogLimits(1) // burst 10
	line := func(ep string) string {
		return fmt.Sprintf(`[WARNING] plugin/clawker: CLAWKER-DNS-DECISION decision=deny src=10.231.4.2 endpoint=%s container=a name="x.test" type=A reason=no-rule rcode=NXDOMAIN`, ep)
	}
	kept := func(s string, n int) int {
		c := 0
		for range n {
			if l.keepDNSLine(s) {
				c++
			}
		}
		return c
	}
	require.Equal(t, 10, kept(line("3"), 50), "one endpoint floods: the burst passes")
	require.Equal(t, 10, kept(line("4"), 10), "another endpoint is not affected")
	require.Equal(t, 10, kept(line("-"), 20), "lines of no endpoint share key 0")
	require.Equal(t, 5, kept("[INFO] plugin/reload: Running configuration SHA512 = x", 5), "other lines always pass")
	require.Contains(t, l.summary(), "dns 50")

	logger, hook := test.NewNullLogger()
	l.report(logrus.NewEntry(logger))
	require.Len(t, hook.AllEntries(), 1, "one summary line")
	require.Equal(t, map[string]uint64{"3": 40, "0": 10}, hook.LastEntry().Data["dns"])
	hook.Reset()
	l.report(logrus.NewEntry(logger))
	require.Empty(t, hook.AllEntries(), "nothing dropped since: no line")
}
