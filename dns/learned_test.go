package dns

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// testPins creates the `meta` and `learned` maps of docs/SEAMS.md pinned in
// a bpffs directory of this package's own, removed at cleanup.
func testPins(t testing.TB, layout uint32) (string, *ebpf.Map) {
	t.Helper()
	testutil.RequirePrivileged(t)
	var st unix.Statfs_t
	err := unix.Statfs("/sys/fs/bpf", &st)
	testutil.Require(t, err == nil && uint32(st.Type) == unix.BPF_FS_MAGIC, "/sys/fs/bpf must be a bpffs (mount -t bpf bpf /sys/fs/bpf)")
	dir := fmt.Sprintf("/sys/fs/bpf/clawker-test-dns-%08x", rand.Uint32())
	require.NoError(t, os.Mkdir(dir, 0o700))
	t.Cleanup(func() { os.RemoveAll(dir) })

	meta, err := ebpf.NewMap(&ebpf.MapSpec{Name: "meta", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	require.NoError(t, err)
	t.Cleanup(func() { meta.Close() })
	require.NoError(t, meta.Put(uint32(0), layout))
	require.NoError(t, meta.Pin(filepath.Join(dir, "meta")))

	learned, err := ebpf.NewMap(&ebpf.MapSpec{Name: "learned", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 16, MaxEntries: 4096})
	require.NoError(t, err)
	t.Cleanup(func() { learned.Close() })
	require.NoError(t, learned.Pin(filepath.Join(dir, "learned")))
	return dir, learned
}

// learnedEntries dumps the map as "index/addr" -> value.
func learnedEntries(t testing.TB, m *ebpf.Map) map[string]learnedValue {
	t.Helper()
	out := map[string]learnedValue{}
	var k learnedKey
	var v learnedValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], k.Addr)
		out[fmt.Sprintf("%d/%s", k.Index, netip.AddrFrom4(a))] = v
	}
	require.NoError(t, it.Err())
	return out
}

func TestMapLearner(t *testing.T) {
	dir, m := testPins(t, LayoutVersion)
	l, err := OpenMapLearner(dir)
	require.NoError(t, err)
	defer l.Close()

	before, err := monotonicNow()
	require.NoError(t, err)
	require.NoError(t, l.Learn(1, netip.MustParseAddr("192.0.2.1"), 10, 5*time.Minute))
	require.NoError(t, l.Learn(2, netip.MustParseAddr("192.0.2.1"), 20, time.Hour))
	require.NoError(t, l.Learn(2, netip.MustParseAddr("2001:db8::1"), 20, time.Hour), "IPv6 is ignored")
	after, err := monotonicNow()
	require.NoError(t, err)

	got := learnedEntries(t, m)
	require.Len(t, got, 2)
	v1 := got["1/192.0.2.1"]
	require.Equal(t, uint32(10), v1.Identity)
	require.GreaterOrEqual(t, v1.ExpiresNs, before+uint64(5*time.Minute))
	require.LessOrEqual(t, v1.ExpiresNs, after+uint64(5*time.Minute))
	require.Equal(t, uint32(20), got["2/192.0.2.1"].Identity)

	// Key bytes: index then the address in network byte order.
	var raw [8]byte
	binary.NativeEndian.PutUint32(raw[:4], 1)
	copy(raw[4:], []byte{192, 0, 2, 1})
	var v learnedValue
	require.NoError(t, m.Lookup(raw[:], &v))
	require.Equal(t, uint32(10), v.Identity)
}

func TestMapLearnerLayoutMismatch(t *testing.T) {
	dir, _ := testPins(t, LayoutVersion+1)
	_, err := OpenMapLearner(dir)
	require.ErrorContains(t, err, "layout_version")
}

func TestMapLearnerReopensReplacedPins(t *testing.T) {
	dir, old := testPins(t, LayoutVersion)
	l, err := OpenMapLearner(dir)
	require.NoError(t, err)
	defer l.Close()
	require.NoError(t, l.Learn(1, netip.MustParseAddr("192.0.2.1"), 10, time.Minute))

	// The plugin process rebuilds the map.
	require.NoError(t, old.Unpin())
	fresh, err := ebpf.NewMap(&ebpf.MapSpec{Name: "learned", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 16, MaxEntries: 4096})
	require.NoError(t, err)
	defer fresh.Close()
	require.NoError(t, fresh.Pin(filepath.Join(dir, "learned")))

	l.checked.Store(0) // as if a second had passed
	require.NoError(t, l.Learn(1, netip.MustParseAddr("192.0.2.2"), 11, time.Minute))
	require.Contains(t, learnedEntries(t, fresh), "1/192.0.2.2")
}
