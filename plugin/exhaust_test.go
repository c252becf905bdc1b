package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// ranges returns a clawker.allow value of n tcp ranges of 256 ports to host.
func ranges(host string, n int) string {
	var items []string
	for i := 1; i <= n; i++ {
		items = append(items, fmt.Sprintf("tcp://%s:%d-%d", host, i*1000, i*1000+255))
	}
	return strings.Join(items, ",")
}

func (r *rig) identified(t *testing.T, ep string, pid int, c Container) uint32 {
	r.endpoint(t, ep, fmt.Sprintf("10.230.0.%d", pid%200+2))
	r.container(t, ep, pid, c)
	ip := fmt.Sprintf("10.230.0.%d", pid%200+2)
	require.Eventually(t, func() bool { return !r.policyOf(t, ip).Pending }, 5*time.Second, 10*time.Millisecond)
	return r.policyOf(t, ip).Index
}

func routed(m *model.Model, idx uint32, port uint16) bool {
	for _, rt := range m.RoutesOf(idx) {
		if rt.Port == port && rt.ListenerPort != 0 {
			return true
		}
	}
	return false
}

func (r *rig) kmodel() *model.Model {
	r.k.mu.Lock()
	defer r.k.mu.Unlock()
	return r.k.model
}

func failuresOf(m *model.Model, idx uint32) []model.FailReason {
	var out []model.FailReason
	for _, f := range m.Failures[idx] {
		out = append(out, f.Reason)
	}
	return out
}

// TestExhaustionFailsOneRuleAndRevocationsApply: a label asking for four
// 256-port ranges (authz off) gets its first range and fails the other
// three alone; its neighbours keep their routes; revocations (rules rm,
// container removal) still reach the data planes and release their ports;
// an exhausted pool fails only the rule that came last; a port that does not
// bind is withdrawn from BPF and the host guard.
func TestExhaustionFailsOneRuleAndRevocationsApply(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	_, err := r.p.AddRules(netA, []string{"tcp://rt.example.test:5432"})
	require.NoError(t, err)

	big := r.identified(t, "ep1", 501, Container{ID: cid(51), Name: "big", Labels: map[string]string{"clawker.allow": ranges("big.example.test", 4)}})
	ok := r.identified(t, "ep2", 502, Container{ID: cid(52), Name: "ok", Labels: map[string]string{"clawker.allow": "tcp://ok.example.test:22"}})

	m := r.kmodel()
	require.Equal(t, []model.FailReason{model.FailContainerLimit, model.FailContainerLimit, model.FailContainerLimit}, failuresOf(m, big))
	require.True(t, routed(m, big, 1000), "the first range fits the container's budget")
	require.True(t, routed(m, big, 1255))
	require.False(t, routed(m, big, 2000), "the ranges over the budget get no route")
	require.True(t, routed(m, ok, 22), "the neighbour is untouched")
	require.True(t, routed(m, ok, 5432), "so are the network's runtime rules")
	require.Empty(t, m.Failures[ok])

	nets, _, err := r.p.Networks()
	require.NoError(t, err)
	var status []string
	for _, ep := range nets[0].Endpoints {
		if ep.Index == big {
			status = ep.Failures
		}
	}
	require.Len(t, status, 3)
	require.Contains(t, status[0], "label clawker.allow=tcp://big.example.test:2000-2255")
	require.Contains(t, status[0], "container-port-limit")

	r.p.RecordKernelDenial(big, netip.MustParseAddr("10.220.0.16"), 2001, 6, "no-route")
	den := r.p.Denials.Recent()
	require.Contains(t, den[len(den)-1].Reason, "container-port-limit", "the denial says why the rule does not work")

	// Revocation while rules of another container cannot get ports.
	rtPort := listenerPortOf(t, m, model.DedicatedKey(policy.ProtoTCP, "rt.example.test", 5432))
	require.Contains(t, r.h.perBr[bridgeName(netA)].TCP, rtPort)
	require.NoError(t, r.p.RemoveRules(netA, []string{"tcp://rt.example.test:5432"}))
	m = r.kmodel()
	require.False(t, routed(m, ok, 5432), "rules rm reaches BPF")
	require.NotContains(t, r.h.perBr[bridgeName(netA)].TCP, rtPort, "and the host guard")
	require.False(t, r.p.st.Ports.Has(model.DedicatedKey(policy.ProtoTCP, "rt.example.test", 5432)), "its port is released")

	// Fill the pool: 256 (big) + 1 (ok) + 1 (web:443) + 2 x 256 leaves 130 free; the
	// next 201-port range fails alone with ports-exhausted.
	r.identified(t, "ep3", 503, Container{ID: cid(53), Name: "c3", Labels: map[string]string{"clawker.allow": ranges("c3.example.test", 1)}})
	r.identified(t, "ep4", 504, Container{ID: cid(54), Name: "c4", Labels: map[string]string{"clawker.allow": ranges("c4.example.test", 1)}})
	late := r.identified(t, "ep5", 505, Container{ID: cid(55), Name: "late", Labels: map[string]string{"clawker.allow": "tcp://c5.example.test:1000-1200,tcp://ok.example.test:22"}})
	m = r.kmodel()
	require.Equal(t, []model.FailReason{model.FailExhausted}, failuresOf(m, late))
	require.True(t, routed(m, late, 22), "the late container's other rule works")
	require.Equal(t, 130, r.p.st.Ports.Free(), "a failed range allocates nothing (web:443 of the network rule takes one)")

	// A runtime rule that does not fit in what is free is refused up
	// front, with a stable reason, and changes nothing.
	_, err = r.p.AddRules(netA, []string{"tcp://rt2.example.test:1-200"})
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonPortsExhausted, reason, "%v", err)
	_, rules, _ := r.p.RuntimeRules(netA)
	require.Empty(t, rules)

	// Removing the big container releases its ports: the late range fits.
	require.NoError(t, r.p.DeleteEndpoint(netA, "ep1"))
	m = r.kmodel()
	require.Empty(t, m.Failures[late])
	require.True(t, routed(m, late, 1000))

	// A listener that does not bind: its route is withdrawn and reported.
	okPort := listenerPortOf(t, m, model.DedicatedKey(policy.ProtoTCP, "ok.example.test", 22))
	r.dp.mu.Lock()
	r.dp.busy = map[uint16]bool{okPort: true}
	r.dp.mu.Unlock()
	require.Error(t, r.p.Reload(), "a bind failure is reported")
	m = r.kmodel()
	require.False(t, routed(m, ok, 22), "never steer to a port that is not listening")
	require.Equal(t, []model.FailReason{model.FailBind}, failuresOf(m, ok))
	require.NotContains(t, r.h.perBr[bridgeName(netA)].TCP, okPort)
	require.NotContains(t, r.h.bound.TCP, okPort)
	require.True(t, routed(m, late, 1000), "other routes stay")
}

func listenerPortOf(t *testing.T, m *model.Model, key string) uint16 {
	for _, l := range m.Listeners {
		if l.Key == key {
			return l.Port
		}
	}
	t.Fatalf("no listener %s", key)
	return 0
}

// TestPortLimitsAtCreateAndRulesAdd: network options and runtime rules that
// need more listener ports than a network may use are refused before
// anything is written, naming the option, with a stable reason.
func TestPortLimitsAtCreateAndRulesAdd(t *testing.T) {
	r := newRig(t)
	err := r.p.CreateNetwork(NetworkRequest{ID: netA, Options: map[string]string{"clawker.allow": ranges("n.example.test", 3)},
		Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24"})
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonPortLimit, reason)
	require.ErrorContains(t, err, "option clawker.allow=tcp://n.example.test:3000-3255")
	require.ErrorContains(t, err, "at most 512")
	nets, _, _ := r.p.Networks()
	require.Empty(t, nets)

	r.network(t, map[string]string{"clawker.allow": ranges("n.example.test", 1)})
	_, err = r.p.AddRules(netA, []string{"tcp://r.example.test:1-256", "tcp://r.example.test:300-301"})
	_, reason = ReasonOf(err)
	require.Equal(t, ReasonPortLimit, reason, "%v", err)
	require.ErrorContains(t, err, "tcp://r.example.test:300-301")
	_, rules, _ := r.p.RuntimeRules(netA)
	require.Empty(t, rules)
	_, err = r.p.AddRules(netA, []string{"tcp://r.example.test:1-256"})
	require.NoError(t, err, "exactly at the limit")
}

// Reload repairs what something else changed in the kernel's maps: the
// route sync that follows must read them whole, not compare with what it
// last wrote.
func TestReloadReadsKernelMapsWhole(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "api.example.test"})
	r.k.mu.Lock()
	require.Zero(t, r.k.forgotWritten, "no forget before a reload")
	r.k.mu.Unlock()
	require.NoError(t, r.p.Reload())
	r.k.mu.Lock()
	defer r.k.mu.Unlock()
	require.Equal(t, 1, r.k.forgotWritten)
	require.True(t, r.k.syncedAfterForget, "the reload's publish synced the routes after forgetting")
}
