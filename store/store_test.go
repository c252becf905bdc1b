package store

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary re-executes itself as a child process in these roles.
const (
	envRole  = "CLAWKER_STORE_TEST_ROLE"
	envPath  = "CLAWKER_STORE_TEST_PATH"
	envCount = "CLAWKER_STORE_TEST_COUNT"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "incr":
		n, _ := strconv.Atoi(os.Getenv(envCount))
		if err := increment(os.Getenv(envPath), n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "crash":
		// Write, then stop dead between fsync and rename: the parent kills
		// this process with SIGKILL once it reports the temporary file.
		beforeRename = func(tmp string) error {
			fmt.Println(tmp)
			time.Sleep(time.Hour)
			return nil
		}
		s, err := Open(os.Getenv(envPath), 0o600)
		if err == nil {
			err = s.Save(counter{N: 999})
		}
		fmt.Fprintln(os.Stderr, "crash child was not killed:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

type counter struct {
	N       int   `json:"n"`
	Writers []int `json:"writers,omitempty"`
}

// increment adds 1 to the counter n times, each in its own Update.
func increment(path string, n int) error {
	s, err := Open(path, 0o600)
	if err != nil {
		return err
	}
	for range n {
		if err := Modify(s, func(c *counter) error { c.N++; return nil }); err != nil {
			return err
		}
	}
	return nil
}

func child(t *testing.T, role, path string, count int) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envPath+"="+path, envCount+"="+strconv.Itoa(count))
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
	s, err := Open(path, 0o600)
	require.NoError(t, err)
	require.NoError(t, s.Save(counter{N: 1}))
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	cmd := child(t, "crash", path, 0)
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
	var c counter
	require.NoError(t, s.Load(&c))
	require.Equal(t, 1, c.N)
	_, err = os.Stat(tmp)
	require.NoError(t, err, "the crash left its temporary file")
	require.NotEqual(t, path, tmp)

	// The lock died with the child: the store is usable, and reopening it
	// removes the stale temporary file.
	require.NoError(t, Modify(s, func(c *counter) error { c.N++; return nil }))
	_, err = Open(path, 0o600)
	require.NoError(t, err)
	requireNoTemp(t, dir)
	require.NoError(t, s.Load(&c))
	require.Equal(t, 2, c.N)
}

func TestUpdate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "rules.json")
	s, err := Open(path, 0o640)
	require.NoError(t, err)
	require.Equal(t, path, s.Path())

	var c counter
	require.ErrorIs(t, s.Load(&c), fs.ErrNotExist)
	_, err = s.Read()
	require.ErrorIs(t, err, fs.ErrNotExist)

	require.NoError(t, s.Update(func(raw []byte) ([]byte, error) {
		require.Nil(t, raw, "a missing document reads as nil")
		return []byte(`{"n":5}`), nil
	}))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o640), st.Mode().Perm())
	require.NoError(t, s.Load(&c))
	require.Equal(t, 5, c.N)

	t.Run("fn error changes nothing", func(t *testing.T) {
		st1, err := os.Stat(path)
		require.NoError(t, err)
		boom := errors.New("boom")
		require.ErrorIs(t, s.Update(func(raw []byte) ([]byte, error) { return []byte(`{"n":6}`), boom }), boom)
		require.ErrorIs(t, Modify(s, func(c *counter) error { c.N = 7; return boom }), boom)
		st2, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, st1.ModTime(), st2.ModTime())
		require.True(t, os.SameFile(st1, st2), "the file was not replaced")
		require.NoError(t, s.Load(&c))
		require.Equal(t, 5, c.N)
	})
	t.Run("invalid JSON changes nothing", func(t *testing.T) {
		require.ErrorContains(t, s.Update(func([]byte) ([]byte, error) { return []byte(`{"n":`), nil }), "not valid JSON")
		require.NoError(t, s.Load(&c))
		require.Equal(t, 5, c.N)
	})
	t.Run("corrupt document fails Load and Modify", func(t *testing.T) {
		other := filepath.Join(dir, "corrupt.json")
		require.NoError(t, os.WriteFile(other, []byte("{"), 0o600))
		cs, err := Open(other, 0o600)
		require.NoError(t, err)
		require.ErrorContains(t, cs.Load(&c), "decode")
		require.ErrorContains(t, Modify(cs, func(*counter) error { return nil }), "decode")
	})
	requireNoTemp(t, filepath.Dir(path))
}

// TestConcurrentWriters runs goroutines and two child processes that all
// increment one counter through Update: no increment may be lost.
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "counter.json")
	const goroutines, perGoroutine, children, perChild = 4, 50, 2, 100

	var cmds []*exec.Cmd
	for range children {
		cmd := child(t, "incr", path, perChild)
		require.NoError(t, cmd.Start())
		cmds = append(cmds, cmd)
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine opens its own handle, as separate parts of
			// the plugin would, and one shares the first handle.
			s, err := Open(path, 0o600)
			if err != nil {
				errs <- err
				return
			}
			for range perGoroutine {
				err := Modify(s, func(c *counter) error {
					c.N++
					c.Writers = append(c.Writers, g)
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, cmd := range cmds {
		require.NoError(t, cmd.Wait())
	}
	s, err := Open(path, 0o600)
	require.NoError(t, err)
	var c counter
	require.NoError(t, s.Load(&c))
	require.Equal(t, goroutines*perGoroutine+children*perChild, c.N)
	require.Len(t, c.Writers, goroutines*perGoroutine)
}

func TestSharedHandleConcurrent(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "shared.json"), 0o600)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				assert.NoError(t, Modify(s, func(c *counter) error { c.N++; return nil }))
				var c counter
				assert.NoError(t, s.Load(&c))
			}
		}()
	}
	wg.Wait()
	var c counter
	require.NoError(t, s.Load(&c))
	require.Equal(t, 200, c.N)
}

func TestSaveAndLoad(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "v.json"), 0o600)
	require.NoError(t, err)
	in := map[string]int{"a": 1, "b": 2}
	require.NoError(t, s.Save(in))
	var out map[string]int
	require.NoError(t, s.Load(&out))
	require.Equal(t, in, out)
	raw, err := s.Read()
	require.NoError(t, err)
	require.True(t, json.Valid(raw))
	require.ErrorContains(t, s.Save(func() {}), "encode")
}
