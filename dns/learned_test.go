package dns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// testPins pins the real map layout (package bpf, no programs) in a bpffs
// directory of this package's own, removed at cleanup.
func testPins(t testing.TB) string {
	t.Helper()
	testutil.RequirePrivileged(t)
	var st unix.Statfs_t
	err := unix.Statfs("/sys/fs/bpf", &st)
	testutil.Require(t, err == nil && uint32(st.Type) == unix.BPF_FS_MAGIC, "/sys/fs/bpf must be a bpffs (mount -t bpf bpf /sys/fs/bpf)")
	dir := fmt.Sprintf("/sys/fs/bpf/clawker-test-dns-%08x", rand.Uint32())
	require.NoError(t, os.Mkdir(dir, 0o700))
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, bpf.PinMaps(dir))
	return dir
}

// learnedEntries dumps the pinned map as "index/addr" -> entry.
func learnedEntries(t testing.TB, pinDir string) map[string]bpf.LearnedEntry {
	t.Helper()
	all, err := bpf.ReadLearned(pinDir)
	require.NoError(t, err)
	out := map[string]bpf.LearnedEntry{}
	for _, e := range all {
		out[fmt.Sprintf("%d/%s", e.Index, e.Addr)] = e
	}
	return out
}

// TestMapLearner: the sidecar's writer is package bpf's, on the real layout
// (the layout itself, its quota and the kernel's view are tested in bpf).
func TestMapLearner(t *testing.T) {
	dir := testPins(t)
	l, err := OpenMapLearner(dir)
	require.NoError(t, err)
	defer l.Close()

	before := time.Now()
	_, err = l.Learn(1, netip.MustParseAddr("192.0.2.1"), 10, 5*time.Minute)
	require.NoError(t, err)
	_, err = l.Learn(2, netip.MustParseAddr("::ffff:192.0.2.1"), 20, time.Hour)
	require.NoError(t, err)
	_, err = l.Learn(2, netip.MustParseAddr("2001:db8::1"), 20, time.Hour)
	require.NoError(t, err, "IPv6 is ignored")
	after := time.Now()

	got := learnedEntries(t, dir)
	require.Len(t, got, 2)
	v1 := got["1/192.0.2.1"]
	require.Equal(t, uint32(10), v1.Identity)
	require.WithinRange(t, v1.Expires, before.Add(5*time.Minute-time.Millisecond), after.Add(5*time.Minute+time.Millisecond))
	require.Equal(t, uint32(20), got["2/192.0.2.1"].Identity)
}
