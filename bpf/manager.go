// Package bpf loads and manages clawker-fw's cgroup socket hooks: the
// sock_addr programs in clawker.c and the pinned maps they read (layouts in
// docs/SEAMS.md, "BPF maps").
//
// Programs are attached to one cgroup2 directory (the host's root cgroup in
// production, a test cgroup in tests) through bpf_links pinned under one
// bpffs directory, so enforcement outlives the process that loaded it: Close
// leaves everything in place, a later Open reopens the pinned maps and links
// (swapping the programs in atomically), and only Remove detaches.
package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// ErrClosed is returned by a Manager's methods after Close or Remove.
var ErrClosed = errors.New("bpf manager is closed")

// LayoutVersion is the version of the map layouts compiled into this binary
// (LAYOUT_VERSION in clawker.c). It is stored in the pinned `meta` map; every
// consumer compares it when it opens the pins.
const LayoutVersion = 3

// DefaultPinDir is where production pins live (on the host's bpffs).
const DefaultPinDir = "/sys/fs/bpf/clawker-fw"

// Map names as pinned under the pin directory.
const (
	MapMeta      = "meta"
	MapEndpoints = "endpoints"
	MapLearned   = "learned"
	MapCIDRs     = "cidrs"
	MapRoutes    = "routes"
	// MapBaseRoutes and MapBaseCIDRs hold each network's base policy once,
	// keyed by its gateway (see SyncBase).
	MapBaseRoutes = "base_routes"
	MapBaseCIDRs  = "base_cidrs"
	MapOrigDst    = "origdst"
	MapEvents     = "events"
	MapCounters   = "counters"
)

var mapNames = []string{MapMeta, MapEndpoints, MapLearned, MapCIDRs, MapRoutes, MapBaseRoutes, MapBaseCIDRs, MapOrigDst, MapEvents, MapCounters}

// hook is one program and where it attaches; the link is pinned as
// link_<name>.
type hook struct {
	name   string
	prog   string
	attach ebpf.AttachType
}

var hooks = []hook{
	{"connect4", "clawker_connect4", ebpf.AttachCGroupInet4Connect},
	{"connect6", "clawker_connect6", ebpf.AttachCGroupInet6Connect},
	{"sendmsg4", "clawker_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"sendmsg6", "clawker_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
	{"recvmsg4", "clawker_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"recvmsg6", "clawker_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"getpeername4", "clawker_getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"getpeername6", "clawker_getpeername6", ebpf.AttachCgroupInet6GetPeername},
	{"sock_create", "clawker_sock_create", ebpf.AttachCGroupInetSockCreate},
}

// Config says where to pin and where to attach.
type Config struct {
	// PinDir is the bpffs directory holding the maps and links
	// (default DefaultPinDir). Its parent must be a mounted bpffs.
	PinDir string
	// CgroupPath is the cgroup2 directory the programs attach to (default:
	// the detected cgroup2 mount, /sys/fs/cgroup/unified on hybrid hosts).
	CgroupPath string
}

// Manager owns the loaded programs, the pinned maps and the links of one
// pin directory. Its methods are safe for concurrent use.
type Manager struct {
	cfg     Config
	rebuilt bool
	closed  atomic.Bool

	mu    sync.Mutex // serializes read-modify-write of map contents
	maps  map[string]*ebpf.Map
	progs map[string]*ebpf.Program
	links map[string]link.Link
	// What the syncs last wrote to the routes and CIDR maps (under mu).
	wRoutes, wBaseRoutes written[clawkerRouteKey, clawkerRouteVal]
	wCIDRs, wBaseCIDRs   written[clawkerCidrKey, clawkerCidrVal]
	// learned writes the learned map (the same writer the DNS sidecar
	// uses through OpenLearned).
	learned *LearnedWriter
	// fill reads an inner learned map's entry count from its memory
	// accounting (calibrated once, see LearnedFill).
	fillOnce sync.Once
	fill     fillGauge

	denialsOnce sync.Once
	denials     chan Denial
	rd          *ringbuf.Reader
	readerDone  chan struct{}
	readerStop  chan struct{}
}

func (c Config) withDefaults() (Config, error) {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	if c.CgroupPath == "" {
		p, err := DetectCgroup2()
		if err != nil {
			return c, err
		}
		c.CgroupPath = p
	}
	return c, nil
}

// Open loads the programs and attaches them, reusing whatever an earlier
// process pinned under cfg.PinDir:
//  1. it checks privileges (root or CAP_BPF+CAP_NET_ADMIN), that the pin
//     directory's parent is a bpffs and that CgroupPath is cgroup2;
//  2. if `meta` is pinned with this binary's LayoutVersion and every pinned
//     map is compatible, the pinned maps are reused (enrollments, routes and
//     learned addresses carry over);
//  3. otherwise the maps are created afresh ("rebuild"): Rebuilt() then
//     reports true and the caller must Enroll, SyncRoutes and SyncCIDRs again
//     (and the DNS sidecar must reopen `learned`);
//  4. a pinned link is reused and atomically switched to the new program
//     (BPF_LINK_UPDATE), so there is no instant without a program attached;
//     a missing one is attached and pinned;
//  5. on a rebuild the old map pins are replaced by the new maps only after
//     the links run the new programs.
func Open(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	if err := CheckHostBPFFS(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	if err := checkCgroup2(cfg.CgroupPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir %s: %w", cfg.PinDir, err)
	}

	spec, err := loadClawker()
	if err != nil {
		return nil, fmt.Errorf("load clawker spec: %w", err)
	}
	var compiled uint32
	if err := spec.Variables["layout_version"].Get(&compiled); err != nil {
		return nil, fmt.Errorf("read compiled layout version: %w", err)
	}
	if compiled != LayoutVersion {
		return nil, fmt.Errorf("clawker.c has LAYOUT_VERSION %d but package bpf has %d: regenerate", compiled, LayoutVersion)
	}

	m := &Manager{cfg: cfg, maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}, links: map[string]link.Link{}}

	pinned, reuse, err := openPinned(cfg.PinDir, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range pinned {
			p.Close()
		}
	}()
	m.rebuilt = !reuse

	opts := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{}}
	if reuse {
		for name, p := range pinned {
			opts.MapReplacements[name] = p
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	for name, mp := range coll.Maps {
		if isInternalMap(name) {
			mp.Close()
			continue
		}
		m.maps[name] = mp
	}
	m.progs = coll.Programs

	if !reuse || pinned[MapMeta] == nil {
		if err := m.maps[MapMeta].Put(uint32(0), clawkerMetaVal{LayoutVersion: LayoutVersion}); err != nil {
			m.closeFDs()
			return nil, fmt.Errorf("write meta: %w", err)
		}
	}

	if m.learned, err = newLearnedWriter("", spec, m.maps[MapLearned]); err != nil {
		m.closeFDs()
		return nil, err
	}

	if err := m.attachAll(); err != nil {
		m.closeFDs()
		return nil, err
	}

	// Pin maps that are new (all of them on a rebuild), replacing old pins.
	for _, name := range mapNames {
		if reuse && pinned[name] != nil {
			continue
		}
		path := filepath.Join(cfg.PinDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.closeFDs()
			return nil, fmt.Errorf("unpin old map %s: %w", path, err)
		}
		if err := m.maps[name].Pin(path); err != nil {
			m.closeFDs()
			return nil, fmt.Errorf("pin map %s: %w", path, err)
		}
	}
	return m, nil
}

func isInternalMap(name string) bool {
	for _, n := range mapNames {
		if n == name {
			return false
		}
	}
	return true
}

// openPinned opens the pinned maps under dir. reuse is true when meta
// carries LayoutVersion and every pinned map is compatible with spec. With
// no pins at all, reuse is false (a fresh install).
func openPinned(dir string, spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, bool, error) {
	pinned := map[string]*ebpf.Map{}
	closeAll := func() {
		for _, p := range pinned {
			p.Close()
		}
	}
	meta, err := ebpf.LoadPinnedMap(filepath.Join(dir, MapMeta), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return pinned, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open pinned meta: %w", err)
	}
	var v clawkerMetaVal
	if err := meta.Lookup(uint32(0), &v); err != nil || v.LayoutVersion != LayoutVersion {
		meta.Close()
		return pinned, false, nil
	}
	pinned[MapMeta] = meta
	for _, name := range mapNames[1:] {
		p, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue // created and pinned by Open
		}
		if err != nil {
			closeAll()
			return nil, false, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		pinned[name] = p
		if err := spec.Maps[name].Compatible(p); err != nil {
			// Same version, different layout: treat as a layout change.
			closeAll()
			return map[string]*ebpf.Map{}, false, nil
		}
	}
	return pinned, true, nil
}

func (m *Manager) linkPath(h hook) string {
	return filepath.Join(m.cfg.PinDir, "link_"+h.name)
}

func (m *Manager) attachAll() error {
	cgID, err := cgroupID(m.cfg.CgroupPath)
	if err != nil {
		return err
	}
	for _, h := range hooks {
		prog := m.progs[h.prog]
		path := m.linkPath(h)
		l, err := link.LoadPinnedLink(path, nil)
		if err == nil {
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("update pinned link %s: %w", path, err)
				}
				m.links[h.name] = l
				continue
			}
			// Pinned for another cgroup (or unreadable): detach it.
			_ = l.Unpin()
			l.Close()
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("open pinned link %s: %w", path, err)
		}
		l, err = link.AttachCgroup(link.CgroupOptions{Path: m.cfg.CgroupPath, Attach: h.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("attach %s at %s: %w", h.name, m.cfg.CgroupPath, err)
		}
		if err := l.Pin(path); err != nil {
			l.Close()
			return fmt.Errorf("pin link %s: %w", path, err)
		}
		m.links[h.name] = l
	}
	return nil
}

// Rebuilt reports whether Open had to create the maps afresh (first install
// or a layout change). The caller must then Enroll every endpoint and Sync
// routes and CIDRs again before relying on the hooks.
func (m *Manager) Rebuilt() bool { return m.rebuilt }

// PinDir returns the pin directory in use.
func (m *Manager) PinDir() string { return m.cfg.PinDir }

// CgroupPath returns the cgroup the programs are attached to.
func (m *Manager) CgroupPath() string { return m.cfg.CgroupPath }

func (m *Manager) closeFDs() {
	if m.learned != nil {
		m.learned.release()
	}
	for _, l := range m.links {
		l.Close()
	}
	for _, p := range m.progs {
		p.Close()
	}
	for _, mp := range m.maps {
		mp.Close()
	}
	m.links, m.progs, m.maps = map[string]link.Link{}, map[string]*ebpf.Program{}, map[string]*ebpf.Map{}
}

func (m *Manager) stopReader() {
	if m.rd != nil {
		close(m.readerStop)
		m.rd.Close()
		<-m.readerDone
		m.rd = nil
	}
}

// Close releases this process's file descriptors. Pinned maps and links
// stay, so enforcement holds while no manager runs.
func (m *Manager) Close() error {
	m.closed.Store(true)
	m.stopReader()
	m.closeFDs()
	return nil
}

// Remove detaches every program and deletes every pin (uninstall, tests).
// Links still held open by another Manager in this process stay attached
// until that one is closed.
func (m *Manager) Remove() error {
	m.closed.Store(true)
	m.stopReader()
	var errs []error
	for _, h := range hooks {
		path := m.linkPath(h)
		if l, ok := m.links[h.name]; ok {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin link %s: %w", path, err))
			}
		} else if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", path, err))
		}
	}
	for _, name := range mapNames {
		path := filepath.Join(m.cfg.PinDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", path, err))
		}
	}
	m.closeFDs() // closing the last reference to each link detaches it
	if err := os.Remove(m.cfg.PinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin dir %s: %w", m.cfg.PinDir, err))
	}
	return errors.Join(errs...)
}
