package dns

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
)

// Store holds the snapshot being served. Readers never block: Load is one
// atomic read. Every Publish closes the channel returned by the previous
// Load, so a query waiting for a pending endpoint wakes on the next swap.
type Store struct {
	mu    sync.Mutex // serializes Publish
	state atomic.Pointer[storeState]
}

type storeState struct {
	snap    *policy.Snapshot
	changed chan struct{}
	// names maps (network, lower-case container name or alias) to the
	// endpoint that answers it; ptr maps an endpoint address to the name its
	// PTR record gives; upstreams holds each network's normalized override.
	names     map[nameKey]*policy.Endpoint
	ptr       map[netip.Addr]string
	upstreams map[string][]string
}

type nameKey struct{ network, name string }

// index builds the lookup tables of st.snap.
func (st *storeState) index() {
	st.names = make(map[nameKey]*policy.Endpoint)
	st.ptr = make(map[netip.Addr]string)
	st.upstreams = make(map[string][]string)
	for id, n := range st.snap.Networks {
		if n == nil {
			continue
		}
		if ups := n.Upstreams(); len(ups) > 0 {
			st.upstreams[id] = ups
		}
	}
	for _, ep := range st.snap.Endpoints {
		if ep == nil || !ep.IP.IsValid() {
			continue
		}
		cn := containerName(ep.ContainerName)
		if cn != "" {
			st.names[nameKey{ep.NetworkID, cn}] = ep
			ptr := cn
			if n := st.snap.Networks[ep.NetworkID]; n != nil && n.Name != "" {
				ptr += "." + strings.ToLower(n.Name)
			}
			st.ptr[ep.IP.Unmap()] = ptr + "."
		}
		for _, a := range ep.Aliases {
			if a = containerName(a); a != "" {
				if _, taken := st.names[nameKey{ep.NetworkID, a}]; !taken {
					st.names[nameKey{ep.NetworkID, a}] = ep
				}
			}
		}
	}
}

// containerName normalizes a container name or alias: Docker's leading "/"
// and one trailing dot dropped, lower case.
func containerName(s string) string {
	s = strings.TrimPrefix(s, "/")
	s = strings.TrimSuffix(s, ".")
	return strings.ToLower(s)
}

// NewStore returns an empty store (no snapshot yet).
func NewStore() *Store {
	s := &Store{}
	s.state.Store(&storeState{changed: make(chan struct{})})
	return s
}

// Load returns the current snapshot (nil before the first one) and a channel
// that is closed when a newer snapshot is published.
func (s *Store) Load() (*policy.Snapshot, <-chan struct{}) {
	st := s.state.Load()
	return st.snap, st.changed
}

func (s *Store) view() *storeState { return s.state.Load() }

// Publish indexes snap and makes it current.
func (s *Store) Publish(snap *policy.Snapshot) {
	snap.Index()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.state.Load()
	st := &storeState{snap: snap, changed: make(chan struct{})}
	st.index()
	s.state.Store(st)
	close(old.changed)
	snapshotGeneration.Set(float64(snap.Generation))
}

// Generation returns the generation served and whether any snapshot is
// loaded.
func (s *Store) Generation() (uint64, bool) {
	snap, _ := s.Load()
	if snap == nil {
		return 0, false
	}
	return snap.Generation, true
}

// fileID identifies one version of the snapshot file. The writer replaces
// the file by rename, so the inode changes on every publish; mtime and size
// catch in-place writes too.
type fileID struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func statFile(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	return idOf(fi), nil
}

func idOf(fi os.FileInfo) fileID {
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = st.Ino
	}
	return id
}

// readHead reads the file at path and the identity of the version it
// read (one open file: the content is that version's).
func readHead(path string) ([]byte, fileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileID{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileID{}, err
	}
	b := make([]byte, 0, fi.Size()+1)
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, idOf(fi), nil
		}
		if err != nil {
			return nil, fileID{}, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// snapshotFile is the JSON form of a policy.Snapshot, the one the sidecar
// read before the binary files of SnapshotWriter (snapfile.go); it still
// reads it (a file an older plugin left, or one written by hand).
// A network carries its Base policy once; an endpoint carries no policy
// when its policy is its network's base (base_policy), only its own
// layer (labels: policy.Layer's) when it has label rules, and its full
// policy only when it came without layers. A file without bases and
// layers (the older form, snapshots built by hand) reads as before.
//
// Every endpoint used to carry its full compiled policy: at 10,000
// network rules that is about 3 MB per endpoint, 1.5 GB for 500 (see
// bench/scale).
type snapshotFile struct {
	Generation uint64                       `json:"generation"`
	Networks   map[string]*snapshotNetwork  `json:"networks"`
	Endpoints  map[uint32]*snapshotEndpoint `json:"endpoints"`
}

type snapshotNetwork struct {
	policy.Network
	Base *policy.Policy `json:"base,omitempty"`
}

type snapshotEndpoint struct {
	policy.Endpoint
	// BasePolicy: the policy is the network's Base.
	BasePolicy bool `json:"base_policy,omitempty"`
	// Labels: the policy is the network's Base layered with these.
	Labels *policy.Policy `json:"labels,omitempty"`
}

// EncodeSnapshot is the JSON form of snap (the plugin writes the binary
// files of SnapshotWriter; bench/scale compares the two).
func EncodeSnapshot(snap *policy.Snapshot) ([]byte, error) {
	f := snapshotFile{Generation: snap.Generation,
		Networks:  make(map[string]*snapshotNetwork, len(snap.Networks)),
		Endpoints: make(map[uint32]*snapshotEndpoint, len(snap.Endpoints))}
	for id, n := range snap.Networks {
		if n != nil {
			f.Networks[id] = &snapshotNetwork{Network: *n, Base: n.Base}
		}
	}
	for idx, ep := range snap.Endpoints {
		if ep == nil {
			continue
		}
		e := &snapshotEndpoint{Endpoint: *ep}
		var base *policy.Policy
		if n := snap.Networks[ep.NetworkID]; n != nil {
			base = n.Base
		}
		switch {
		case ep.Policy == nil || base == nil:
		case ep.Policy == base:
			e.Policy, e.BasePolicy = nil, true
		case ep.Labels != nil:
			e.Policy, e.Labels = nil, ep.Labels
		}
		f.Endpoints[idx] = e
	}
	return json.Marshal(&f)
}

// DecodeSnapshot reads what EncodeSnapshot wrote, indexed. Endpoints of
// one network share its base policy; one with label rules gets a layered
// policy (policy.Policy.Base). An endpoint that refers to a base its
// network lacks fails the whole file: the generation served is kept.
func DecodeSnapshot(b []byte) (*policy.Snapshot, error) {
	var f snapshotFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	snap := &policy.Snapshot{Generation: f.Generation,
		Networks:  make(map[string]*policy.Network, len(f.Networks)),
		Endpoints: make(map[uint32]*policy.Endpoint, len(f.Endpoints))}
	for id, n := range f.Networks {
		if n == nil {
			continue
		}
		n.Network.Base = n.Base.Indexed()
		snap.Networks[id] = &n.Network
	}
	for idx, e := range f.Endpoints {
		if e == nil {
			continue
		}
		ep := &e.Endpoint
		if e.BasePolicy || e.Labels != nil {
			n := snap.Networks[ep.NetworkID]
			if n == nil || n.Base == nil {
				return nil, fmt.Errorf("endpoint %d: network %q has no base policy", idx, ep.NetworkID)
			}
			if e.Labels == nil {
				ep.Policy = n.Base
			} else {
				l := e.Labels
				ep.Labels = l
				ep.Policy = (&policy.Policy{Generation: l.Generation, Allows: l.Allows, Denies: l.Denies,
					Overridden: l.Overridden, InspectAll: n.Base.InspectAll, Base: n.Base}).Indexed()
			}
		} else {
			ep.Policy = ep.Policy.Indexed()
		}
		snap.Endpoints[idx] = ep
	}
	return snap.Index(), nil
}

// Watcher polls the snapshot file and publishes every new version into a
// Store. Answering never waits on it: a load runs on the watcher's own
// goroutine and only the finished snapshot is swapped in. Besides polling
// every interval it wakes on inotify events of the file's directory, so a
// new head is loaded as soon as it is renamed into place.
type Watcher struct {
	path     string
	interval time.Duration
	store    *Store
	log      Logger

	stop    chan struct{}
	done    chan struct{}
	last    fileID
	seen    bool
	missing bool
	// bases are the base policies of the snapshot served, by content
	// hash: a head that names them again reuses them.
	bases map[[sha256.Size]byte]*policy.Policy
}

// NewWatcher returns a watcher of path that publishes into store every
// interval (100 ms when zero) and whenever the file is replaced.
func NewWatcher(path string, interval time.Duration, store *Store, log Logger) *Watcher {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	return &Watcher{path: path, interval: interval, store: store, log: log}
}

// Start loads the file once synchronously (so the first queries find it)
// and then watches it in the background until Stop.
func (w *Watcher) Start() {
	// The watch is set before the first load, so no rename after it is
	// missed.
	n := newNotifier(w.path)
	w.Poll()
	w.stop = make(chan struct{})
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(w.interval)
		defer t.Stop()
		defer func() { n.close() }()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			case ok := <-n.events():
				if !ok {
					n.close()
					n = nil
				}
			}
			if n == nil {
				// Retried every interval: the directory may not exist
				// yet, or was replaced.
				n = newNotifier(w.path)
			}
			w.Poll()
		}
	}()
}

// Stop ends polling and waits for the goroutine.
func (w *Watcher) Stop() {
	if w.stop == nil {
		return
	}
	close(w.stop)
	<-w.done
	w.stop = nil
}

// Poll loads the file now if it changed since the last load (what the
// background loop does on every tick and event). Not safe for concurrent
// use: call it before Start or after Stop (bench/scale times it).
func (w *Watcher) Poll() {
	for attempt := 0; ; attempt++ {
		b, id, err := readHead(w.path)
		if err != nil {
			if !w.missing {
				w.log.Warningf("read snapshot: %v (serving generation kept)", err)
				w.missing = true
			}
			w.seen = false
			return
		}
		w.missing = false
		if w.seen && id == w.last {
			return
		}
		snap, bases, err := loadSnapshot(w.path, b, w.bases)
		if err != nil && errors.Is(err, fs.ErrNotExist) && attempt < 3 {
			// A base the head names is gone: the writer has moved on
			// (it keeps the bases of its last two heads). Read the head
			// again, unless it is still the one just read.
			if now, serr := statFile(w.path); serr == nil && now != id {
				continue
			}
		}
		w.last, w.seen = id, true
		if err != nil {
			// Logged once per file version; the next rewrite is retried.
			w.log.Errorf("decode snapshot %s: %v (serving generation kept)", w.path, err)
			snapshotErrors.Inc()
			return
		}
		w.bases = bases
		w.store.Publish(snap)
		w.log.Infof("snapshot generation=%d endpoints=%d networks=%d loaded from %s", snap.Generation, len(snap.Endpoints), len(snap.Networks), w.path)
		return
	}
}
