package dns

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// writers holds one SnapshotWriter per path, as the plugin process has.
var writers sync.Map

// writeSnapshot writes snap the way the plugin process does
// (SnapshotWriter: the head and the bases it names).
func writeSnapshot(t testing.TB, path string, snap *policy.Snapshot) {
	t.Helper()
	w, _ := writers.LoadOrStore(path, &SnapshotWriter{Path: path})
	require.NoError(t, w.(*SnapshotWriter).Publish(snap))
}

// writeJSONSnapshot writes snap in the older JSON form (temp, rename).
func writeJSONSnapshot(t testing.TB, path string, snap *policy.Snapshot) {
	t.Helper()
	b, err := EncodeSnapshot(snap)
	require.NoError(t, err)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*")
	require.NoError(t, err)
	_, err = tmp.Write(b)
	require.NoError(t, err)
	require.NoError(t, tmp.Close())
	require.NoError(t, os.Rename(tmp.Name(), path))
}

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot.json")
	store := NewStore()
	logs := &logRecorder{}
	w := NewWatcher(path, 20*time.Millisecond, store, logs)

	// No file yet: nothing served, one warning.
	w.Start()
	defer w.Stop()
	_, ok := store.Generation()
	require.False(t, ok)

	writeSnapshot(t, path, testSnapshot(7, "127.0.0.1:1"))
	require.Eventually(t, func() bool { g, _ := store.Generation(); return g == 7 }, time.Second, 5*time.Millisecond)
	snap, _ := store.Load()
	ep, ok := snap.EndpointByIP(mustAddr(ep1IP))
	require.True(t, ok, "decoded snapshot is indexed")
	require.Equal(t, uint32(1), ep.Index)

	// A broken file keeps the served generation.
	require.NoError(t, os.WriteFile(path+".tmp", []byte("{not json"), 0o644))
	require.NoError(t, os.Rename(path+".tmp", path))
	require.Eventually(t, func() bool { return hasLine(logs.Lines(), "ERROR", "decode snapshot") }, 5*time.Second, 5*time.Millisecond,
		"%v", logs.Lines())
	g, _ := store.Generation()
	require.Equal(t, uint64(7), g)

	// The next good rewrite is picked up.
	_, changed := store.Load()
	writeSnapshot(t, path, testSnapshot(8, "127.0.0.1:1"))
	select {
	case <-changed:
	case <-time.After(time.Second):
		t.Fatal("no swap within 1s")
	}
	g, _ = store.Generation()
	require.Equal(t, uint64(8), g)

	// The older JSON form at the path (a file a plugin before the binary
	// form left) is read as before.
	writeJSONSnapshot(t, path, testSnapshot(9, "127.0.0.1:1"))
	require.Eventually(t, func() bool { g, _ := store.Generation(); return g == 9 }, 5*time.Second, 5*time.Millisecond)
	snap, _ = store.Load()
	require.True(t, snap.Endpoints[1].Policy.MatchName("api.example.test", 0, 0).Allowed)
}

func TestStoreIndexesNames(t *testing.T) {
	store := NewStore()
	store.Publish(testSnapshot(1, "127.0.0.2"))
	st := store.view()
	require.Equal(t, uint32(1), st.names[nameKey{"n1", "web"}].Index)
	require.Equal(t, uint32(1), st.names[nameKey{"n1", "frontend"}].Index)
	require.Equal(t, uint32(4), st.names[nameKey{"n2", "other"}].Index)
	require.Equal(t, "web.agents.", st.ptr[mustAddr(ep1IP)])
	require.Equal(t, []string{"127.0.0.2:53"}, st.upstreams["n2"])
}

// layeredSnapshot is what the plugin publishes for one network with a
// compiled base: an endpoint without labels shares the base, one with
// labels carries the merged policy and its labels compiled alone, one is
// pending, one has a label error, one carries a policy without layers.
func layeredSnapshot(t *testing.T) *policy.Snapshot {
	t.Helper()
	cfg, err := policy.ParseNetworkOptions(map[string]string{
		"clawker.allow": ".example.com,api.example.com,shared.test,10.0.0.0/8",
		"clawker.deny":  "bad.example.com,10.9.0.0/16",
	}, "n1")
	require.NoError(t, err)
	lab, err := policy.ParseLabels(map[string]string{
		"clawker.allow": "x.api.example.com,.label.test,shared.test,ok.bad.example.com",
		"clawker.deny":  "svc.example.com,secret.label.test,10.1.0.0/16",
	}, "c2")
	require.NoError(t, err)
	ids := policy.NewIdentityTable()
	compile := func(in policy.CompileInput) *policy.Policy {
		in.Generation = 3
		p, err := policy.Compile(in, ids)
		require.NoError(t, err)
		return p
	}
	base := compile(policy.CompileInput{Network: cfg.Rules})
	merged := compile(policy.CompileInput{Network: cfg.Rules, Label: lab})
	labels := compile(policy.CompileInput{Label: lab})
	solo := compile(policy.CompileInput{Label: lab})
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	return &policy.Snapshot{Generation: 3,
		Networks: map[string]*policy.Network{"n1": {ID: "n1", Name: "net", Subnet: netip.MustParsePrefix("10.77.0.0/24"),
			Gateway: ip("10.77.0.1"), Base: base}},
		Endpoints: map[uint32]*policy.Endpoint{
			1: {Index: 1, NetworkID: "n1", IP: ip("10.77.0.2"), ContainerID: "c1", Policy: base},
			2: {Index: 2, NetworkID: "n1", IP: ip("10.77.0.3"), ContainerID: "c2", Policy: merged, Labels: labels},
			3: {Index: 3, NetworkID: "n1", IP: ip("10.77.0.4"), Pending: true},
			4: {Index: 4, NetworkID: "n1", IP: ip("10.77.0.5"), ContainerID: "c4", LabelError: "clawker.allow: bad"},
			5: {Index: 5, NetworkID: "n1", IP: ip("10.77.0.6"), ContainerID: "c5", Policy: solo},
		}}
}

// TestSnapshotFileLayers: the file carries a network's base policy once
// and each endpoint only what differs from it; what the sidecar decodes
// answers every name and address as the plugin's merged policies do.
func TestSnapshotFileLayers(t *testing.T) {
	snap := layeredSnapshot(t)
	b, err := EncodeSnapshot(snap)
	require.NoError(t, err)
	// The base's rules are written once, though two endpoints use it.
	require.Equal(t, 1, strings.Count(string(b), `"item":"api.example.com"`), "%s", b)
	back, err := DecodeSnapshot(b)
	require.NoError(t, err)
	require.Same(t, back.Networks["n1"].Base, back.Endpoints[1].Policy, "endpoints without labels share the base")
	require.Same(t, back.Networks["n1"].Base, back.Endpoints[2].Policy.Base)
	require.True(t, back.Endpoints[3].Pending)
	require.Nil(t, back.Endpoints[3].Policy)
	require.Equal(t, "clawker.allow: bad", back.Endpoints[4].LabelError)

	names := []string{"example.com", "api.example.com", "x.api.example.com", "svc.example.com", "a.svc.example.com",
		"shared.test", "label.test", "q.label.test", "secret.label.test", "bad.example.com", "ok.bad.example.com", "none.org"}
	allowed := 0
	for idx, ep := range snap.Endpoints {
		got := back.Endpoints[idx]
		require.NotNil(t, got, "endpoint %d", idx)
		require.Equal(t, ep.IP, got.IP)
		require.Equal(t, ep.Who(time.Now()).State, got.Who(time.Now()).State, "endpoint %d", idx)
		for _, name := range names {
			want, have := ep.Policy.MatchName(name, 0, 0), got.Policy.MatchName(name, 0, 0)
			require.Equal(t, want.Allowed, have.Allowed, "endpoint %d %s", idx, name)
			require.Equal(t, want.Reason, have.Reason, "endpoint %d %s", idx, name)
			if want.Entry != nil {
				require.Equal(t, want.Entry.Identity, have.Entry.Identity, "endpoint %d %s", idx, name)
			}
			if want.Allowed {
				allowed++
			}
		}
		for _, a := range []string{"10.1.2.3", "10.9.1.1", "10.2.0.1"} {
			addr := netip.MustParseAddr(a)
			require.Equal(t, ep.Policy.DeniedAddr(addr) == nil, got.Policy.DeniedAddr(addr) == nil, "endpoint %d %s", idx, a)
		}
	}
	require.Greater(t, allowed, 10)

	// The older form (every endpoint's full policy) still reads.
	old, err := json.Marshal(snap)
	require.NoError(t, err)
	back, err = DecodeSnapshot(old)
	require.NoError(t, err)
	require.True(t, back.Endpoints[2].Policy.MatchName("x.api.example.com", 0, 0).Allowed)
	require.False(t, back.Endpoints[1].Policy.MatchName("x.label.test", 0, 0).Allowed)

	// An endpoint referring to a base its network lacks fails the file
	// (the served generation is kept), never an endpoint without policy.
	broken := strings.Replace(string(b), `"base":{`, `"nobase":{`, 1)
	_, err = DecodeSnapshot([]byte(broken))
	require.ErrorContains(t, err, "no base policy")
}
