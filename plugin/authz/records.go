package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
}

// Records is authz's durable memory of containers: a small JSON file of its
// own in the plugin's state directory (written atomically), separate from
// the driver's state so that authz never waits on the plugin's action queue.
type Records struct {
	path string // "" keeps the records in memory only (tests)
	mu   sync.Mutex
	m    map[string]*Record
}

// OpenRecords loads the records at path (none yet: empty).
func OpenRecords(path string) (*Records, error) {
	r := &Records{path: path, m: map[string]*Record{}}
	if path == "" {
		return r, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read authz records %s: %w", path, err)
	}
	if err := json.Unmarshal(raw, &r.m); err != nil {
		return nil, fmt.Errorf("decode authz records %s: %w", path, err)
	}
	if r.m == nil {
		r.m = map[string]*Record{}
	}
	return r, nil
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
	r.m[id] = rec
	if err := r.saveLocked(); err != nil {
		if had {
			r.m[id] = old
		} else {
			delete(r.m, id)
		}
		return err
	}
	return nil
}

// Created records the host config a container was created with, and whether
// it was created firewalled ("" when not).
func (r *Records) Created(id string, hc HostConfigBody, firewalled string) error {
	return r.update(id, func(rec *Record) {
		rec.HostConfig = &hc
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
	if err := r.saveLocked(); err != nil {
		for id, rec := range removed {
			r.m[id] = rec
		}
		return 0, err
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

func (r *Records) saveLocked() error {
	if r.path == "" {
		return nil
	}
	raw, err := json.Marshal(r.m)
	if err != nil {
		return fmt.Errorf("encode authz records: %w", err)
	}
	if err := store.WriteFileAtomic(r.path, raw, 0o600); err != nil {
		return fmt.Errorf("write authz records: %w", err)
	}
	return nil
}
