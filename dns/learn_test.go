package dns

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// TestLearnReportsAnswers: a learning endpoint is allowed as under bypass
// (nothing learned into the hooks' map) and each upstream answer is
// reported in one learn line with its addresses, which ParseLearnLine
// reads back; a plain bypass reports nothing.
func TestLearnReportsAnswers(t *testing.T) {
	f := newFixture(t)
	snap := testSnapshot(2, f.up2.Addr)
	snap.Endpoints[2].BypassUntil = time.Now().Add(time.Hour)
	snap.Endpoints[2].Learn = true
	f.h.Store.Publish(snap)
	rcode, m, _ := f.ask(t, ep2IP, "evil.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.68"}, addrs(m))
	require.Empty(t, f.learner.Calls())
	var found []LearnLine
	for _, l := range f.log.Lines() {
		if ll, ok := ParseLearnLine(l); ok {
			found = append(found, ll)
		}
	}
	require.Equal(t, []LearnLine{{Endpoint: 2, Name: "evil.example.test", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.68")}}}, found)

	snap = testSnapshot(3, f.up2.Addr)
	snap.Endpoints[2].BypassUntil = time.Now().Add(time.Hour)
	f.h.Store.Publish(snap)
	f.ask(t, ep2IP, "other.example.test", mdns.TypeA)
	for _, l := range f.log.Lines() {
		require.False(t, strings.Contains(l, "other.example.test") && strings.Contains(l, LearnLinePrefix), l)
	}
}
