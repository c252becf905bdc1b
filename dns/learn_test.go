package dns

import (
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
)

// TestLearnReportsAnswers: a learning endpoint is allowed as under bypass
// (nothing learned into the hooks' map) and its allowed decision record
// carries the answered addresses; a plain bypass's does not.
func TestLearnReportsAnswers(t *testing.T) {
	f := newFixture(t)
	var got []decisionlog.Record
	f.h.Decisions = func(r decisionlog.Record) { got = append(got, r) }
	snap := testSnapshot(2, f.up2.Addr)
	snap.Endpoints[2].BypassUntil = time.Now().Add(time.Hour)
	snap.Endpoints[2].Learn = true
	f.h.Store.Publish(snap)
	rcode, m, _ := f.ask(t, ep2IP, "evil.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.68"}, addrs(m))
	require.Empty(t, f.learner.Calls())
	require.Len(t, got, 1)
	require.Equal(t, decisionlog.Allow, got[0].Verdict)
	require.Equal(t, "evil.example.test", got[0].DestName)
	require.Equal(t, []string{"192.0.2.68"}, got[0].Addrs)

	got = nil
	snap = testSnapshot(3, f.up2.Addr)
	snap.Endpoints[2].BypassUntil = time.Now().Add(time.Hour)
	f.h.Store.Publish(snap)
	f.ask(t, ep2IP, "evil.example.test", mdns.TypeA)
	require.Len(t, got, 1)
	require.Empty(t, got[0].Addrs, "a plain bypass reports no addresses")
}
