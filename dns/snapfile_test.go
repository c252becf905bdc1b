package dns

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// genWorld is a network of generated rules the way bench/scale builds
// them (names, wildcards, CIDRs, path rules, plain http, tcp/udp, name
// and CIDR denies), compiled as the plugin compiles them: the base once,
// each labelled endpoint's labels layered on it (policy.Layer).
type genWorld struct {
	ids     *policy.IdentityTable
	cfg     policy.NetworkConfig
	runtime []policy.EgressRule
	base    *policy.BaseIndex
	names   []string // names worth asking
}

func newGenWorld(t testing.TB, scale int) *genWorld {
	t.Helper()
	var allow, deny, full, names []string
	for i := range 6 * scale {
		n := fmt.Sprintf("h%d.svc%d.example.com", i, i%97)
		allow, names = append(allow, n), append(names, n, "x."+n)
	}
	for i := range 3 * scale {
		allow = append(allow, fmt.Sprintf(".z%d.example.io", i))
		names = append(names, fmt.Sprintf("z%d.example.io", i), fmt.Sprintf("api.z%d.example.io", i))
	}
	for i := range scale / 2 {
		allow = append(allow, fmt.Sprintf("100.%d.%d.0/24", 64+i/256, i%256))
	}
	for i := range scale / 10 {
		allow = append(allow, fmt.Sprintf("http://plain%d.example.net", i), fmt.Sprintf("tcp://db%d.example.net:%d", i, 5000+i))
		names = append(names, fmt.Sprintf("plain%d.example.net", i), fmt.Sprintf("db%d.example.net", i))
	}
	for i := range scale / 5 {
		deny = append(deny, fmt.Sprintf("bad%d.z%d.example.io", i, i))
		names = append(names, fmt.Sprintf("bad%d.z%d.example.io", i, i), fmt.Sprintf("q.bad%d.z%d.example.io", i, i))
		full = append(full, fmt.Sprintf(`{"dst":"api%d.paths.test","paths":[{"path":"/v1/","methods":["GET"]}]}`, i))
		names = append(names, fmt.Sprintf("api%d.paths.test", i))
	}
	deny = append(deny, "100.64.3.0/24", "100.65.0.0/16")
	names = append(names, "example.com", "example.io", "nothing.test", "svc1.example.com")
	cfg, err := policy.ParseNetworkOptions(map[string]string{
		"clawker.allow": strings.Join(allow, ","),
		"clawker.deny":  strings.Join(deny, ","),
		"clawker.rules": "[" + strings.Join(full, ",") + "]",
	}, "gen")
	require.NoError(t, err)
	g := &genWorld{ids: policy.NewIdentityTable(), cfg: cfg, names: names}
	g.compileBase(t, 1)
	return g
}

func (g *genWorld) compileBase(t testing.TB, gen uint64) {
	t.Helper()
	p, err := policy.Compile(policy.CompileInput{Network: g.cfg.Rules, Runtime: g.runtime, Settings: g.cfg.Settings, Generation: gen}, g.ids)
	require.NoError(t, err)
	g.base = policy.NewBaseIndex(p)
}

func genLabels(i int) map[string]string {
	return map[string]string{
		"clawker.allow": fmt.Sprintf("e%d.agent.test,pkg%d.agent.test,.team%d.example.org,.svc%d.example.com,100.64.0.0/12", i, i, i, i%97),
		"clawker.deny":  fmt.Sprintf("secret.team%d.example.org,h%d.svc%d.example.com", i, i+1, (i+1)%97),
		"clawker.rules": fmt.Sprintf(`[{"dst":"api.e%d.test","paths":[{"path":"/v2/"}]}]`, i),
	}
}

func genLabelNames(i int) []string {
	return []string{fmt.Sprintf("e%d.agent.test", i), fmt.Sprintf("pkg%d.agent.test", i), fmt.Sprintf("x.team%d.example.org", i),
		fmt.Sprintf("secret.team%d.example.org", i), fmt.Sprintf("h%d.svc%d.example.com", i+1, (i+1)%97),
		fmt.Sprintf("zz.svc%d.example.com", i%97), fmt.Sprintf("api.e%d.test", i)}
}

// snapshot is generation gen with n labelled endpoints, and besides them
// an unlabelled one (the base), a pending one, one with a label error, a
// bypassed one in learn mode and one with a policy without layers.
func (g *genWorld) snapshot(t testing.TB, gen uint64, n int) *policy.Snapshot {
	t.Helper()
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)}) }
	snap := &policy.Snapshot{Generation: gen,
		Networks: map[string]*policy.Network{
			"gen": {ID: "gen", Name: "agents", Bridge: "br-gen", Subnet: netip.MustParsePrefix("10.50.0.0/16"),
				Gateway: ip(1), Settings: policy.NetworkSettings{DNSUpstreams: []string{"192.0.2.53:53"}, InspectAll: true}, Base: g.base.Policy()},
			"empty": {ID: "empty", Bridge: "br-empty"},
		},
		Endpoints: map[uint32]*policy.Endpoint{}}
	for i := 1; i <= n; i++ {
		lab, err := policy.ParseLabels(genLabels(i), fmt.Sprintf("c%d", i))
		require.NoError(t, err)
		pol, err := policy.Layer(g.base, lab, gen, g.ids)
		require.NoError(t, err)
		_, own := pol.Layers()
		snap.Endpoints[uint32(i)] = &policy.Endpoint{Index: uint32(i), ID: fmt.Sprintf("ep%d", i), NetworkID: "gen", IP: ip(i + 1),
			MAC: "02:42:0a:32:00:01", ContainerID: fmt.Sprintf("c%d", i), ContainerName: fmt.Sprintf("/agent%d", i),
			Aliases: []string{fmt.Sprintf("a%d", i), "alias"}, Policy: pol, Labels: own}
	}
	full, err := policy.Compile(policy.CompileInput{Network: g.cfg.Rules[:50], Generation: gen}, g.ids)
	require.NoError(t, err)
	extra := []*policy.Endpoint{
		{ID: "plain", ContainerID: "cp", ContainerName: "plain", Policy: g.base.Policy()},
		{ID: "pending", Pending: true},
		{ID: "badlabel", ContainerID: "cb", LabelError: "clawker.allow: bad"},
		{ID: "learn", ContainerID: "cl", BypassUntil: time.Unix(4000000000, 123), Learn: true, Policy: g.base.Policy()},
		{ID: "full", ContainerID: "cf", Policy: full},
	}
	for k, ep := range extra {
		idx := uint32(1000 + k)
		ep.Index, ep.NetworkID, ep.IP = idx, "gen", ip(1000+k)
		snap.Endpoints[idx] = ep
	}
	return snap.Index()
}

// requireSameDecisions checks that back answers every endpoint's
// questions exactly as snap: who is asking, and for each name DNS's
// MatchName(name, 0, 0) (verdict, reason, identity, pattern and the rule
// the denial names), and the address denies.
func requireSameDecisions(t *testing.T, snap, back *policy.Snapshot, names []string) {
	t.Helper()
	require.Equal(t, snap.Generation, back.Generation)
	require.Len(t, back.Networks, len(snap.Networks))
	for id, n := range snap.Networks {
		b := back.Networks[id]
		require.NotNil(t, b, id)
		require.Equal(t, []any{n.ID, n.Name, n.Bridge, n.Subnet, n.Gateway, n.Settings}, []any{b.ID, b.Name, b.Bridge, b.Subnet, b.Gateway, b.Settings})
		require.Equal(t, n.Base == nil, b.Base == nil, id)
	}
	require.Len(t, back.Endpoints, len(snap.Endpoints))
	now := time.Now()
	addrs := []netip.Addr{netip.MustParseAddr("100.64.3.9"), netip.MustParseAddr("100.65.1.1"), netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("8.8.8.8")}
	checked := 0
	for idx, ep := range snap.Endpoints {
		got := back.Endpoints[idx]
		require.NotNil(t, got, "endpoint %d", idx)
		require.Equal(t, []any{ep.Index, ep.ID, ep.NetworkID, ep.IP, ep.MAC, ep.ContainerID, ep.ContainerName, ep.Aliases, ep.Pending, ep.LabelError, ep.Learn},
			[]any{got.Index, got.ID, got.NetworkID, got.IP, got.MAC, got.ContainerID, got.ContainerName, got.Aliases, got.Pending, got.LabelError, got.Learn})
		require.True(t, ep.BypassUntil.Equal(got.BypassUntil), "endpoint %d bypass", idx)
		w, h := snap.WhoIs(ep.IP, now), back.WhoIs(ep.IP, now)
		require.Equal(t, w.State, h.State, "endpoint %d", idx)
		require.Equal(t, w.Network, h.Network, "endpoint %d", idx)
		require.Equal(t, w.Policy == nil, h.Policy == nil, "endpoint %d", idx)
		// Every name for a few endpoints, every 7th for the others (the
		// policies' match is linear: the test stays short under -race).
		var asks []string
		for i, name := range names {
			if idx <= 2 || idx >= 1000 || i%7 == int(idx)%7 {
				asks = append(asks, name)
			}
		}
		asks = append(asks, genLabelNames(int(idx))...)
		var wants, haves []string
		for _, name := range asks {
			wants = append(wants, decision(w.Policy.MatchName(name, 0, 0), name))
			haves = append(haves, decision(h.Policy.MatchName(name, 0, 0), name))
			checked++
		}
		for _, a := range addrs {
			wants = append(wants, deniedAddr(w.Policy.DeniedAddr(a), a))
			haves = append(haves, deniedAddr(h.Policy.DeniedAddr(a), a))
		}
		require.Equal(t, wants, haves, "endpoint %d", idx)
	}
	require.Greater(t, checked, len(names))
}

// decision is what DNS reads of a match: the verdict, the reason, the
// entry's identity and pattern, and the rule a denial names (EDE text,
// decision record).
func decision(m policy.Match, name string) string {
	d := fmt.Sprintf("%s: %v %s", name, m.Allowed, m.Reason)
	if m.Entry != nil {
		d += fmt.Sprintf(" entry %d %s", m.Entry.Identity, m.Entry.Pattern)
	}
	if !m.Allowed {
		d += " rule " + verdict.Rule(m)
	}
	return d
}

func deniedAddr(d *policy.Denied, a netip.Addr) string {
	if d == nil {
		return a.String() + ": not denied"
	}
	return a.String() + ": denied by " + d.Pattern
}

// TestSnapshotFormDecisions: what the sidecar loads from the files
// decides every generated name for every kind of endpoint as the plugin's
// compiled snapshot does, and the file is a fraction of the JSON form.
func TestSnapshotFormDecisions(t *testing.T) {
	g := newGenWorld(t, 200)
	snap := g.snapshot(t, 4, 20)
	path := filepath.Join(t.TempDir(), "snapshot")
	sw := &SnapshotWriter{Path: path}
	require.NoError(t, sw.Publish(snap))
	store := NewStore()
	w := NewWatcher(path, time.Hour, store, &logRecorder{})
	w.Poll()
	back, _ := store.Load()
	require.NotNil(t, back)
	requireSameDecisions(t, snap, back, g.names)
	allowed := 0
	for _, name := range g.names {
		if back.Endpoints[1].Policy.MatchName(name, 0, 0).Allowed {
			allowed++
		}
	}
	require.Greater(t, allowed, len(g.names)/2, "the generated names are mostly allowed")
	require.Same(t, back.Networks["gen"].Base, back.Endpoints[1].Policy.Base, "layered endpoints share the decoded base")
	require.Same(t, back.Networks["gen"].Base, back.Endpoints[1000].Policy)
	// The decoded base is name-indexed (Indexed returns a policy of 64 or
	// more entries itself only when it holds a current index) and answers
	// as a copy of its entries without the index, which scans.
	b := back.Networks["gen"].Base
	require.GreaterOrEqual(t, len(b.Allows)+len(b.Denies), 64)
	require.Same(t, b, b.Indexed(), "the sidecar's decoded base has no name index")
	plain := &policy.Policy{Allows: b.Allows, Denies: b.Denies}
	for _, name := range g.names {
		require.Equal(t, plain.MatchName(name, 0, 0), b.MatchName(name, 0, 0), name)
	}

	js, err := EncodeSnapshot(snap)
	require.NoError(t, err)
	st := sw.Last()
	require.Equal(t, 1, st.NewBases)
	require.Less(t, st.HeadBytes+st.BaseBytes, len(js)/4, "binary %d+%d vs JSON %d bytes", st.HeadBytes, st.BaseBytes, len(js))
	dj, err := DecodeSnapshot(js)
	require.NoError(t, err)
	require.Same(t, dj.Networks["gen"].Base, dj.Networks["gen"].Base.Indexed(), "the JSON form's decoded base has no name index")
}

// TestSnapshotPartialReload: a change that keeps the network's base (an
// endpoint joins, leaves, is identified) writes the head alone and the
// sidecar keeps the base it decoded; a rule added writes one new base,
// and base files no head names any more are removed.
func TestSnapshotPartialReload(t *testing.T) {
	g := newGenWorld(t, 50)
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	sw := &SnapshotWriter{Path: path}
	store := NewStore()
	w := NewWatcher(path, time.Hour, store, &logRecorder{})

	require.NoError(t, sw.Publish(g.snapshot(t, 1, 3)))
	w.Poll()
	first, _ := store.Load()
	base1 := first.Networks["gen"].Base
	require.Equal(t, 1, sw.Last().NewBases)

	// An endpoint joins: same base, head only.
	snap2 := g.snapshot(t, 2, 4)
	require.NoError(t, sw.Publish(snap2))
	st := sw.Last()
	require.Zero(t, st.NewBases)
	require.Equal(t, st.HeadBytes, st.Written, "only the head is written")
	w.Poll()
	second, _ := store.Load()
	require.Equal(t, uint64(2), second.Generation)
	require.Same(t, base1, second.Networks["gen"].Base, "the base is not read again")
	require.True(t, second.Endpoints[4].Policy.MatchName("e4.agent.test", 0, 0).Allowed)
	requireSameDecisions(t, snap2, second, g.names[:200])

	// A runtime rule added: a new base.
	rule, err := policy.ParseCompact("rt.example.net", policy.Allow)
	require.NoError(t, err)
	rule.Source = policy.Provenance{Kind: policy.SourceRuntime, Key: "runtime", Item: rule.Dst, Network: "gen"}
	g.runtime = append(g.runtime, rule)
	g.compileBase(t, 3)
	snap3 := g.snapshot(t, 3, 4)
	require.False(t, second.Endpoints[1].Policy.MatchName("rt.example.net", 0, 0).Allowed)
	require.NoError(t, sw.Publish(snap3))
	require.Equal(t, 1, sw.Last().NewBases)
	w.Poll()
	third, _ := store.Load()
	require.NotSame(t, base1, third.Networks["gen"].Base)
	require.True(t, third.Endpoints[1].Policy.MatchName("rt.example.net", 0, 0).Allowed)
	requireSameDecisions(t, snap3, third, append(g.names[:200], "rt.example.net"))

	// Bases of the current and the previous head stay; older ones go.
	require.Len(t, baseFiles(t, dir), 2)
	g.runtime = nil
	g.compileBase(t, 4)
	require.NoError(t, sw.Publish(g.snapshot(t, 4, 4)))
	require.Len(t, baseFiles(t, dir), 2)
	sum := sha256.Sum256(encodeBase(base1))
	require.Contains(t, baseFiles(t, dir), filepath.Base(baseName(path, sum)), "a base equal to an older one has that one's name")
}

func baseFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), baseInfix) {
			out = append(out, e.Name())
		}
		require.NotContains(t, e.Name(), ".tmp-", "no temporary file left")
	}
	return out
}

// TestSnapshotCorruptFiles: a head or base that is torn, corrupt, of
// another generation or missing is never served; the generation served
// is kept, the error logged once per version, and the next good publish
// is served.
func TestSnapshotCorruptFiles(t *testing.T) {
	g := newGenWorld(t, 20)
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	sw := &SnapshotWriter{Path: path}
	good := g.snapshot(t, 5, 2)
	require.NoError(t, sw.Publish(good))
	head5, err := os.ReadFile(path)
	require.NoError(t, err)
	baseSum5 := sha256.Sum256(encodeBase(g.base.Policy()))
	base5, err := os.ReadFile(baseName(path, baseSum5))
	require.NoError(t, err)

	// Generation 6 has another base (a rule added).
	rule, err := policy.ParseCompact("six.example.net", policy.Allow)
	require.NoError(t, err)
	g.runtime = []policy.EgressRule{rule}
	g.compileBase(t, 6)
	sixSnap := g.snapshot(t, 6, 2)
	sw6 := &SnapshotWriter{Path: filepath.Join(t.TempDir(), "snapshot")}
	require.NoError(t, sw6.Publish(sixSnap))
	head6, err := os.ReadFile(sw6.Path)
	require.NoError(t, err)
	baseSum6 := sha256.Sum256(encodeBase(g.base.Policy()))
	base6, err := os.ReadFile(baseName(sw6.Path, baseSum6))
	require.NoError(t, err)

	flip := func(b []byte, at int) []byte { c := append([]byte{}, b...); c[at] ^= 0x40; return c }
	cases := []struct {
		name string
		head []byte
		base []byte // written under generation 6's base name; nil: none
		want string
	}{
		{"torn head", head6[:len(head6)/2], base6, "checksum"},
		{"head bit flipped", flip(head6, len(head6)/3), base6, "checksum"},
		{"empty head", []byte{}, base6, "header"},
		{"other magic", append([]byte("CLWKDNSB\x00\x01"), head6[10:]...), base6, "header"},
		{"base missing", head6, nil, "no such file"},
		{"torn base", head6, base6[:len(base6)-100], "not the one the head names"},
		{"base bit flipped", head6, flip(base6, 200), "not the one the head names"},
		// A head of generation 6 with the base of generation 5 under its
		// base's name: never mixed.
		{"base of another generation", head6, base5, "not the one the head names"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := NewStore()
			logs := &logRecorder{}
			w := NewWatcher(path, time.Hour, store, logs)
			require.NoError(t, os.WriteFile(path, head5, 0o644))
			require.NoError(t, os.WriteFile(baseName(path, baseSum5), base5, 0o644))
			w.Poll()
			gen, ok := store.Generation()
			require.True(t, ok)
			require.Equal(t, uint64(5), gen)

			os.Remove(baseName(path, baseSum6))
			if tc.base != nil {
				require.NoError(t, os.WriteFile(baseName(path, baseSum6), tc.base, 0o644))
			}
			require.NoError(t, os.WriteFile(path+".new", tc.head, 0o644))
			require.NoError(t, os.Rename(path+".new", path))
			w.Poll()
			w.Poll() // the same version again: not logged twice
			gen, _ = store.Generation()
			require.Equal(t, uint64(5), gen, "generation kept")
			snap, _ := store.Load()
			require.False(t, snap.Endpoints[1].Policy.MatchName("six.example.net", 0, 0).Allowed)
			errs := 0
			for _, l := range logs.Lines() {
				if strings.HasPrefix(l, "ERROR") {
					errs++
					require.Contains(t, l, tc.want)
				}
			}
			require.Equal(t, 1, errs, "%v", logs.Lines())

			// The writer's next publish is served.
			require.NoError(t, os.WriteFile(baseName(path, baseSum6), base6, 0o644))
			require.NoError(t, os.WriteFile(path+".new", head6, 0o644))
			require.NoError(t, os.Rename(path+".new", path))
			w.Poll()
			gen, _ = store.Generation()
			require.Equal(t, uint64(6), gen)
			snap, _ = store.Load()
			require.True(t, snap.Endpoints[1].Policy.MatchName("six.example.net", 0, 0).Allowed)
		})
	}
}

// TestWatcherWakesOnRename: a new head is loaded when it is renamed into
// place, long before the poll interval.
func TestWatcherWakesOnRename(t *testing.T) {
	g := newGenWorld(t, 10)
	path := filepath.Join(t.TempDir(), "snapshot")
	sw := &SnapshotWriter{Path: path}
	require.NoError(t, sw.Publish(g.snapshot(t, 1, 1)))
	store := NewStore()
	w := NewWatcher(path, time.Hour, store, &logRecorder{})
	w.Start()
	defer w.Stop()
	for gen := uint64(2); gen < 5; gen++ {
		_, changed := store.Load()
		require.NoError(t, sw.Publish(g.snapshot(t, gen, 1)))
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("generation %d not loaded on its rename", gen)
		}
		got, _ := store.Generation()
		require.Equal(t, gen, got)
	}
}

// FuzzSnapshotHead: a head or base body that passes its checksum (the
// plugin wrote it, or a bit flip hit the checksum too) never panics the
// decoder nor makes it allocate by a corrupt count.
func FuzzSnapshotHead(f *testing.F) {
	g := newGenWorld(f, 5)
	snap := g.snapshot(f, 1, 2)
	path := filepath.Join(f.TempDir(), "snapshot")
	sw := &SnapshotWriter{Path: path}
	require.NoError(f, sw.Publish(snap))
	head, err := os.ReadFile(path)
	require.NoError(f, err)
	f.Add(head[len(headMagic) : len(head)-sha256.Size])
	base := encodeBase(g.base.Policy())
	f.Add(base[len(baseMagic) : len(base)-sha256.Size])
	f.Add([]byte{})
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		b := append([]byte{}, head[len(headMagic):len(head)-sha256.Size]...)
		b[rng.IntN(len(b))] = byte(rng.IntN(256))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		h, err := decodeHead(seal(append([]byte(headMagic), body...)))
		if err == nil {
			require.NotNil(t, h.snap)
		}
		b := seal(append([]byte(baseMagic), body...))
		_, _ = decodeBase(b, sha256.Sum256(b))
	})
}

// TestSnapshotWriterRestart: a plugin process that starts again trusts no
// file a previous one left: a base file torn by a crash under the right
// name is written again, and stale bases and temporary files go.
func TestSnapshotWriterRestart(t *testing.T) {
	g := newGenWorld(t, 10)
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	snap := g.snapshot(t, 1, 2)
	sum := sha256.Sum256(encodeBase(g.base.Policy()))
	stale := baseName(path, [sha256.Size]byte{1})
	tmp := filepath.Join(dir, ".snapshot.tmp-123")
	for name, b := range map[string][]byte{baseName(path, sum): []byte("torn"), stale: []byte("old"), tmp: []byte("x")} {
		require.NoError(t, os.WriteFile(name, b, 0o644))
	}
	sw := &SnapshotWriter{Path: path}
	require.NoError(t, sw.Publish(snap))
	require.Equal(t, 1, sw.Last().NewBases, "the base is written again")
	require.NoFileExists(t, stale)
	require.NoFileExists(t, tmp)
	store := NewStore()
	logs := &logRecorder{}
	NewWatcher(path, time.Hour, store, logs).Poll()
	gen, ok := store.Generation()
	require.True(t, ok, "%v", logs.Lines())
	require.Equal(t, uint64(1), gen)
}
