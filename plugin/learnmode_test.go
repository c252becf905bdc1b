package plugin

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/plugin/learn"
)

// TestLearnRecordsAndProposes: learn mode is a bypass (allow-all, the hooks
// pass the endpoint, enforcement returns when it ends) whose flows are
// recorded; stop ends it and proposes rules; check replays the flows on
// the network's rules.
func TestLearnRecordsAndProposes(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 701, Container{ID: cid(8), Name: "agent"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)

	rep, err := r.p.Learn("agent", time.Hour)
	require.NoError(t, err)
	require.True(t, rep.Active)
	ep := r.policyOf(t, "10.230.0.2")
	require.True(t, ep.Learn)
	eff := ep.Effective(time.Now())
	require.True(t, eff.AllowAll && eff.Learn)
	e, _ := r.k.get(701000)
	require.Equal(t, rep.Until, e.PassUntil.UTC(), "the hooks pass the endpoint as under bypass")

	idx := ep.Index
	now := time.Now()
	r.p.LearnResolved(idx, "tcp.example.test", []netip.Addr{netip.MustParseAddr("10.220.0.16")})
	r.p.LearnObserve(idx, learn.Observation{Time: now, Proto: learn.ProtoHTTPS, Name: "a.wild.example.test", Port: 443})
	r.p.LearnObserve(idx, learn.Observation{Time: now, Proto: learn.ProtoHTTPS, Name: "b.wild.example.test", Port: 443})
	r.p.LearnObserve(idx, learn.Observation{Time: now, Proto: learn.ProtoTCP, Addr: netip.MustParseAddr("10.220.0.16"), Port: 5432})
	r.p.LearnObserve(idx, learn.Observation{Time: now, Proto: learn.ProtoHTTP, Name: "path.example.test", Port: 80, Inspected: true, Method: "GET", Path: "/public/x"})
	r.p.LearnObserve(idx+1, learn.Observation{Time: now, Proto: learn.ProtoHTTPS, Name: "other.example.test", Port: 443})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	rep, err = r.p.LearnReport(ctx, "agent", true)
	require.NoError(t, err)
	require.True(t, rep.Active, "wait returns at the context's end while learning runs")

	rep, err = r.p.LearnStop("agent")
	require.NoError(t, err)
	require.False(t, rep.Active)
	require.Len(t, rep.Flows, 4)
	require.Equal(t, []string{"tcp://tcp.example.test:5432", ".wild.example.test"}, rep.Rules.Allow) // sorted by name: tcp < wild
	require.Len(t, rep.Rules.PathRules, 1)
	require.NotEmpty(t, rep.Warnings)
	ep = r.policyOf(t, "10.230.0.2")
	require.False(t, ep.Learn)
	require.True(t, ep.BypassUntil.IsZero())
	e, _ = r.k.get(701000)
	require.True(t, e.PassUntil.IsZero(), "enforcement returns")

	// Recording stopped with the session.
	r.p.LearnObserve(idx, learn.Observation{Time: now, Proto: learn.ProtoHTTPS, Name: "late.example.test", Port: 443})
	rep, err = r.p.LearnReport(context.Background(), cid(8)[:12], true)
	require.NoError(t, err)
	require.Len(t, rep.Flows, 4)

	res, err := r.p.LearnCheck(api.LearnCheckRequest{Container: "agent", Rules: rep.Rules.Rules, Flows: rep.Flows})
	require.NoError(t, err)
	require.Empty(t, res.Denied)
	require.Equal(t, 4, res.Checked)

	// Without the wildcard, its flows are denied; a flow the network's
	// option allows stays allowed.
	flows := append(rep.Flows, api.LearnFlow{Proto: "https", Name: "net.example.test", Port: 443})
	res, err = r.p.LearnCheck(api.LearnCheckRequest{Container: "agent", Rules: []json.RawMessage{json.RawMessage(`{"dst":"a.wild.example.test"}`)}, Flows: flows})
	require.NoError(t, err)
	var denied []string
	for _, d := range res.Denied {
		denied = append(denied, d.Flow.Name+" "+d.Reason)
	}
	require.ElementsMatch(t, []string{"b.wild.example.test no-rule", "path.example.test no-rule", "tcp.example.test no-rule"}, denied)

	_, err = r.p.LearnCheck(api.LearnCheckRequest{Container: "agent", Rules: []json.RawMessage{json.RawMessage(`{"dst":"a b"}`)}})
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonInvalidRule, reason)
	_, err = r.p.LearnReport(context.Background(), "nobody", false)
	_, reason = ReasonOf(err)
	require.Equal(t, ReasonContainerGone, reason)
}

// TestLearnEndsByItselfAndBypassEndsLearning: the dead-man timer ends
// learning like a bypass, and a plain bypass of a learning container ends
// its recording.
func TestLearnEndsByItselfAndBypassEndsLearning(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 702, Container{ID: cid(9), Name: "agent"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	_, err := r.p.Learn("agent", 300*time.Millisecond)
	require.NoError(t, err)
	rep, err := r.p.LearnReport(context.Background(), "agent", true)
	require.NoError(t, err)
	require.False(t, rep.Active)
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Learn }, 5*time.Second, 10*time.Millisecond)

	_, err = r.p.Learn("agent", time.Hour)
	require.NoError(t, err)
	_, err = r.p.Bypass("agent", time.Hour)
	require.NoError(t, err)
	rep, err = r.p.LearnReport(context.Background(), "agent", false)
	require.NoError(t, err)
	require.False(t, rep.Active)
	ep := r.policyOf(t, "10.230.0.2")
	require.False(t, ep.Learn)
	require.False(t, ep.BypassUntil.IsZero())
}
