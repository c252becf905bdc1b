package dns

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// writeSnapshot writes snap the way the plugin process does: temp file,
// fsync, rename.
func writeSnapshot(t testing.TB, path string, snap *policy.Snapshot) {
	t.Helper()
	b, err := EncodeSnapshot(snap)
	require.NoError(t, err)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*")
	require.NoError(t, err)
	_, err = tmp.Write(b)
	require.NoError(t, err)
	require.NoError(t, tmp.Sync())
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
	time.Sleep(100 * time.Millisecond)
	g, _ := store.Generation()
	require.Equal(t, uint64(7), g)
	require.True(t, hasLine(logs.Lines(), "ERROR", "decode snapshot"), "%v", logs.Lines())

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
