package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
)

// ErrLayoutVersion means the pinned maps were made by a different layout
// version than this binary's: the writer must not touch them.
var ErrLayoutVersion = errors.New("pinned BPF maps have a different layout version")

// LearnedWriter writes the pinned `learned` map from another process (the
// CoreDNS sidecar). Safe for concurrent use.
type LearnedWriter struct {
	pinDir  string
	learned *ebpf.Map
	id      ebpf.MapID
}

// OpenLearned opens pinDir/learned after checking that pinDir/meta carries
// LayoutVersion (else the error wraps ErrLayoutVersion).
func OpenLearned(pinDir string) (*LearnedWriter, error) {
	if err := CheckHostBPFFS(pinDir); err != nil {
		return nil, err
	}
	meta, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapMeta), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned meta in %s: %w", pinDir, err)
	}
	defer meta.Close()
	var v clawkerMetaVal
	if err := meta.Lookup(uint32(0), &v); err != nil {
		return nil, fmt.Errorf("read layout version in %s: %w", pinDir, err)
	}
	if v.LayoutVersion != LayoutVersion {
		return nil, fmt.Errorf("open learned in %s: pinned layout %d, this binary %d: %w", pinDir, v.LayoutVersion, LayoutVersion, ErrLayoutVersion)
	}
	l, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapLearned), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned learned in %s: %w", pinDir, err)
	}
	if l.KeySize() != 8 || l.ValueSize() != 16 {
		l.Close()
		return nil, fmt.Errorf("open learned in %s: key/value size %d/%d, want 8/16: %w", pinDir, l.KeySize(), l.ValueSize(), ErrLayoutVersion)
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("open learned in %s: %w", pinDir, err)
	}
	id, _ := info.ID()
	return &LearnedWriter{pinDir: pinDir, learned: l, id: id}, nil
}

// Learn records addr for endpoint index with identity for ttl (see
// Manager.Learn).
func (w *LearnedWriter) Learn(index uint32, addr netip.Addr, identity uint32, ttl time.Duration) error {
	k, v, err := learnedEntry(index, addr, identity, ttl)
	if err != nil {
		return err
	}
	if err := w.learned.Put(k, v); err != nil {
		return fmt.Errorf("learn %s for endpoint %d: %w", addr, index, err)
	}
	return nil
}

// Current reports whether the map this writer holds is still the pinned
// one. After the plugin rebuilt the maps (layout change) it is not: close
// the writer and OpenLearned again.
func (w *LearnedWriter) Current() bool {
	p, err := ebpf.LoadPinnedMap(filepath.Join(w.pinDir, MapLearned), nil)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false
	}
	id, _ := info.ID()
	return id == w.id
}

// Close closes the writer's file descriptor.
func (w *LearnedWriter) Close() error { return w.learned.Close() }
