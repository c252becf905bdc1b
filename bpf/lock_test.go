package bpf

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLockPinDir: a second holder of one pin directory is refused (two
// plugins on one kernel must not share maps); another directory is not;
// after release the directory can be taken again.
func TestLockPinDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	release, err := LockPinDir(dir)
	require.NoError(t, err)

	_, err = LockPinDir(dir)
	require.ErrorIs(t, err, ErrPinDirInUse)
	require.ErrorContains(t, err, "CLAWKER_BPF_PIN_DIR")

	other, err := LockPinDir(filepath.Join(t.TempDir(), "pins"))
	require.NoError(t, err)
	other()

	release()
	again, err := LockPinDir(dir)
	require.NoError(t, err)
	again()
}
