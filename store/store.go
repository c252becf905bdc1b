// Package store keeps clawker-fw's durable state files: rules, identities,
// endpoints. Every write is atomic and durable (a reader sees the old file or
// the new one, never a mix, and an acknowledged write survives a crash), and
// read-modify-write cycles are serialized between goroutines and between
// processes.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// tmpMarker is part of every temporary file's name: ".<base>.tmp-<random>".
const tmpMarker = ".tmp-"

// beforeRename, when set (by tests), runs after the temporary file is
// written and synced and before it is renamed over the real one. Returning
// an error aborts the write as a failed write would.
var beforeRename func(tmp string) error

// WriteFileAtomic replaces path with data so that no reader and no crash
// ever observes a partial file:
//
//  1. the data is written to a temporary file in the same directory
//     (".<name>.tmp-*", so it is never mistaken for the real file);
//  2. the temporary file gets the mode of the file it replaces (perm when
//     there is none), and is fsynced;
//  3. it is renamed over path (atomic within a file system);
//  4. the directory is fsynced, so the rename itself is durable.
//
// On error the temporary file is removed and path is unchanged. A crash
// between steps 1 and 3 can leave a temporary file behind; JSON.Open removes
// those. If path is a symbolic link, the link itself is replaced.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	mode := perm
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	f, err := os.CreateTemp(dir, "."+base+tmpMarker+"*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if beforeRename != nil {
		if err := beforeRename(tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	ok = true
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("sync directory of %s: %w", path, err)
	}
	return nil
}

// SyncDir fsyncs a directory, making renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// JSON is one JSON document on disk, guarded by a lock that serializes
// goroutines (a mutex) and processes (flock(2) on "<path>.lock", a separate
// file so the lock survives the data file being replaced). Writes go through
// WriteFileAtomic, so a reader or a crash never sees a half-written document.
type JSON struct {
	path string
	perm os.FileMode
	mu   sync.Mutex
}

// Open returns the store for path, creating its directory (0700) when
// missing. perm is the mode of the document when Update creates it. Open
// removes temporary files that a crash left next to the document.
func Open(path string, perm os.FileMode) (*JSON, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create directory of %s: %w", path, err)
	}
	s := &JSON{path: path, perm: perm}
	err := s.locked(unix.LOCK_EX, func() error {
		stale, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+globEscape(filepath.Base(path))+tmpMarker+"*"))
		if err != nil {
			return err
		}
		for _, f := range stale {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove stale %s: %w", f, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// globEscape escapes glob metacharacters in a file name.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Path returns the document's path.
func (s *JSON) Path() string { return s.path }

// locked runs fn holding the mutex and a flock of the given kind.
func (s *JSON) locked(how int, fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lf, err := os.OpenFile(s.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock of %s: %w", s.path, err)
	}
	defer lf.Close() // closing the last descriptor releases the flock
	for {
		err = unix.Flock(int(lf.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", s.path, err)
	}
	return fn()
}

// Read returns the document's bytes; a missing document is an error that
// wraps fs.ErrNotExist.
func (s *JSON) Read() ([]byte, error) {
	var data []byte
	err := s.locked(unix.LOCK_SH, func() error {
		var err error
		data, err = os.ReadFile(s.path)
		return err
	})
	return data, err
}

// Load decodes the document into v. A missing document is an error that
// wraps fs.ErrNotExist, so callers can start from defaults.
func (s *JSON) Load(v any) error {
	data, err := s.Read()
	if err != nil {
		return fmt.Errorf("load %s: %w", s.path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", s.path, err)
	}
	return nil
}

// Update runs a read-modify-write cycle under the lock: fn receives the
// current bytes (nil when the document does not exist yet) and returns the
// new ones, which must be valid JSON and are written atomically. If fn
// returns an error, or its result is not valid JSON, nothing changes and the
// error is returned. A result equal to the current bytes is not rewritten.
// fn must not call other methods of s (the lock is not reentrant).
func (s *JSON) Update(fn func(raw []byte) ([]byte, error)) error {
	return s.locked(unix.LOCK_EX, func() error {
		raw, err := os.ReadFile(s.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			raw = nil
		case err != nil:
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		out, err := fn(raw)
		if err != nil {
			return err
		}
		if !json.Valid(out) {
			return fmt.Errorf("update %s: result is not valid JSON", s.path)
		}
		if raw != nil && bytes.Equal(out, raw) {
			return nil
		}
		return WriteFileAtomic(s.path, out, s.perm)
	})
}

// Save replaces the document with v encoded as indented JSON.
func (s *JSON) Save(v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.path, err)
	}
	return s.Update(func([]byte) ([]byte, error) { return append(data, '\n'), nil })
}

// Modify runs a typed read-modify-write cycle on s: it decodes the current
// document into a T (the zero T when there is none), lets fn change it, and
// saves the result as indented JSON. If fn returns an error nothing changes.
func Modify[T any](s *JSON, fn func(v *T) error) error {
	return s.Update(func(raw []byte) ([]byte, error) {
		var v T
		if raw != nil {
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("decode %s: %w", s.path, err)
			}
		}
		if err := fn(&v); err != nil {
			return nil, err
		}
		data, err := json.MarshalIndent(&v, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", s.path, err)
		}
		return append(data, '\n'), nil
	})
}
