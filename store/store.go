// Package store keeps clawker-fw's durable state files: rules, identities,
// endpoints. Every write is atomic and durable (a reader sees the old file or
// the new one, never a mix, and an acknowledged write survives a crash).
// Serializing read-modify-write cycles is the caller's (the plugin's state
// is written by its one queue).
package store

import (
	"fmt"
	"os"
	"path/filepath"
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
// between steps 1 and 3 can leave a temporary file behind (never read: its
// name is not path). If path is a symbolic link, the link itself is replaced.
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
