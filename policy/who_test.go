package policy

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWho(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	pol := &Policy{Allows: []Allowed{{Pattern: "a.test"}}}
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	snap := (&Snapshot{Endpoints: map[uint32]*Endpoint{
		1: {Index: 1, IP: ip("10.0.0.2"), Policy: pol},
		2: {Index: 2, IP: ip("10.0.0.3"), Pending: true},
		3: {Index: 3, IP: ip("10.0.0.4"), Policy: pol, LabelError: "clawker.allow: bad"},
		4: {Index: 4, IP: ip("10.0.0.5"), Policy: pol, LabelError: "clawker.allow: bad", BypassUntil: now.Add(time.Minute)},
		5: {Index: 5, IP: ip("10.0.0.6"), Pending: true, BypassUntil: now.Add(-time.Minute)},
		6: {Index: 6, IP: ip("10.0.0.7")}, // identified, no policy compiled: treated as pending
	}}).Index()
	tests := []struct {
		src    string
		state  Reason
		policy bool
		allows bool
		detail string
	}{
		{"10.0.0.2", "", true, true, ""},
		{"::ffff:10.0.0.2", "", true, true, ""},
		{"10.0.0.3", ReasonPending, false, false, ""},
		{"10.0.0.4", ReasonBadLabel, true, false, "clawker.allow: bad"},
		{"10.0.0.5", ReasonBypass, true, true, ""},
		{"10.0.0.6", ReasonPending, false, false, ""},
		{"10.0.0.7", ReasonPending, false, false, ""},
		{"10.0.0.99", ReasonUnknownPeer, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			w := snap.WhoIs(ip(tt.src), now)
			require.Equal(t, tt.state, w.State)
			require.Equal(t, tt.policy, w.Policy != nil)
			require.Equal(t, tt.detail, w.Detail)
			require.Equal(t, tt.allows, w.Policy.MatchName("a.test", 0, L4TCP).Allowed)
			require.Equal(t, tt.state != ReasonUnknownPeer, w.Endpoint != nil)
			if w.Endpoint != nil {
				require.Equal(t, w.Policy, w.Endpoint.Effective(now), "Effective is Who's policy")
			}
		})
	}
	// Own is the endpoint by its own rules: a bypass aside.
	own := snap.Endpoints[4].Own()
	require.Equal(t, ReasonBadLabel, own.State)
	require.Empty(t, snap.Endpoints[1].Own().State)
	require.Same(t, pol, snap.Endpoints[1].Own().Policy)
	require.Equal(t, ReasonBypass, State(now.Add(time.Second), "x", true, now), "a bypass wins")
	require.Equal(t, ReasonBadLabel, State(now, "x", true, now))
	require.Equal(t, ReasonPending, State(time.Time{}, "", true, now))
	require.Equal(t, Reason(""), State(now.Add(-time.Second), "", false, now))

	var none *Snapshot
	require.True(t, none.WhoIs(ip("10.0.0.2"), now).Pending(), "no snapshot yet: pending, not unknown")
}

// TestWhoNetwork: WhoIs names the asker's network for the fix texts, by its
// Docker name when known, else by its short id.
func TestWhoNetwork(t *testing.T) {
	const named, nameless = "0123456789abcdef0123", "fedcba9876543210fedc"
	snap := (&Snapshot{
		Networks: map[string]*Network{named: {ID: named, Name: "agents"}, nameless: {ID: nameless}},
		Endpoints: map[uint32]*Endpoint{
			1: {Index: 1, NetworkID: named, IP: netip.MustParseAddr("10.0.0.2"), Policy: &Policy{}},
			2: {Index: 2, NetworkID: nameless, IP: netip.MustParseAddr("10.0.1.2"), Pending: true},
		},
	}).Index()
	require.Equal(t, "agents", snap.WhoIs(netip.MustParseAddr("10.0.0.2"), time.Now()).Network)
	require.Equal(t, "fedcba987654", snap.WhoIs(netip.MustParseAddr("10.0.1.2"), time.Now()).Network, "pending too")
	require.Empty(t, snap.WhoIs(netip.MustParseAddr("10.9.9.9"), time.Now()).Network, "no endpoint, no network")
}

func TestAwait(t *testing.T) {
	now := time.Now
	src := netip.MustParseAddr("10.0.0.2")
	pending := (&Snapshot{Endpoints: map[uint32]*Endpoint{1: {Index: 1, IP: src, Pending: true}}}).Index()
	known := (&Snapshot{Endpoints: map[uint32]*Endpoint{1: {Index: 1, IP: src, Policy: &Policy{}}}}).Index()

	pub := &publisher{changed: make(chan struct{})}
	view := pub.view

	// Known at once: no wait.
	pub.publish(known)
	w, waited := Await(context.Background(), time.Minute, now, src, view)
	require.False(t, waited)
	require.Empty(t, w.State)

	// No snapshot, then a pending one, then the known one: it waits for it.
	pub.publish(nil)
	go func() {
		time.Sleep(20 * time.Millisecond)
		pub.publish(pending)
		time.Sleep(40 * time.Millisecond)
		pub.publish(known)
	}()
	start := time.Now()
	w, waited = Await(context.Background(), 5*time.Second, now, src, view)
	require.True(t, waited)
	require.Empty(t, w.State)
	require.Less(t, time.Since(start), 4*time.Second)

	// Bounded: still pending when the wait runs out, or ctx ends.
	pub.publish(pending)
	view3 := view
	start = time.Now()
	w, waited = Await(context.Background(), 50*time.Millisecond, now, src, view3)
	require.True(t, waited)
	require.True(t, w.Pending())
	require.NotNil(t, w.Endpoint)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w, _ = Await(ctx, time.Minute, now, src, view3)
	require.True(t, w.Pending())

	// Unknown is final: no wait.
	w, waited = Await(context.Background(), time.Minute, now, netip.MustParseAddr("10.0.0.9"), view3)
	require.False(t, waited)
	require.Equal(t, ReasonUnknownPeer, w.State)
}

// publisher swaps snapshots as the engines do: a new one, then the old
// channel closed.
type publisher struct {
	mu      sync.Mutex
	snap    *Snapshot
	changed chan struct{}
}

func (p *publisher) view() (*Snapshot, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snap, p.changed
}

func (p *publisher) publish(s *Snapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snap = s
	close(p.changed)
	p.changed = make(chan struct{})
}
