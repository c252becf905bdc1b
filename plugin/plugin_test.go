package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Fakes at the kernel/netlink/Docker boundary: the state machine is what
// these tests prove; the real subsystems have their own privileged tests and
// the e2e suite joins them.

type fakeKernel struct {
	mu       sync.Mutex
	enrolled map[uint64]Enrollment
	model    *model.Model
	forgot   []uint32
	// forgotWritten counts ForgetWritten calls; syncedAfterForget is set by
	// a SyncRoutes that follows one.
	forgotWritten     int
	syncedAfterForget bool
}

func (k *fakeKernel) Enroll(c uint64, e Enrollment) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.enrolled[c] = e
	return nil
}
func (k *fakeKernel) Unenroll(c uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.enrolled, c)
	return nil
}
func (k *fakeKernel) SyncRoutes(m *model.Model) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.model = m
	k.syncedAfterForget = k.forgotWritten > 0
	return nil
}
func (k *fakeKernel) ForgetEndpoint(i uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.forgot = append(k.forgot, i)
	return nil
}
func (k *fakeKernel) ForgetWritten() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.forgotWritten++
}
func (k *fakeKernel) get(c uint64) (Enrollment, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.enrolled[c]
	return e, ok
}

type fakeHost struct {
	mu       sync.Mutex
	gone     map[string]bool
	bridges  map[string]bool // what the host carries, by bridge name
	networks map[string]bool
	eps      map[string]bool
	moved    map[string]int // host veth -> pid once "moved into the container"
	failNet  bool
	lost     map[string][]string // network ID -> guard pieces "removed by someone else"
	adds     int                 // AddNetwork + AddEndpoint calls
	bound    ListenerPorts
	perBr    map[string]ListenerPorts
}

func (h *fakeHost) SetListenerPorts(bound ListenerPorts, per map[string]ListenerPorts) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bound, h.perBr = bound, per
	return nil
}

func (h *fakeHost) AddNetwork(n *Network) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failNet {
		return fmt.Errorf("bridge: operation not permitted")
	}
	h.networks[n.ID] = true
	h.bridges[n.Bridge] = true
	delete(h.lost, n.ID)
	h.adds++
	return nil
}
func (h *fakeHost) RemoveNetwork(n *Network) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.networks, n.ID)
	delete(h.bridges, n.Bridge)
	return nil
}
func (h *fakeHost) AddEndpoint(n *Network, ep *Endpoint) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.eps[ep.HostVeth] = true
	h.adds++
	return nil
}
func (h *fakeHost) Missing(n *Network, eps []*Endpoint) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost[n.ID], nil
}
func (h *fakeHost) RemoveEndpoint(n *Network, ep *Endpoint) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.eps, ep.HostVeth)
	return nil
}
func (h *fakeHost) NetnsPid(ep *Endpoint) (int, bool, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pid, ok := h.moved[ep.HostVeth]
	return pid, ok, h.gone[ep.HostVeth], nil
}
func (h *fakeHost) RemoveOrphans(known map[string]bool) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var gone []string
	for br := range h.bridges {
		if !known[br] {
			delete(h.bridges, br)
			gone = append(gone, br)
		}
	}
	return gone, nil
}

func (h *fakeHost) NetnsCookie(path string) (uint64, error) {
	// A netns that exists at Join (Docker >= 28): SandboxNetnsDir/ready-<cookie>.
	if rest, ok := strings.CutPrefix(path, SandboxNetnsDir+"/ready-"); ok {
		return strconv.ParseUint(rest, 10, 64)
	}
	var pid int
	if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(path))), "%d", &pid); err != nil {
		return 0, err
	}
	return uint64(pid) * 1000, nil
}

type fakeDocker struct {
	mu         sync.Mutex
	containers map[string]Container
	images     map[string]map[string]string // image id -> labels
	imageErr   error
	given      map[string]map[string]string // container id -> labels its create gave
}

func (d *fakeDocker) Container(_ context.Context, id string) (Container, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[id]
	return c, ok, nil
}
func (d *fakeDocker) Running(context.Context) (map[string]bool, error) { return nil, nil }

// givenLabels stands in for authz's records of the labels each create gave.
func (d *fakeDocker) givenLabels(id string) (map[string]string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.given[id]
	return l, ok
}
func (d *fakeDocker) ImageLabels(_ context.Context, id string) (map[string]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.imageErr != nil {
		return nil, d.imageErr
	}
	return d.images[id], nil
}

type fakePlane struct {
	mu   sync.Mutex
	snap *policy.Snapshot
	// busy lists ports whose listeners "fail to bind".
	busy map[uint16]bool
}

func (f *fakePlane) Apply(s *policy.Snapshot, m *model.Model) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = s
	var be model.BindError
	for _, l := range m.Listeners {
		if f.busy[l.Port] {
			be.Failed = append(be.Failed, model.BindFailure{Listener: l, Err: "address already in use"})
		}
	}
	if len(be.Failed) > 0 {
		return &be
	}
	return nil
}

type rig struct {
	dir  string
	proc string
	k    *fakeKernel
	h    *fakeHost
	d    *fakeDocker
	dp   *fakePlane
	p    *Plugin
	// names, when set before start, resolves references as Docker does.
	names Names
	// scope, when set before start, is the driver's data scope.
	scope string
}

func newRig(t *testing.T) *rig {
	r := &rig{
		dir: t.TempDir(), proc: t.TempDir(),
		k:  &fakeKernel{enrolled: map[uint64]Enrollment{}},
		h:  &fakeHost{networks: map[string]bool{}, eps: map[string]bool{}, moved: map[string]int{}, gone: map[string]bool{}, bridges: map[string]bool{}, lost: map[string][]string{}},
		d:  &fakeDocker{containers: map[string]Container{}},
		dp: &fakePlane{},
	}
	procRoot = r.proc
	t.Cleanup(func() { procRoot = "/proc" })
	r.start(t)
	return r
}

func (r *rig) start(t *testing.T) {
	l := logrus.New()
	l.SetOutput(io.Discard)
	p, err := New(Config{StateDir: r.dir, Log: logrus.NewEntry(l), IdentifyTimeout: 5 * time.Second, GivenLabels: r.d.givenLabels, Names: r.names, Scope: r.scope}, r.k, r.h, r.dp, r.d)
	require.NoError(t, err)
	require.NoError(t, p.Start())
	r.p = p
	t.Cleanup(p.Close)
}

const netA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func cid(n int) string { return fmt.Sprintf("%064x", n) }

// container simulates Docker starting a container on an endpoint: its
// process appears in the host's /proc with a docker cgroup, and the veth
// moves into its netns.
func (r *rig) container(t *testing.T, epID string, pid int, c Container) {
	require.NoError(t, os.MkdirAll(filepath.Join(r.proc, fmt.Sprint(pid)), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(r.proc, fmt.Sprint(pid), "cgroup"), []byte("0::/docker/"+c.ID+"\n"), 0o644))
	if c.ImageID == "" {
		c.ImageID = "sha256:unlabelled" // Docker always lists one
	}
	r.d.mu.Lock()
	r.d.containers[c.ID] = c
	r.d.mu.Unlock()
	r.h.mu.Lock()
	r.h.moved[vethName("cfwh", epID)] = pid
	r.h.mu.Unlock()
}

func (r *rig) network(t *testing.T, opts map[string]string) {
	require.NoError(t, r.p.CreateNetwork(NetworkRequest{ID: netA, Options: opts, Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24"}))
}

func (r *rig) endpoint(t *testing.T, id, ip string) {
	mac, err := r.p.CreateEndpoint(EndpointRequest{NetworkID: netA, EndpointID: id, Address: ip + "/24"})
	require.NoError(t, err)
	require.NotEmpty(t, mac)
	_, err = r.p.Join(netA, id, "/var/run/docker/netns/x")
	require.NoError(t, err)
}

func (r *rig) policyOf(t *testing.T, ip string) *policy.Endpoint {
	ep, ok := r.p.Snapshot().EndpointByIP(netip.MustParseAddr(ip))
	require.True(t, ok)
	return ep
}

func TestBadOptionFailsCreateAndChangesNothing(t *testing.T) {
	r := newRig(t)
	before, err := os.ReadFile(filepath.Join(r.dir, "state.json"))
	require.NoError(t, err)
	err = r.p.CreateNetwork(NetworkRequest{ID: netA, Options: map[string]string{"clawker.allow": "exa mple.com"}, Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24"})
	require.ErrorContains(t, err, "clawker.allow")
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonInvalidRule, reason)
	require.Empty(t, r.h.networks)
	after, err := os.ReadFile(filepath.Join(r.dir, "state.json"))
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "state unchanged")

	r.h.failNet = true
	err = r.p.CreateNetwork(NetworkRequest{ID: netA, Options: map[string]string{"clawker.allow": "example.com"}, Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24"})
	require.ErrorContains(t, err, "operation not permitted")
	nets, _, err := r.p.Networks()
	require.NoError(t, err)
	require.Empty(t, nets, "a failed bring-up is undone")
}

func TestLabelsApplyPerContainerAndEnrollmentFollowsIdentity(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.endpoint(t, "ep2", "10.230.0.3")
	require.True(t, r.policyOf(t, "10.230.0.2").Pending, "unidentified endpoint is pending")

	r.container(t, "ep1", 101, Container{ID: cid(1), Name: "a", Labels: map[string]string{"clawker.allow": "only-a.example.test"}})
	r.container(t, "ep2", 102, Container{ID: cid(2), Name: "b"})
	require.Eventually(t, func() bool {
		return !r.policyOf(t, "10.230.0.2").Pending && !r.policyOf(t, "10.230.0.3").Pending
	}, 5*time.Second, 10*time.Millisecond)

	a := r.policyOf(t, "10.230.0.2").Policy
	b := r.policyOf(t, "10.230.0.3").Policy
	require.True(t, a.MatchName("only-a.example.test", 443, policy.L4TCP).Allowed)
	require.False(t, b.MatchName("only-a.example.test", 443, policy.L4TCP).Allowed, "label rules apply to that container only")
	require.True(t, b.MatchName("net.example.test", 443, policy.L4TCP).Allowed)

	e, ok := r.k.get(101000)
	require.True(t, ok, "enrolled by netns cookie")
	require.True(t, e.PassUntil.IsZero(), "identified endpoint is enforced, not passed through")
	require.Equal(t, netip.MustParseAddr("10.230.0.1"), e.Gateway)
}

func TestInvalidLabelLeavesNoEgress(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 201, Container{ID: cid(3), Name: "bad", Labels: map[string]string{"clawker.allow": "-bad-.example..test"}})
	require.Eventually(t, func() bool { return r.policyOf(t, "10.230.0.2").LabelError != "" }, 5*time.Second, 10*time.Millisecond)
	ep := r.policyOf(t, "10.230.0.2")
	require.Contains(t, ep.LabelError, "clawker.allow")
	require.False(t, ep.Effective(time.Now()).MatchName("net.example.test", 443, policy.L4TCP).Allowed, "no egress at all, even network rules")
}

func TestStateSurvivesRestart(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 301, Container{ID: cid(4), Name: "c"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	_, err := r.p.AddRules(netA[:12], []string{"runtime.example.test"})
	require.NoError(t, err)
	before := r.policyOf(t, "10.230.0.2").Policy
	idBefore := before.MatchName("runtime.example.test", 443, policy.L4TCP).Entry.Identity

	r.p.Close()
	r.k.enrolled = map[uint64]Enrollment{} // as if the pinned entry had been lost
	r.start(t)
	require.Eventually(t, func() bool { _, ok := r.k.get(301000); return ok }, 5*time.Second, 10*time.Millisecond, "re-enrolled after restart")
	after := r.policyOf(t, "10.230.0.2").Policy
	m := after.MatchName("runtime.example.test", 443, policy.L4TCP)
	require.True(t, m.Allowed, "runtime rules survive a restart")
	require.Equal(t, idBefore, m.Entry.Identity, "identities are persisted")
	require.True(t, r.h.networks[netA], "network restored")
}

func TestRuntimeRulesAddRemoveAndErrors(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	_, err := r.p.AddRules(netA, []string{"ok.example.test", "exa mple"})
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonInvalidRule, reason)
	_, rules, err := r.p.RuntimeRules(netA)
	require.NoError(t, err)
	require.Empty(t, rules, "a bad rule rejects the whole call and changes nothing")

	_, err = r.p.AddRules(netA, []string{"ok.example.test"})
	require.NoError(t, err)
	_, rules, _ = r.p.RuntimeRules(netA)
	require.Len(t, rules, 1)
	err = r.p.RemoveRules(netA, []string{"nope.example.test"})
	_, reason = ReasonOf(err)
	require.Equal(t, ReasonRuleNotFound, reason)
	require.NoError(t, r.p.RemoveRules(netA, []string{"ok.example.test"}))
	_, rules, _ = r.p.RuntimeRules(netA)
	require.Empty(t, rules)
	_, err = r.p.AddRules("nonexistent", []string{"x.example.test"})
	_, reason = ReasonOf(err)
	require.Equal(t, ReasonNetworkNotFound, reason)
}

func TestBypassExpiresEvenAcrossRestart(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 401, Container{ID: cid(5), Name: "byp"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	until, err := r.p.Bypass("byp", 400*time.Millisecond)
	require.NoError(t, err)
	require.True(t, r.policyOf(t, "10.230.0.2").Effective(time.Now()).AllowAll)
	e, _ := r.k.get(401000)
	require.Equal(t, until, e.PassUntil.UTC())

	r.p.Close()
	r.start(t)
	require.Eventually(t, func() bool {
		ep := r.policyOf(t, "10.230.0.2")
		e, ok := r.k.get(401000)
		return ep.BypassUntil.IsZero() && ok && e.PassUntil.IsZero()
	}, 5*time.Second, 20*time.Millisecond, "enforcement returns by itself after a restart")
}

func TestDeleteCleansUp(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "x.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 501, Container{ID: cid(6), Name: "d"})
	require.Eventually(t, func() bool { _, ok := r.k.get(501000); return ok }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, r.p.Leave(netA, "ep1"))
	require.NoError(t, r.p.DeleteEndpoint(netA, "ep1"))
	require.NoError(t, r.p.DeleteNetwork(netA))
	_, ok := r.k.get(501000)
	require.False(t, ok)
	require.Empty(t, r.h.eps)
	require.Empty(t, r.h.networks)
	require.Empty(t, r.p.Snapshot().Endpoints)
	require.Empty(t, r.k.model.Routes)
	require.Empty(t, r.k.model.BaseRoutes, "a network that goes takes its base routes")
	require.Empty(t, r.k.model.Layered)
}

func TestStaleContainerCleanedOnRestart(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 601, Container{ID: cid(7), Name: "gone"})
	require.Eventually(t, func() bool { _, ok := r.k.get(601000); return ok }, 5*time.Second, 10*time.Millisecond)
	r.p.Close()
	// The container stops while the plugin is down: its veth disappears.
	r.h.mu.Lock()
	delete(r.h.moved, vethName("cfwh", "ep1"))
	r.h.gone[vethName("cfwh", "ep1")] = true
	r.h.mu.Unlock()
	r.start(t)
	require.Eventually(t, func() bool { _, ok := r.k.get(601000); return !ok }, 5*time.Second, 10*time.Millisecond, "stale enrollment dropped")
	nets, _, err := r.p.Networks()
	require.NoError(t, err)
	require.False(t, nets[0].Endpoints[0].Enrolled)
}

func TestDriverHTTP(t *testing.T) {
	r := newRig(t)
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := httptest.NewServer(Handler(r.p, nil, logrus.NewEntry(l)))
	defer srv.Close()
	post := func(path, body string) map[string]any { return postJSON(t, srv.URL+path, []byte(body)) }
	act := post("/Plugin.Activate", "")
	require.ElementsMatch(t, []any{"NetworkDriver", "authz"}, act["Implements"])
	require.Equal(t, "local", post("/NetworkDriver.GetCapabilities", "")["Scope"])

	bad := post("/NetworkDriver.CreateNetwork", `{"NetworkID":"`+netA+`","Options":{"com.docker.network.generic":{"clawker.allow":"exa mple"}},"IPv4Data":[{"Pool":"10.230.0.0/24","Gateway":"10.230.0.1/24"}]}`)
	require.Contains(t, bad["Err"], "clawker.allow")
	ok := post("/NetworkDriver.CreateNetwork", `{"NetworkID":"`+netA+`","Options":{"com.docker.network.generic":{"clawker.allow":"x.example.test"}},"IPv4Data":[{"Pool":"10.230.0.0/24","Gateway":"10.230.0.1/24"}]}`)
	require.Empty(t, ok["Err"])
	ep := post("/NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netA+`","EndpointID":"e1","Interface":{"Address":"10.230.0.2/24"}}`)
	require.Equal(t, "02:42:0a:e6:00:02", ep["Interface"].(map[string]any)["MacAddress"])
	join := post("/NetworkDriver.Join", `{"NetworkID":"`+netA+`","EndpointID":"e1","SandboxKey":"/var/run/docker/netns/abc"}`)
	require.Equal(t, "10.230.0.1", join["Gateway"], "a bare IP, not a CIDR")
	require.Equal(t, true, join["DisableGatewayService"])
	require.Equal(t, "eth", join["InterfaceName"].(map[string]any)["DstPrefix"])
	require.Empty(t, post("/NetworkDriver.Leave", `{"NetworkID":"`+netA+`","EndpointID":"e1"}`)["Err"])
	require.Empty(t, post("/NetworkDriver.DeleteEndpoint", `{"NetworkID":"`+netA+`","EndpointID":"e1"}`)["Err"])
	require.Empty(t, post("/NetworkDriver.DeleteNetwork", `{"NetworkID":"`+netA+`"}`)["Err"])
	require.Contains(t, post("/NetworkDriver.CreateNetwork", `{"NetworkID":"x","IPv4Data":[]}`)["Err"], "IPv4 subnet")
}

func TestOrphanedNetworkRemovedAtStart(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	r.p.Close()
	r.h.mu.Lock()
	r.h.bridges["cfw-0123456789a"] = true // removed from Docker while the plugin was down
	r.h.mu.Unlock()
	r.start(t)
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	require.False(t, r.h.bridges["cfw-0123456789a"], "orphan removed")
	require.True(t, r.h.bridges[bridgeName(netA)], "known network kept")
}

func TestAliasesRefreshedAfterStart(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 701, Container{ID: cid(8), Name: "web"})
	require.Eventually(t, func() bool { return r.policyOf(t, "10.230.0.2").ContainerName == "web" }, 5*time.Second, 10*time.Millisecond)
	// Docker fills --network-alias names only once the container started.
	r.d.mu.Lock()
	r.d.containers[cid(8)] = Container{ID: cid(8), Name: "web", Aliases: []string{"frontend"}}
	r.d.mu.Unlock()
	require.Eventually(t, func() bool {
		a := r.policyOf(t, "10.230.0.2").Aliases
		return len(a) == 1 && a[0] == "frontend"
	}, 5*time.Second, 20*time.Millisecond)
}

func TestRepairHostRestoresLostGuards(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.endpoint(t, "ep2", "10.230.0.3")

	repaired, err := r.p.RepairHost()
	require.NoError(t, err)
	require.Empty(t, repaired, "nothing lost, nothing done")
	r.h.mu.Lock()
	before := r.h.adds
	r.h.lost[netA] = []string{"inet clawker_fw in_x", "bridge clawker_fw ep_y"}
	r.h.mu.Unlock()

	repaired, err = r.p.RepairHost()
	require.NoError(t, err)
	require.Equal(t, []string{"network " + netA[:12] + ": inet clawker_fw in_x, bridge clawker_fw ep_y"}, repaired)
	r.h.mu.Lock()
	require.Equal(t, before+3, r.h.adds, "the network and both endpoints guarded again")
	require.Empty(t, r.h.lost[netA])
	r.h.mu.Unlock()
	repaired, err = r.p.RepairHost()
	require.NoError(t, err)
	require.Empty(t, repaired)
	st := r.p.HostGuard()
	require.Equal(t, 3, st.Checks)
	require.Equal(t, 1, st.Restores)
	require.Contains(t, st.Summary(time.Now()), "restored 1 time(s), last ")
	require.Contains(t, st.Summary(time.Now()), "was missing: network "+netA[:12]+": inet clawker_fw in_x")
	require.Equal(t, "not checked yet", HostGuardStatus{}.Summary(time.Now()))
	require.Equal(t, "intact", HostGuardStatus{Checks: 2}.Summary(time.Now()))
	require.Equal(t, "check failed: boom", HostGuardStatus{Checks: 2, Restores: 1, Err: "boom"}.Summary(time.Now()))
}

type recordingAuthz struct{ reqLen, resLen int }

func (a *recordingAuthz) AuthZReq(body []byte) any {
	a.reqLen = len(body)
	return map[string]any{"Allow": true}
}
func (a *recordingAuthz) AuthZRes(body []byte) any {
	a.resLen = len(body)
	return map[string]any{"Allow": true}
}

// TestAuthzBodySizes: an oversized request is refused unread; an oversized
// response (docker ps on a big host) is decided from its first maxBody
// bytes instead of failing the user's call.
func TestAuthzBodySizes(t *testing.T) {
	r := newRig(t)
	l := logrus.New()
	l.SetOutput(io.Discard)
	az := &recordingAuthz{}
	srv := httptest.NewServer(Handler(r.p, az, logrus.NewEntry(l)))
	defer srv.Close()
	post := func(path string, body []byte) map[string]any { return postJSON(t, srv.URL+path, body) }
	small := []byte(`{"RequestMethod":"GET","RequestUri":"/v1.41/containers/json"}`)
	require.Equal(t, true, post("/AuthZPlugin.AuthZReq", small)["Allow"])
	require.Equal(t, len(small), az.reqLen)
	huge := bytes.Repeat([]byte("x"), maxBody+100)
	out := post("/AuthZPlugin.AuthZReq", huge)
	require.Equal(t, false, out["Allow"])
	require.Contains(t, out["Err"], "larger than")
	require.Equal(t, true, post("/AuthZPlugin.AuthZRes", huge)["Allow"])
	require.Equal(t, maxBody, az.resLen, "the response phase sees the body's start")
}

// postJSON posts body to url and decodes the JSON answer.
func postJSON(t *testing.T, url string, body []byte) map[string]any {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// TestStateWrittenOncePerMutation: a mutation writes state.json once and
// compiles the policy once (commit writes and compiles the generation
// publish then serves; a rule added is validated by compiling the
// network's rules through the Compiler, and commit takes that compile
// from it), and what is on disk is the generation that was
// published.
func TestStateWrittenOncePerMutation(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 301, Container{ID: cid(4), Name: "c"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	onDisk := func() uint64 {
		st, err := loadState(r.p.statePath())
		require.NoError(t, err)
		return st.Generation
	}
	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"add a rule", func() error { _, err := r.p.AddRules(netA, []string{"tcp://once.example.test:5432"}); return err }},
		{"remove it", func() error { return r.p.RemoveRules(netA, []string{"tcp://once.example.test:5432"}) }},
		{"a commit with no publish, then one with", func() error {
			err := r.p.q.Do(r.p.ctx, queue.KindMutate, func() error { return r.p.commit(r.p.st.clone()) })
			require.NoError(t, err)
			_, status, err := r.p.Networks()
			require.NoError(t, err)
			require.Equal(t, r.p.Snapshot().Generation, status, "a commit alone does not move the status generation")
			_, err = r.p.AddRules(netA, []string{"tcp://twice.example.test:5432"})
			return err
		}},
	} {
		before, builds, gen := r.p.saves.Load(), r.p.builds.Load(), r.p.Snapshot().Generation
		bases := r.p.compiler.baseCompiles.Load() + r.p.compiler.basePatches.Load()
		require.NoError(t, step.do(), step.name)
		require.Equal(t, int64(1), r.p.compiler.baseCompiles.Load()+r.p.compiler.basePatches.Load()-bases,
			"%s: the network's rules compiled (or patched) once (validation and commit)", step.name)
		writes := int64(1)
		if strings.HasPrefix(step.name, "a commit with no publish") {
			writes = 2
		}
		require.Equal(t, writes, r.p.saves.Load()-before, "%s: state.json written once per mutation", step.name)
		require.Equal(t, writes, r.p.builds.Load()-builds, "%s: the policy compiled once per mutation", step.name)
		require.Equal(t, gen+1, r.p.Snapshot().Generation, step.name)
		require.Equal(t, r.p.Snapshot().Generation, onDisk(), "%s: the published generation is the one on disk", step.name)
		_, status, err := r.p.Networks()
		require.NoError(t, err)
		require.Equal(t, r.p.Snapshot().Generation, status, "%s: status reports the published generation", step.name)
	}
}
