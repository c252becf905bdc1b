package plugin

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/store"
)

// stateVersion is the layout version of state.json. 2: each network's
// configuration is in a file of its own (configDir, named by its SHA-256;
// the network's "config_file"). loadState also reads 1 (configurations in
// state.json, as "config"), and a network carrying "config" in either.
const stateVersion = 2

// configDir is the directory of the networks' configuration files, in the
// state directory.
const configDir = "configs"

// Network is one persisted clawker-fw network. Docker does not replay
// CreateNetwork after a restart, so everything needed to rebuild it is here.
//
// Options and Config are immutable: once a Network is built they are only
// ever replaced whole (a new map, a new NetworkConfig with slices of its
// own), never written in place — no entry of Options set or deleted, no
// field of Config assigned, no element of its rules (their path rules,
// methods) or resolvers written, nothing appended into their arrays. State
// clones share them (a network's options carry thousands of rules, and
// every mutation clones the state), and the StateEncoder knows a
// configuration it encoded by its identity (the same map, the same
// slices). TestNoNetworkConfigWrites refuses in-place writes through them
// anywhere in the module.
type Network struct {
	ID      string               `json:"id"`
	Options map[string]string    `json:"options"` // immutable: replaced whole, never written in place
	Config  policy.NetworkConfig `json:"config"`  // immutable: replaced whole, never written in place
	Bridge  string               `json:"bridge"`
	Subnet  netip.Prefix         `json:"subnet"`
	Gateway netip.Addr           `json:"gateway"`
	// Runtime holds the rules added through the admin API.
	Runtime []policy.EgressRule `json:"runtime,omitempty"`
	Created time.Time           `json:"created"`
	// Scope is the data scope the driver reported when Docker created the
	// network here: "global" for a swarm network of a CLAWKER_SCOPE=global
	// install ("" is local).
	Scope string `json:"scope,omitempty"`
}

// Endpoint is one persisted endpoint.
type Endpoint struct {
	ID        string     `json:"id"`
	NetworkID string     `json:"network_id"`
	Index     uint32     `json:"index"`
	IP        netip.Addr `json:"ip"`
	MAC       string     `json:"mac"`
	HostVeth  string     `json:"host_veth"`
	PeerVeth  string     `json:"peer_veth"`
	Joined    bool       `json:"joined,omitempty"`
	// SandboxKey is the netns path Docker gave at Join.
	SandboxKey string `json:"sandbox_key,omitempty"`
	// NetnsCookie is set once the endpoint is enrolled in the hooks.
	NetnsCookie uint64 `json:"netns_cookie,omitempty"`
	// Container identity, known some time after Join.
	ContainerID   string              `json:"container_id,omitempty"`
	ContainerName string              `json:"container_name,omitempty"`
	Aliases       []string            `json:"aliases,omitempty"`
	Labels        map[string]string   `json:"labels,omitempty"`
	LabelRules    []policy.EgressRule `json:"label_rules,omitempty"`
	LabelError    string              `json:"label_error,omitempty"`
	BypassUntil   time.Time           `json:"bypass_until,omitzero"`
	// Learn marks the bypass as learn mode (flows recorded).
	Learn bool `json:"learn,omitempty"`
	// IgnoredLabels are clawker.* labels that carry no rule: the image's.
	IgnoredLabels []IgnoredLabel `json:"ignored_labels,omitempty"`
}

// Identified reports whether the endpoint's container (and so its labels) is
// known.
func (e *Endpoint) Identified() bool { return e.ContainerID != "" }

// State is everything the plugin persists, in one atomically written file.
type State struct {
	Version    int                        `json:"version"`
	Generation uint64                     `json:"generation"`
	NextIndex  uint32                     `json:"next_index"`
	Networks   map[string]*Network        `json:"networks"`
	Endpoints  map[string]*Endpoint       `json:"endpoints"`
	Identities *policy.IdentityTable      `json:"identities"`
	Ports      *model.PortAllocator       `json:"ports"`
	Extra      map[string]json.RawMessage `json:"extra,omitempty"`
}

// NewState returns an empty state (what a first start begins with).
func NewState() *State {
	return &State{
		Version:    stateVersion,
		NextIndex:  1,
		Networks:   map[string]*Network{},
		Endpoints:  map[string]*Endpoint{},
		Identities: policy.NewIdentityTable(),
		Ports:      model.NewPortAllocator(),
	}
}

// loadState reads path, or returns a fresh state when it does not exist.
// The networks' configuration files are read from configDir beside it.
func loadState(path string) (*State, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", path, err)
	}
	dir := filepath.Join(filepath.Dir(path), configDir)
	st, err := decodeState(raw, func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) })
	if err != nil {
		return nil, fmt.Errorf("decode state %s: %w", path, err)
	}
	return st, nil
}

// WriteState writes st into the state directory dir as the plugin saves
// it (the networks' configuration files, then state.json), for a plugin to
// start from (benchmarks, tools).
func WriteState(dir string, st *State) error {
	_, err := saveState(NewStateEncoder(), &configFiles{dir: filepath.Join(dir, configDir)}, filepath.Join(dir, "state.json"), st)
	return err
}

// saveState writes st, encoded by e, as state.json at path, in the state
// directory whose configuration files c keeps: first the configuration
// files it names that are not on disk yet, then state.json. It returns the
// files state.json names (what c.prune keeps). Plugin.save and WriteState
// both write through it, so a state directory written for a plugin is laid
// out as the plugin lays it out.
func saveState(e *StateEncoder, c *configFiles, path string, st *State) (map[string][]byte, error) {
	raw, err := e.Encode(st)
	if err != nil {
		return nil, err
	}
	files := e.ConfigFiles()
	if err := c.write(files); err != nil {
		return nil, err
	}
	if err := writeState(path, raw); err != nil {
		return nil, err
	}
	return files, nil
}

// configFileRE is what a configuration file's name must be: nothing that
// could name a file elsewhere.
var configFileRE = regexp.MustCompile(`^[0-9a-f]{64}\.json$`)

// configTmpRE matches the temporary file of a configuration file's write
// (store.WriteFileAtomic).
var configTmpRE = regexp.MustCompile(`^\.[0-9a-f]{64}\.json\.tmp-`)

// decodeState decodes state.json's content raw, reading each network's
// configuration file with read (by name), and checks each file's content
// against its name. The state returned has the current layout version.
func decodeState(raw []byte, read func(name string) ([]byte, error)) (*State, error) {
	st := NewState()
	if err := json.Unmarshal(raw, st); err != nil {
		return nil, err
	}
	if st.Version != 1 && st.Version != stateVersion {
		return nil, fmt.Errorf("layout version %d, this plugin reads 1 and %d", st.Version, stateVersion)
	}
	var refs struct {
		Networks map[string]*struct {
			File    string          `json:"config_file"`
			Inline  json.RawMessage `json:"config"`
			Options json.RawMessage `json:"options"`
		} `json:"networks"`
	}
	if err := json.Unmarshal(raw, &refs); err != nil {
		return nil, err
	}
	for id, ref := range refs.Networks {
		n := st.Networks[id]
		if ref == nil || ref.File == "" || n == nil {
			continue
		}
		if ref.Inline != nil || ref.Options != nil {
			return nil, fmt.Errorf("network %s: both a configuration and a configuration file", short(id))
		}
		if !configFileRE.MatchString(ref.File) {
			return nil, fmt.Errorf("network %s: configuration file %q: not a SHA-256 name", short(id), ref.File)
		}
		cfg, err := read(ref.File)
		if err != nil {
			return nil, fmt.Errorf("network %s: configuration file: %w", short(id), err)
		}
		if got := configFileName(cfg); got != ref.File {
			return nil, fmt.Errorf("network %s: configuration file %s: its content's SHA-256 is %s (damaged)", short(id), ref.File, strings.TrimSuffix(got, ".json"))
		}
		var f networkFile
		if err := json.Unmarshal(cfg, &f); err != nil {
			return nil, fmt.Errorf("network %s: configuration file %s: %w", short(id), ref.File, err)
		}
		n.Options, n.Config = f.Options, f.Config
	}
	st.Version = stateVersion
	if st.Networks == nil {
		st.Networks = map[string]*Network{}
	}
	if st.Endpoints == nil {
		st.Endpoints = map[string]*Endpoint{}
	}
	return st, nil
}

// configFiles keeps the networks' configuration files in dir: written
// before the state.json that names them, removed once no state.json names
// them. Used by the plugin's queue actions one at a time.
type configFiles struct {
	dir    string
	onDisk map[string]bool // nil until dir was listed
}

// write writes the files of want not yet in dir (atomically, durably).
func (c *configFiles) write(want map[string][]byte) error {
	if err := c.list(); err != nil {
		return err
	}
	for name, raw := range want {
		if c.onDisk[name] {
			continue
		}
		if err := store.WriteFileAtomic(filepath.Join(c.dir, name), raw, 0o600); err != nil {
			return fmt.Errorf("write network configuration: %w", err)
		}
		c.onDisk[name] = true
	}
	return nil
}

// prune removes the configuration files that are not in keep (the ones
// the state.json just written names), and reports the first failure; a
// file left behind is removed by a later prune.
func (c *configFiles) prune(keep map[string][]byte) error {
	if err := c.list(); err != nil {
		return err
	}
	var first error
	for name := range c.onDisk {
		if _, ok := keep[name]; ok {
			continue
		}
		if err := os.Remove(filepath.Join(c.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			first = cmp.Or(first, fmt.Errorf("remove old network configuration: %w", err))
			continue
		}
		delete(c.onDisk, name)
	}
	return first
}

// list reads which configuration files dir holds, once (creating dir).
func (c *configFiles) list() error {
	if c.onDisk != nil {
		return nil
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", c.dir, err)
	}
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", c.dir, err)
	}
	c.onDisk = map[string]bool{}
	for _, e := range ents {
		// A write cut by a crash leaves its temporary file (".NAME.tmp-*"):
		// never named by a state, so the next prune removes it.
		if e.Type().IsRegular() && (configFileRE.MatchString(e.Name()) || configTmpRE.MatchString(e.Name())) {
			c.onDisk[e.Name()] = true
		}
	}
	return nil
}

// writeState writes raw durably (temp file, fsync, rename, fsync dir).
func writeState(path string, raw []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	return store.WriteFileAtomic(path, raw, 0o600)
}

// clone copies the state, so an action can mutate a copy and commit it
// only when the store write succeeded. Nothing mutable is shared between
// the copy and st (maps, slices, the identity table, the port allocator,
// the runtime and label rules and their path rules) except each network's
// Options and Config, which are immutable (see Network) and so shared
// read-only: a mutation of either never shows in the other. Each type
// copies itself by value first and then replaces each of its reference
// fields, so a value field added later is copied without a change here,
// and a reference field added later is caught by TestStateCloneShares (it
// fills every field and checks that the copy shares no memory with the
// original but those two).
func (st *State) clone() *State {
	c := *st
	if st.Networks != nil {
		c.Networks = make(map[string]*Network, len(st.Networks))
		for id, n := range st.Networks {
			c.Networks[id] = n.clone()
		}
	}
	if st.Endpoints != nil {
		c.Endpoints = make(map[string]*Endpoint, len(st.Endpoints))
		for id, ep := range st.Endpoints {
			c.Endpoints[id] = ep.clone()
		}
	}
	c.Identities = st.Identities.Clone()
	c.Ports = st.Ports.Clone()
	if st.Extra != nil {
		c.Extra = make(map[string]json.RawMessage, len(st.Extra))
		for k, v := range st.Extra {
			c.Extra[k] = slices.Clone(v)
		}
	}
	return &c
}

// clone copies n (nil stays nil), sharing its immutable Options and
// Config: at 10,000 option rules, copying them was most of the cost of a
// mutation (milliseconds and megabytes each).
func (n *Network) clone() *Network {
	if n == nil {
		return nil
	}
	c := *n
	c.Runtime = policy.CloneRules(n.Runtime)
	return &c
}

// clone deep-copies ep (nil stays nil).
func (ep *Endpoint) clone() *Endpoint {
	if ep == nil {
		return nil
	}
	c := *ep
	c.Aliases = slices.Clone(ep.Aliases)
	c.Labels = maps.Clone(ep.Labels)
	c.LabelRules = policy.CloneRules(ep.LabelRules)
	c.IgnoredLabels = slices.Clone(ep.IgnoredLabels)
	return &c
}

// endpointsOf returns the endpoints of network id, sorted by index.
func (st *State) endpointsOf(id string) []*Endpoint {
	var out []*Endpoint
	for _, ep := range st.Endpoints {
		if ep.NetworkID == id {
			out = append(out, ep)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// endpointByContainer finds a container's endpoint (by full or short id, or
// name) on any clawker-fw network.
func (st *State) endpointByContainer(ref string) *Endpoint {
	for _, ep := range st.Endpoints {
		if ep.ContainerID == "" {
			continue
		}
		if ep.ContainerID == ref || (len(ref) >= 12 && len(ref) <= len(ep.ContainerID) && ep.ContainerID[:len(ref)] == ref) ||
			ep.ContainerName == ref {
			return ep
		}
	}
	return nil
}

// Clone is clone, for bench/scale (what a mutation costs the plugin).
func (st *State) Clone() *State { return st.clone() }
