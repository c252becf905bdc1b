package model

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	"github.com/clawker-fw/clawker-fw/policy"
)

// world is the evolving input of TestBuildEqualsReference: networks'
// rules and gateways, endpoints' networks, states and label rules.
type world struct {
	nets map[string]*worldNet
	eps  map[uint32]*worldEp
	// wide draws mostly ranges of about MaxRangePorts (to exhaust the pool).
	wide bool
}

type worldNet struct {
	gw     netip.Addr
	rules  []string // compact allow items
	denies []string
}

type worldEp struct {
	net    string
	state  string // "", "pending", "bad", "merged" (compiled whole, not layered on the base), "raw" (see snapshot)
	labels []string
}

// randomItem draws a compact allow item: names, wildcards, CIDRs and IPs
// from small pools (so rules enclose and repeat each other), every
// protocol, single ports and ranges (some wider than MaxRangePorts, some
// wide enough to exhaust the pool together).
func randomItem(r *rand.Rand, wide bool) string {
	dsts := []string{"a%d.t", ".w%d.t", "x.w%d.t", "10.%d.0.0/16", "10.9.9.%d", "d%d.t"}
	dst := fmt.Sprintf(dsts[r.IntN(len(dsts))], r.IntN(4))
	proto := []string{"", "", "http://", "tcp://", "udp://", "ssh://"}[r.IntN(6)]
	lo := []int{443, 80, 8443, 22, 5000, 6000}[r.IntN(6)] + r.IntN(3)
	if wide {
		return fmt.Sprintf("tcp://%s:%d-%d", dst, lo, lo+200+r.IntN(50))
	}
	switch r.IntN(6) {
	case 0:
		return proto + dst
	case 1, 2:
		return fmt.Sprintf("%s%s:%d-%d", proto, dst, lo, lo+[]int{2, 40, 230, 300}[r.IntN(4)])
	}
	return fmt.Sprintf("%s%s:%d", proto, dst, lo)
}

// mutate changes w a little: a rule added or removed, a network's
// gateway moved, an endpoint added, removed, moved or relabelled.
func (w *world) mutate(r *rand.Rand) {
	pick := func(n int) int { return r.IntN(n) }
	netIDs := []string{"n0", "n1", "n2"}
	id := netIDs[pick(3)]
	n := w.nets[id]
	if n == nil {
		n = &worldNet{gw: netip.AddrFrom4([4]byte{10, 100, byte(pick(3)), 1})}
		w.nets[id] = n
	}
	switch pick(9) {
	case 0, 1, 2:
		n.rules = append(n.rules, randomItem(r, w.wide && r.IntN(2) == 0))
	case 3:
		if len(n.rules) > 0 {
			i := pick(len(n.rules))
			n.rules = slices.Delete(n.rules, i, i+1)
		}
	case 4:
		n.denies = []string{fmt.Sprintf("a%d.t", pick(4)), fmt.Sprintf(".w%d.t", pick(4))}[:pick(3)]
	case 5:
		n.gw = netip.AddrFrom4([4]byte{10, 100, byte(pick(3)), 1})
	case 6:
		delete(w.nets, id)
	default:
		idx := uint32(1 + pick(8))
		if pick(5) == 0 {
			delete(w.eps, idx)
			return
		}
		ep := &worldEp{net: netIDs[pick(3)], state: []string{"", "", "", "pending", "bad", "merged", "raw"}[pick(7)]}
		for range pick(4) {
			ep.labels = append(ep.labels, randomItem(r, w.wide && r.IntN(2) == 0))
		}
		w.eps[idx] = ep
	}
}

// snapshot compiles w as the plugin does: each network's base, its
// endpoints' policies the base itself (no labels) or layered on it, some
// compiled whole (not layered: their routes are their own), pending and
// bad-label endpoints without one, and some with a policy made by hand.
func (w *world) snapshot(t *testing.T, ids *policy.IdentityTable, gen uint64) *policy.Snapshot {
	parse := func(items []string, action policy.Action, src policy.SourceKind) []policy.EgressRule {
		var out []policy.EgressRule
		for i, it := range items {
			rule, err := policy.ParseCompact(it, action)
			if err != nil {
				continue
			}
			rule.Source = policy.Provenance{Kind: src, Key: "clawker.allow", Item: fmt.Sprintf("%s#%d", it, i)}
			out = append(out, rule)
		}
		return out
	}
	snap := &policy.Snapshot{Generation: gen, Networks: map[string]*policy.Network{}, Endpoints: map[uint32]*policy.Endpoint{}}
	netRules := map[string][]policy.EgressRule{}
	for id, n := range w.nets {
		rules := append(parse(n.rules, policy.Allow, policy.SourceOption), parse(n.denies, policy.Deny, policy.SourceOption)...)
		netRules[id] = rules
		sn := &policy.Network{ID: id, Gateway: n.gw}
		if base, err := policy.Compile(policy.CompileInput{Network: rules, Generation: gen}, ids); err == nil {
			sn.Base = base
		}
		snap.Networks[id] = sn
	}
	for idx, ep := range w.eps {
		sep := &policy.Endpoint{Index: idx, NetworkID: ep.net}
		snap.Endpoints[idx] = sep
		n := snap.Networks[ep.net]
		labels := parse(ep.labels, policy.Allow, policy.SourceLabel)
		var err error
		switch {
		case ep.state == "pending":
			sep.Pending = true
		case ep.state == "bad" || n == nil || n.Base == nil:
			sep.LabelError = "bad"
		case ep.state == "raw":
			// What the parser refuses but Build must fail alone: a range
			// wider than MaxRangePorts, a tcp rule on a wildcard.
			sep.Policy = &policy.Policy{Allows: []policy.Allowed{
				{Identity: 901, Pattern: "r.t", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 1000, Hi: 1000 + uint16(len(labels)*100)}}},
				{Identity: 902, Pattern: ".w1.t", Ports: []policy.PortRange{{Proto: policy.ProtoTCP, Lo: 22, Hi: 22}, {Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}},
			}}
		case ep.state == "merged":
			sep.Policy, err = policy.Compile(policy.CompileInput{Network: netRules[ep.net], Label: labels, Generation: gen}, ids)
		case len(labels) == 0:
			sep.Policy = n.Base
		default:
			sep.Policy, err = policy.Layer(policy.NewBaseIndex(n.Base), labels, gen, ids)
		}
		if err != nil {
			sep.Policy, sep.LabelError = nil, err.Error()
		}
	}
	return snap.Index()
}

// TestBuildEqualsReference: over random sequences of snapshots (networks,
// endpoints and rules added and removed, gateways shared, every endpoint
// state, budgets small enough to fail ranges, ranges wide enough to
// exhaust the pool), Build gives exactly the model and leaves exactly the
// allocator that the reference Build (ref_test.go) does, step after step
// on the same allocator history.
func TestBuildEqualsReference(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 13))
	reasons := map[FailReason]int{}
	for seq := range 40 {
		w := &world{nets: map[string]*worldNet{}, eps: map[uint32]*worldEp{}}
		ids := policy.NewIdentityTable()
		got, want := NewPortAllocator(), NewPortAllocator()
		lim := DefaultLimits()
		if seq%3 == 1 {
			lim = Limits{PerContainer: 1 + r.IntN(4), PerNetwork: 2 + r.IntN(6)}
		} else if seq%3 == 2 {
			lim = Limits{PerContainer: 2000, PerNetwork: 2000}
			w.wide = true
		}
		for step := range 30 {
			for range 1 + r.IntN(3) {
				w.mutate(r)
			}
			snap := w.snapshot(t, ids, uint64(step+1))
			wm, err := refBuild(snap, want, lim)
			require.NoError(t, err)
			gm, err := BuildWithLimits(snap, got, lim)
			require.NoError(t, err)
			require.Equal(t, wm, gm, "sequence %d step %d", seq, step)
			require.Equal(t, want.ports, got.ports, "sequence %d step %d: allocator", seq, step)
			for _, fs := range gm.Failures {
				for _, f := range fs {
					reasons[f.Reason]++
				}
			}
		}
	}
	t.Logf("failures compared: %v", reasons)
	for _, r := range []FailReason{FailInvalid, FailContainerLimit, FailNetworkLimit, FailExhausted} {
		require.NotZero(t, reasons[r], "the sequences make %s failures", r)
	}
}

// scaleSnapshots returns bench/scale's network of 10,000 rules with n
// endpoints layered on it (their label rules), once as is and once with
// a runtime rule added: what a rule change hands Build.
func scaleSnapshots(b *testing.B, n int) [2]*policy.Snapshot {
	b.Helper()
	opts, _ := scalegen.NetworkOptions()
	cfg, err := policy.ParseNetworkOptions(opts, "scalenet")
	if err != nil {
		b.Fatal(err)
	}
	rt, err := policy.ParseRuntimeRule("rt.example.net", "scalenet")
	if err != nil {
		b.Fatal(err)
	}
	ids := policy.NewIdentityTable()
	var out [2]*policy.Snapshot
	for i, runtime := range [][]policy.EgressRule{nil, {rt}} {
		base, err := policy.Compile(policy.CompileInput{Network: cfg.Rules, Runtime: runtime, Generation: uint64(i + 1)}, ids)
		if err != nil {
			b.Fatal(err)
		}
		idx := policy.NewBaseIndex(base)
		snap := &policy.Snapshot{Generation: uint64(i + 1), Endpoints: map[uint32]*policy.Endpoint{},
			Networks: map[string]*policy.Network{"scalenet": {ID: "scalenet", Gateway: netip.MustParseAddr("10.50.0.1"), Base: base}}}
		for e := 1; e <= n; e++ {
			labels, err := policy.ParseLabels(scalegen.Labels(e), fmt.Sprintf("c%d", e))
			if err != nil {
				b.Fatal(err)
			}
			pol, err := policy.Layer(idx, labels, uint64(i+1), ids)
			if err != nil {
				b.Fatal(err)
			}
			snap.Endpoints[uint32(e)] = &policy.Endpoint{Index: uint32(e), NetworkID: "scalenet", Policy: pol}
		}
		out[i] = snap.Index()
	}
	return out
}

// BenchmarkBuildScale builds the listener model of bench/scale's network
// (10,000 rules) with 500 labelled endpoints, alternating between the
// snapshots before and after a runtime rule (a rule change), with the
// reference Build (as it was) and with Build, side by side.
func BenchmarkBuildScale(b *testing.B) {
	snaps := scaleSnapshots(b, 500)
	for _, impl := range []struct {
		name  string
		build func(*policy.Snapshot, *PortAllocator, Limits) (*Model, error)
	}{{"reference", refBuild}, {"build", BuildWithLimits}} {
		b.Run(impl.name, func(b *testing.B) {
			alloc := NewPortAllocator()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := impl.build(snaps[i%2], alloc, DefaultLimits()); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
