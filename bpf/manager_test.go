package bpf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// TestSharedAddresses: two endpoints learn the same address for different
// identities; each is routed by its own identity and neither widens the
// other.
func TestSharedAddresses(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	shared := netip.MustParseAddr("10.201.200.5")
	require.NoError(t, m.Enroll(e.a.cookie, e.a.endpoint()))
	require.NoError(t, m.Enroll(e.b.cookie, e.b.endpoint()))
	require.NoError(t, m.Learn(e.a.index, shared, 100, time.Minute))
	require.NoError(t, m.Learn(e.b.index, shared, 101, time.Minute))
	require.NoError(t, m.SyncRoutes(map[uint32][]Route{
		e.a.index: {{Identity: 100, Port: 443, L4: 6, ListenerPort: 15100}},
		e.b.index: {{Identity: 101, Port: 22, L4: 6, ListenerPort: 15120}},
	}))

	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener, peer: "10.201.200.5:443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:22"), &expect{eperm: true})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:22"), &expect{banner: bannerSSH, peer: "10.201.200.5:22"})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:443"), &expect{eperm: true})

	// B learning the address again (another answer) does not change A.
	require.NoError(t, m.Learn(e.b.index, shared, 102, time.Minute))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:22"), &expect{eperm: true})

	// Forgetting B drops its state only.
	require.NoError(t, m.ForgetEndpoint(e.b.index))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	routes := dumpRoutes(t, m)
	require.Len(t, routes, 1)
	for k := range routes {
		require.Equal(t, e.a.index, k.Index)
	}
}

func dumpRoutes(t *testing.T, m *Manager) map[clawkerRouteKey]clawkerRouteVal {
	t.Helper()
	return iterate[clawkerRouteKey, clawkerRouteVal](t, m.maps[MapRoutes])
}

func attachedCount(t *testing.T, cgroup string, at ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(cgroup)
	require.NoError(t, err)
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	require.NoError(t, err)
	return len(res.Programs)
}

// TestRestart: enforcement holds while no manager runs; a new Open reuses
// the pins (state intact, links not attached twice); a changed layout
// version is rebuilt as documented.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	require.True(t, m.Rebuilt(), "a first install builds the maps")
	installPolicy(t, m, e.a)
	require.NoError(t, m.Close())

	// No manager: still steered and still denied.
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener, peer: "10.201.200.5:443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})
	check(t, dnsUnconnected(e.a.ns, "127.0.0.11:53", "allowed.example.test."), &expect{banner: dnsAnswerProxy})

	m2, err := Open(e.cfg)
	require.NoError(t, err)
	defer m2.Close()
	require.False(t, m2.Rebuilt())
	ep, ok, err := m2.Enrolled(e.a.cookie)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, e.a.endpoint().Subnet, ep.Subnet)
	require.Equal(t, e.a.endpoint().Gateway, ep.Gateway)
	require.Len(t, dumpRoutes(t, m2), 3)
	for _, h := range hooks {
		require.Equal(t, 1, attachedCount(t, e.cfg.CgroupPath, h.attach), h.name)
	}
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})

	// The DNS sidecar's writer works on the reopened pins.
	w, err := OpenLearned(e.cfg.PinDir)
	require.NoError(t, err)
	defer w.Close()
	require.True(t, w.Current())
	_, err = w.Learn(e.a.index, netip.MustParseAddr("10.201.200.6"), idWeb, time.Minute)
	require.NoError(t, err)
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{banner: bannerListener, peer: "10.201.200.6:443"})
	require.NoError(t, m2.Close())

	t.Run("layout version change rebuilds", func(t *testing.T) {
		meta, err := ebpf.LoadPinnedMap(filepath.Join(e.cfg.PinDir, MapMeta), nil)
		require.NoError(t, err)
		require.NoError(t, meta.Put(uint32(0), clawkerMetaVal{LayoutVersion: LayoutVersion + 1}))
		meta.Close()

		_, err = OpenLearned(e.cfg.PinDir)
		require.ErrorIs(t, err, ErrLayoutVersion, "a writer refuses pins of another layout")

		m3, err := Open(e.cfg)
		require.NoError(t, err)
		defer m3.Close()
		require.True(t, m3.Rebuilt(), "the caller is told to re-enroll and re-sync")
		_, ok, err := m3.Enrolled(e.a.cookie)
		require.NoError(t, err)
		require.False(t, ok, "rebuilt maps start empty")
		require.False(t, w.Current(), "the old writer sees its map is no longer pinned")
		for _, h := range hooks {
			require.Equal(t, 1, attachedCount(t, e.cfg.CgroupPath, h.attach), h.name)
		}
		// Not enrolled in the new maps: untouched until the caller re-enrolls.
		check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{banner: "direct443"})
		installPolicy(t, m3, e.a)
		check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{eperm: true})
		check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
		w2, err := OpenLearned(e.cfg.PinDir)
		require.NoError(t, err)
		require.True(t, w2.Current())
		w2.Close()
	})

	t.Run("remove detaches and unpins", func(t *testing.T) {
		m4, err := Open(e.cfg)
		require.NoError(t, err)
		require.NoError(t, m4.Remove())
		for _, h := range hooks {
			require.Equal(t, 0, attachedCount(t, e.cfg.CgroupPath, h.attach), h.name)
		}
		_, err = os.Stat(e.cfg.PinDir)
		require.True(t, errors.Is(err, os.ErrNotExist))
		check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.6:443"), &expect{banner: "direct443"})
	})
}

// TestRouteSwap: while clients loop on an allowed and a denied destination,
// 1,000 SyncRoutes calls that change unrelated routes never make the allowed
// connect fail or the denied one succeed.
func TestRouteSwap(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	installPolicy(t, m, e.a)

	base := []Route{
		{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100},
		{Identity: idCIDR, Port: 8443, L4: 6, ListenerPort: 0},
		{Identity: idUDP, Port: 7000, L4: 17, ListenerPort: 15110},
	}
	var (
		stop            atomic.Bool
		allowed, denied atomic.Int64
		wg              sync.WaitGroup
		mu              sync.Mutex
		failures        []string
	)
	fail := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, s)
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			r := dialTCP(e.a.ns, "tcp4", "10.201.200.5:443")
			if r.err != nil || r.banner != bannerListener {
				fail("allowed: " + r.String())
			}
			allowed.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			r := dialTCP(e.a.ns, "tcp4", "10.201.200.5:8443")
			if !errors.Is(r.err, syscall.EPERM) {
				fail("denied: " + r.String())
			}
			denied.Add(1)
		}
	}()

	// At least 1000 syncs, and on until both dialers have checked enough
	// connects during them: a sync compares with what it last wrote, so
	// 1000 of them can end before a loaded machine ran ten dials.
	const minDials = 20
	deadline := time.Now().Add(60 * time.Second)
	last := 0
	for i := 0; i < 1000 || allowed.Load() < minDials || denied.Load() < minDials; i++ {
		require.True(t, time.Now().Before(deadline), "%d syncs in 60 s and only %d allowed / %d denied connects checked", i, allowed.Load(), denied.Load())
		last = i
		rs := append([]Route(nil), base...)
		// Unrelated routes: other identities and ports, of this endpoint and
		// of another, changing every time (some added, some dropped).
		for j := 0; j < 1+i%7; j++ {
			rs = append(rs, Route{Identity: uint32(500 + (i+j)%11), Port: uint16(1000 + (i*j)%50), L4: 6, ListenerPort: uint16(15200 + i%100)})
		}
		other := []Route{{Identity: idWeb, Port: uint16(2000 + i%13), L4: 6, ListenerPort: 15300}}
		require.NoError(t, m.SyncRoutes(map[uint32][]Route{e.a.index: rs, 9: other}))
	}
	stop.Store(true)
	wg.Wait()
	require.Empty(t, failures)
	require.GreaterOrEqual(t, allowed.Load(), int64(minDials))
	require.GreaterOrEqual(t, denied.Load(), int64(minDials))
	t.Logf("%d syncs; %d allowed and %d denied connects checked meanwhile", last+1, allowed.Load(), denied.Load())
	got := dumpRoutes(t, m)
	require.Len(t, got, 3+1+last%7+1, "stale routes were deleted")
}

// TestLearnedExpiry: an entry past its TTL no longer routes (the kernel
// compares expires_ns with bpf_ktime_get_ns) and GC removes it.
func TestLearnedExpiry(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	installPolicy(t, m, e.a)
	denials := m.Denials()
	addr := netip.MustParseAddr("10.201.200.8")
	require.NoError(t, m.Learn(e.a.index, addr, idWeb, 300*time.Millisecond))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.8:443"), &expect{banner: bannerListener})
	time.Sleep(400 * time.Millisecond)
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.8:443"), &expect{eperm: true})
	d := next(t, denials)
	require.Equal(t, ReasonExpired, d.Reason)
	require.Equal(t, addr, d.Addr)

	n, err := m.GC(time.Now())
	require.NoError(t, err)
	require.Equal(t, 1, n, "only the expired entry goes")
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	require.Error(t, m.Learn(e.a.index, addr, idWeb, 0))
	require.Error(t, m.Learn(e.a.index, netip.MustParseAddr("fd00::1"), idWeb, time.Second))
}

// TestSyncCIDRs: stale prefixes go, new ones apply, conflicting input is
// rejected without touching the map.
func TestSyncCIDRs(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	installPolicy(t, m, e.a)
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.201.9:8443"), &expect{banner: "direct8443"})
	require.NoError(t, m.SyncCIDRs(map[uint32][]CIDR{e.a.index: {
		{Prefix: netip.MustParsePrefix("10.201.201.0/28"), Identity: idCIDR},
	}}))
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.201.9:8443"), &expect{banner: "direct8443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.201.19:8443"), &expect{eperm: true})
	err := m.SyncCIDRs(map[uint32][]CIDR{e.a.index: {
		{Prefix: netip.MustParsePrefix("10.201.201.0/24"), Identity: 1},
		{Prefix: netip.MustParsePrefix("10.201.201.7/24"), Identity: 2},
	}})
	require.Error(t, err)
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.201.9:8443"), &expect{banner: "direct8443"})
	require.Error(t, m.SyncCIDRs(map[uint32][]CIDR{1: {{Prefix: netip.MustParsePrefix("fd00::/8")}}}))
	require.Error(t, m.SyncRoutes(map[uint32][]Route{1: {{Identity: 1, Port: 1, L4: 1}}}))
}

func TestCheckHostBPFFS(t *testing.T) {
	err := CheckHostBPFFS(t.TempDir())
	require.Error(t, err)
	require.Contains(t, err.Error(), "mount -t bpf bpf /sys/fs/bpf")
}

func TestLayoutVersionMatchesC(t *testing.T) {
	spec, err := loadClawker()
	require.NoError(t, err)
	var v uint32
	require.NoError(t, spec.Variables["layout_version"].Get(&v))
	require.Equal(t, uint32(LayoutVersion), v)
}

func TestMonoConversion(t *testing.T) {
	now := time.Now()
	back := fromMono(toMono(now.Add(time.Hour)))
	require.WithinDuration(t, now.Add(time.Hour), back, 10*time.Millisecond)
	require.Zero(t, toMono(time.Time{}))
}

func TestClosedManager(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	require.NoError(t, m.Close())
	require.ErrorIs(t, m.Enroll(1, e.a.endpoint()), ErrClosed)
	require.ErrorIs(t, m.SyncRoutes(nil), ErrClosed)
	_, err := m.Counters(1)
	require.ErrorIs(t, err, ErrClosed)
	_, ok := <-m.Denials()
	require.False(t, ok, "Denials of a closed manager is a closed channel")
}

// TestCloseWithUndrainedDenials: Close returns even when nobody reads the
// denial channel and the reader is blocked on it.
func TestCloseWithUndrainedDenials(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	installPolicy(t, m, e.a)
	_ = m.Denials()
	for i := 0; i < 300; i++ { // more than the channel buffers
		check(t, rawSocket(e.a.ns, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP), &expect{eperm: true})
	}
	done := make(chan struct{})
	go func() { _ = m.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on an undrained denial channel")
	}
}

func TestOpenChecks(t *testing.T) {
	testutil.RequirePrivileged(t)
	_, err := Open(Config{PinDir: filepath.Join(t.TempDir(), "pins"), CgroupPath: "/sys/fs/cgroup/unified"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "mount -t bpf bpf /sys/fs/bpf", "a pin dir off bpffs says how to fix it")

	id := randID(t)
	bpffs := testBPFFS(t, id)
	_, err = Open(Config{PinDir: filepath.Join(bpffs, "pins"), CgroupPath: t.TempDir()})
	require.ErrorContains(t, err, "not a cgroup2 directory")
}

// learnedOf dumps endpoint index's inner learned map (address -> value).
func learnedOf(t *testing.T, m *Manager, index uint32) map[netip.Addr]clawkerLearnedVal {
	t.Helper()
	out := map[netip.Addr]clawkerLearnedVal{}
	require.NoError(t, learnedInner(m.maps[MapLearned], func(i uint32, inner *ebpf.Map) error {
		if i != index {
			return nil
		}
		var (
			k uint32
			v clawkerLearnedVal
		)
		it := inner.Iterate()
		for it.Next(&k, &v) {
			out[addrOf(k)] = v
		}
		return it.Err()
	}))
	return out
}

// TestLearnedQuotaPerEndpoint: endpoint A resolving far more addresses than
// its quota never removes endpoint B's entries; A's own oldest answers make
// room for its new ones, and the writer says how many went.
func TestLearnedQuotaPerEndpoint(t *testing.T) {
	e := newEnv(t)
	m := e.openManager()
	for _, c := range []client{e.a, e.b} {
		require.NoError(t, m.Enroll(c.cookie, c.endpoint()))
	}
	require.NoError(t, m.SyncRoutes(map[uint32][]Route{
		e.a.index: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}},
		e.b.index: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}},
	}))
	// The DNS sidecar's writer, on the pins.
	w, err := OpenLearned(e.cfg.PinDir)
	require.NoError(t, err)
	defer w.Close()
	bAddrs := []netip.Addr{netip.MustParseAddr("10.201.200.5"), netip.MustParseAddr("10.201.200.6")}
	for _, a := range bAddrs {
		_, err := w.Learn(e.b.index, a, idWeb, time.Hour)
		require.NoError(t, err)
	}

	// A fills its quota; the TTLs grow, so the first answers are the oldest.
	addrN := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 202, byte(i >> 8), byte(i)}) }
	for i := range LearnedPerEndpoint {
		ev, err := w.Learn(e.a.index, addrN(i), idWeb, time.Hour+time.Duration(i)*time.Millisecond)
		require.NoError(t, err)
		require.Zero(t, ev, "nothing evicted below the quota (entry %d)", i)
	}
	require.Len(t, learnedOf(t, m, e.a.index), LearnedPerEndpoint)
	fill, err := m.LearnedFill()
	require.NoError(t, err)
	require.Equal(t, map[uint32]int{e.a.index: LearnedPerEndpoint, e.b.index: len(bAddrs)}, fill, "the fill metric's source")

	// One more: A's oldest 1/16 go, B is untouched.
	ev, err := w.Learn(e.a.index, addrN(LearnedPerEndpoint), idWeb, 2*time.Hour)
	require.NoError(t, err)
	require.Equal(t, LearnedPerEndpoint/reclaimShare, ev)
	got := learnedOf(t, m, e.a.index)
	require.Len(t, got, LearnedPerEndpoint-ev+1)
	require.NotContains(t, got, addrN(0), "A's oldest answer made room")
	require.NotContains(t, got, addrN(ev-1))
	require.Contains(t, got, addrN(ev))
	require.Contains(t, got, addrN(LearnedPerEndpoint), "A's new answer is learned")
	// Keep A flooding well past its quota, through the plugin's writer too.
	for i := LearnedPerEndpoint + 1; i < 3*LearnedPerEndpoint; i++ {
		require.NoError(t, m.Learn(e.a.index, addrN(i), idWeb, 2*time.Hour+time.Duration(i)*time.Millisecond))
	}
	require.LessOrEqual(t, len(learnedOf(t, m, e.a.index)), LearnedPerEndpoint)

	bGot := learnedOf(t, m, e.b.index)
	require.Len(t, bGot, len(bAddrs), "B's entries survive A's flood")
	// The fill is read from the kernel's accounting, not a walk, and
	// follows evictions (and deletes) exactly.
	require.NotZero(t, m.fill.per, "this kernel accounts a learned map's memory per entry: LearnedFill reads it")
	fill, err = m.LearnedFill()
	require.NoError(t, err)
	require.Equal(t, map[uint32]int{e.a.index: len(learnedOf(t, m, e.a.index)), e.b.index: len(bAddrs)}, fill, "the fill after evictions")
	for _, a := range bAddrs {
		require.Contains(t, bGot, a)
	}
	check(t, dialTCP(e.b.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener, peer: "10.201.200.5:443"})
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{eperm: true})

	// A full map reclaims its expired entries before evicting live ones.
	require.NoError(t, m.ForgetEndpoint(e.a.index))
	require.Empty(t, learnedOf(t, m, e.a.index))
	require.NoError(t, m.SyncRoutes(map[uint32][]Route{
		e.a.index: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}},
		e.b.index: {{Identity: idWeb, Port: 443, L4: 6, ListenerPort: 15100}},
	}))
	for i := range LearnedPerEndpoint {
		ttl := time.Hour
		if i < 10 {
			ttl = time.Millisecond
		}
		_, err := w.Learn(e.a.index, addrN(i), idWeb, ttl)
		require.NoError(t, err)
	}
	time.Sleep(5 * time.Millisecond)
	ev, err = w.Learn(e.a.index, netip.MustParseAddr("10.201.200.5"), idWeb, time.Hour)
	require.NoError(t, err)
	require.Zero(t, ev, "expired entries were enough")
	require.Len(t, learnedOf(t, m, e.a.index), LearnedPerEndpoint-10+1)
	check(t, dialTCP(e.a.ns, "tcp4", "10.201.200.5:443"), &expect{banner: bannerListener})
	require.Len(t, learnedOf(t, m, e.b.index), len(bAddrs))
}

// BenchmarkLearnedWriter: one answer's map write through the writer the DNS
// sidecar uses (outer lookup + inner update), below the quota.
func BenchmarkLearnedWriter(b *testing.B) {
	testutil.RequirePrivileged(b)
	dir := testBPFFS(b, randID(b))
	require.NoError(b, PinMaps(dir))
	w, err := OpenLearned(dir)
	require.NoError(b, err)
	defer w.Close()
	b.ResetTimer()
	for i := range b.N {
		if _, err := w.Learn(uint32(i%8), netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 1, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLearnedWritersConcurrent: two writers (an old and a new DNS sidecar
// overlapping) learning for the same fresh endpoints at once create one
// inner map per endpoint between them and lose no entry.
func TestLearnedWritersConcurrent(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := testBPFFS(t, randID(t))
	require.NoError(t, PinMaps(dir))
	var ws [2]*LearnedWriter
	for i := range ws {
		w, err := OpenLearned(dir)
		require.NoError(t, err)
		defer w.Close()
		ws[i] = w
	}
	const per = 200
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := ws[g%2]
			for i := range per {
				index := uint32(1 + i%4)
				addr := netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)})
				if _, err := w.Learn(index, addr, uint32(g), time.Hour); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	all, err := ReadLearned(dir)
	require.NoError(t, err)
	require.Len(t, all, 8*per)
	outer, err := ebpf.LoadPinnedMap(filepath.Join(dir, MapLearned), nil)
	require.NoError(t, err)
	defer outer.Close()
	inner := 0
	require.NoError(t, learnedInner(outer, func(uint32, *ebpf.Map) error { inner++; return nil }))
	require.Equal(t, 4, inner)
}
