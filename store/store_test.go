package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The test binary re-executes itself as a child process in these roles.
const (
	envRole = "CLAWKER_STORE_TEST_ROLE"
	envPath = "CLAWKER_STORE_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "crash":
		// Write, then stop dead between fsync and rename: the parent kills
		// this process with SIGKILL once it reports the temporary file.
		beforeRename = func(tmp string) error {
			fmt.Println(tmp)
			time.Sleep(time.Hour)
			return nil
		}
		err := WriteFileAtomic(os.Getenv(envPath), []byte(`{"n":999}`), 0o600)
		fmt.Fprintln(os.Stderr, "crash child was not killed:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func child(t *testing.T, role, path string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envPath+"="+path)
	cmd.Stderr = os.Stderr
	return cmd
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.json")

	require.NoError(t, WriteFileAtomic(path, []byte(`{"a":1}`), 0o640))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o640), st.Mode().Perm(), "a new file gets perm (umask does not apply)")

	require.NoError(t, os.Chmod(path, 0o604))
	require.NoError(t, WriteFileAtomic(path, []byte(`{"a":2}`), 0o600))
	st, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o604), st.Mode().Perm(), "a replaced file keeps its mode")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, `{"a":2}`, string(data))
	requireNoTemp(t, dir)

	require.ErrorContains(t, WriteFileAtomic(filepath.Join(dir, "missing", "x.json"), nil, 0o600), "create temporary file")
}

func requireNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NotContains(t, e.Name(), tmpMarker, "temporary file left behind")
	}
}

func TestWriteFileAtomicFailureBeforeRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	require.NoError(t, WriteFileAtomic(path, []byte(`"old"`), 0o600))

	var sawTemp string
	beforeRename = func(tmp string) error {
		sawTemp = tmp
		data, err := os.ReadFile(tmp)
		require.NoError(t, err)
		require.Equal(t, `"new"`, string(data), "the temporary file is complete before the rename")
		return errors.New("injected failure")
	}
	t.Cleanup(func() { beforeRename = nil })
	require.ErrorContains(t, WriteFileAtomic(path, []byte(`"new"`), 0o600), "injected failure")
	require.Equal(t, dir, filepath.Dir(sawTemp), "the temporary file is in the same directory")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, `"old"`, string(data))
	requireNoTemp(t, dir)
}

// TestCrashBetweenWriteAndRename kills a child process (SIGKILL) after it
// wrote and synced the temporary file and before it renamed it.
func TestCrashBetweenWriteAndRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	require.NoError(t, WriteFileAtomic(path, []byte(`{"n":1}`), 0o600))
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	cmd := child(t, "crash", path)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	tmp := line[:len(line)-1]
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "the previous document is intact")
	_, err = os.Stat(tmp)
	require.NoError(t, err, "the crash left its temporary file")
	require.NotEqual(t, path, tmp)
}
