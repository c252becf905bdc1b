package plugin

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
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

// TestDecisionRecordsReachTheDenialLog: the DNS sidecar's records (typed
// data, no log text) become denials with the container, the network and
// what would allow the name; a name no rule can see suggests none; allowed
// records are no denials.
func TestDecisionRecordsReachTheDenialLog(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test", "clawker.deny": "bad.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 101, Container{ID: cid(1), Name: "agent"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	idx := r.policyOf(t, "10.230.0.2").Index

	hub := decisionlog.New(decisionlog.Config{Enrich: r.p.ExplainDecision,
		OnDeny: func(d decisionlog.Record) { r.p.Denials.Add(r.p.DenialOf(&d)) }})
	dns := func(verdict, name, reason, rule string) decisionlog.Record {
		return decisionlog.Record{Source: decisionlog.SourceDNS, Verdict: verdict, Endpoint: idx, DestName: name,
			Reason: reason, Rule: rule, QueryType: "A", Rcode: "NXDOMAIN"}
	}
	hub.Add(dns(decisionlog.Deny, "denied.example.test", "no-rule", ""))
	hub.Add(dns(decisionlog.Deny, `b\195\188cher.example.test`, "bad-name", ""))
	hub.Add(dns(decisionlog.Deny, "x.bad.example.test", "deny-rule", `network clawker.deny=bad.example.test`))
	hub.Add(dns(decisionlog.Allow, "net.example.test", "allowed", ""))
	got := r.p.Denials.Recent()
	require.Len(t, got, 3)
	require.Equal(t, "agent", got[0].Container)
	require.Equal(t, cid(1), got[0].ContainerID)
	require.Equal(t, netA, got[0].Network)
	require.Equal(t, "dns", got[0].Source)
	require.Equal(t, "denied.example.test", got[0].Destination)
	require.Equal(t, "no-rule (A query answered NXDOMAIN)", got[0].Reason)
	require.Contains(t, got[0].Fix, "clawker.allow=denied.example.test,")
	require.NotContains(t, got[1].Fix, "clawker.allow", "no rule can name it")
	require.Contains(t, got[1].Fix, "xn--")
	require.Equal(t, "a deny rule (network clawker.deny=bad.example.test) covers x.bad.example.test; remove it to allow", got[2].Fix)
	require.Len(t, hub.Recent(0, nil), 4, "the ring keeps the allowed one too")

	// A proxy denial's own fix (made without the network) names it.
	hub.Add(decisionlog.Record{Source: decisionlog.SourceProxy, Verdict: decisionlog.Deny, Endpoint: idx, DestName: "p.example.test",
		DestPort: 443, Reason: "no-rule", Fix: verdict.Fix(verdict.Denial{Dest: "p.example.test", Port: 443})})
	last := hub.Recent(1, nil)[0]
	require.NotContains(t, last.Fix, "NETWORK")
	require.Contains(t, last.Fix, "`clawker-fw rules add "+last.Network+" p.example.test`")
}
