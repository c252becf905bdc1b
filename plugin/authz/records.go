package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/store"
)

// Record is what authz remembers of one container, by its full id. Docker's
// container list (the only container call authz may make: inspect blocks
// behind a concurrent start) shows neither a container's PID mode nor its
// capabilities or mounts, and a start request carries only the container's
// id, so the checks that must also run at start read the host config that
// was checked at create from here.
type Record struct {
	Created time.Time `json:"created"`
	// HostConfig is the part of the create request's host config the checks
	// read (nil when the container was created while authz was off).
	HostConfig *HostConfigBody `json:"host_config,omitempty"`
	// Firewalled is set once the container is on a clawker-fw network (at
	// create, or when the plugin identifies it): it stays firewalled for its
	// life, whatever networks it is later disconnected from.
	Firewalled string `json:"firewalled,omitempty"` // how: "network <id>", "netns of <id>"
	// Labels are the clawker.* labels the create request gave (an empty
	// map when it gave none; nil when authz did not see the create): only
	// these carry rules, never the image's labels Docker merges in.
	Labels map[string]string `json:"labels"`
}

// Records is authz's durable memory of containers: a journal of its own in
// the plugin's state directory (one JSON line per change), separate from the
// driver's state so that authz never waits on the plugin's action queue.
//
// A record is written in the response phase of every container create, so
// the write is on the path of `docker run`: it is appended before the
// response, which survives a crash of the plugin (the page cache is the
// kernel's), and fsynced within flushDelay after, which survives a crash of
// the host. Measured on the development VM: an fsynced rewrite of the whole
// file cost ~6 ms per create, a plain rewrite ~1-2.5 ms, an append ~15 us.
// The journal is compacted when it is opened and when records are pruned; a
// torn last line (a crash mid-append) is skipped.
type Records struct {
	path string // "" keeps the records in memory only (tests)
	mu   sync.Mutex
	m    map[string]*Record
	log  *os.File // the journal, open for appending

	flushPending bool
}

// flushDelay bounds how long an appended record waits for its fsync.
const flushDelay = 500 * time.Millisecond

// journalLine is one change: the whole new record of ID, or its removal.
type journalLine struct {
	ID     string  `json:"id"`
	Record *Record `json:"record,omitempty"` // nil: removed
}

// OpenRecords loads the records at path (none yet: empty), compacts the
// journal and opens it for appending.
func OpenRecords(path string) (*Records, error) {
	r := &Records{path: path, m: map[string]*Record{}}
	if path == "" {
		return r, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read authz records %s: %w", path, err)
	}
	for _, line := range bytes.Split(raw, []byte("\n")) {
		var l journalLine
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &l) != nil || l.ID == "" {
			continue
		}
		if l.Record == nil {
			delete(r.m, l.ID)
		} else {
			r.m[l.ID] = l.Record
		}
	}
	if err := r.compactLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

// compactLocked rewrites the journal with one line per record (atomically,
// durably) and reopens it for appending.
func (r *Records) compactLocked() error {
	var buf bytes.Buffer
	for id, rec := range r.m {
		line, err := json.Marshal(journalLine{ID: id, Record: rec})
		if err != nil {
			return fmt.Errorf("encode authz records: %w", err)
		}
		buf.Write(append(line, '\n'))
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return fmt.Errorf("write authz records: %w", err)
	}
	if err := store.WriteFileAtomic(r.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write authz records: %w", err)
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open authz records: %w", err)
	}
	if r.log != nil {
		r.log.Close()
	}
	r.log = f
	return nil
}

// GivenLabels returns the clawker labels container id's create request gave;
// recorded is false when authz did not see its create.
func (r *Records) GivenLabels(id string) (labels map[string]string, recorded bool) {
	rec, ok := r.Get(id)
	if !ok || rec.HostConfig == nil || rec.Labels == nil {
		return nil, false
	}
	return rec.Labels, true
}

// Get returns a copy of the record of container id.
func (r *Records) Get(id string) (Record, bool) {
	if r == nil {
		return Record{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.m[id]
	if !ok {
		return Record{}, false
	}
	return *rec, true
}

// update changes (or creates) the record of id and writes the file; on a
// failed write the records are unchanged.
func (r *Records) update(id string, fn func(rec *Record)) error {
	if r == nil || id == "" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.m[id]
	rec := &Record{Created: time.Now().UTC()}
	if had {
		c := *old
		rec = &c
	}
	fn(rec)
	if err := r.appendLocked(journalLine{ID: id, Record: rec}); err != nil {
		return err
	}
	r.m[id] = rec
	return nil
}

// Created records the host config and the clawker labels a container was
// created with, and whether it was created firewalled ("" when not).
func (r *Records) Created(id string, hc HostConfigBody, labels map[string]string, firewalled string) error {
	if labels == nil {
		labels = map[string]string{}
	}
	return r.update(id, func(rec *Record) {
		rec.HostConfig, rec.Labels = &hc, labels
		if firewalled != "" && rec.Firewalled == "" {
			rec.Firewalled = firewalled
		}
	})
}

// MarkFirewalled records that container id is firewalled, for its life.
func (r *Records) MarkFirewalled(id, how string) error {
	if rec, ok := r.Get(id); ok && rec.Firewalled != "" {
		return nil
	}
	return r.update(id, func(rec *Record) { rec.Firewalled = how })
}

// Prune forgets the containers that no longer exist (live reports whether
// one does). Records younger than minAge are kept: a container created
// after the caller listed Docker's containers is not in its list yet.
func (r *Records) Prune(live func(id string) bool, minAge time.Duration) (int, error) {
	if r == nil {
		return 0, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []string
	for id, rec := range r.m {
		if !live(id) && time.Since(rec.Created) >= minAge {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	removed := map[string]*Record{}
	for _, id := range gone {
		removed[id] = r.m[id]
		delete(r.m, id)
	}
	if r.path != "" {
		if err := r.compactLocked(); err != nil {
			for id, rec := range removed {
				r.m[id] = rec
			}
			return 0, err
		}
	}
	return len(gone), nil
}

// Len is the number of containers remembered.
func (r *Records) Len() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// appendLocked appends one change to the journal and schedules its fsync.
func (r *Records) appendLocked(l journalLine) error {
	if r.path == "" {
		return nil
	}
	line, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encode authz record: %w", err)
	}
	if _, err := r.log.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write authz records: %w", err)
	}
	if !r.flushPending {
		r.flushPending = true
		time.AfterFunc(flushDelay, r.flush)
	}
	return nil
}

// flush fsyncs the journal.
func (r *Records) flush() {
	r.mu.Lock()
	r.flushPending = false
	f := r.log
	r.mu.Unlock()
	if f != nil {
		_ = f.Sync() // a compaction may have closed it: its file was synced then
	}
}
