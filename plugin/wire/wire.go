// Package wire assembles the plugin process (run.go) and adapts the real
// subsystems to the small interfaces of the plugin core: bpf, netguard, the
// Docker API and the snapshot file (this file), Docker's names (names.go),
// the Envoy sidecar (envoy.go), the decision hub and the metrics endpoint
// (decisions.go), the settings (settings.go), the status of the parts
// (status.go) and the background loops (loops.go).
package wire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/netguard"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Kernel adapts *bpf.Manager.
type Kernel struct{ M *bpf.Manager }

// Enroll implements plugin.Kernel.
func (k Kernel) Enroll(cookie uint64, e plugin.Enrollment) error {
	return k.M.Enroll(cookie, bpf.Endpoint{
		Index: e.Index, IP: e.IP, Gateway: e.Gateway, Subnet: e.Subnet, ICC: e.ICC,
		DNSPort: model.DNSPort, CAPort: model.CAPort, BypassUntil: e.PassUntil,
	})
}

// Unenroll implements plugin.Kernel.
func (k Kernel) Unenroll(cookie uint64) error { return k.M.Unenroll(cookie) }

// ForgetEndpoint implements plugin.Kernel.
func (k Kernel) ForgetEndpoint(index uint32) error { return k.M.ForgetEndpoint(index) }

// SyncRoutes implements plugin.Kernel: the networks' bases first (keyed
// by gateway), then every endpoint's own routes with the layered marks,
// then CIDRs.
func (k Kernel) SyncRoutes(m *model.Model) error {
	routes := make(map[uint32][]bpf.Route, len(m.Routes))
	for idx, rs := range m.Routes {
		routes[idx] = bpfRoutes(rs)
	}
	cidrs := make(map[uint32][]bpf.CIDR, len(m.CIDRs))
	for idx, cs := range m.CIDRs {
		cidrs[idx] = bpfCIDRs(cs)
	}
	baseRoutes := make(map[netip.Addr][]bpf.Route, len(m.BaseRoutes))
	baseCIDRs := make(map[netip.Addr][]bpf.CIDR, len(m.BaseCIDRs))
	for id, gw := range m.BaseGateway {
		baseRoutes[gw] = bpfRoutes(m.BaseRoutes[id])
		baseCIDRs[gw] = bpfCIDRs(m.BaseCIDRs[id])
	}
	layered := make([]uint32, 0, len(m.Layered))
	for idx := range m.Layered {
		layered = append(layered, idx)
	}
	if err := k.M.SyncBase(baseRoutes, baseCIDRs); err != nil {
		return err
	}
	if err := k.M.SyncRoutesLayered(routes, layered); err != nil {
		return err
	}
	return k.M.SyncCIDRs(cidrs)
}

// ForgetWritten makes the next SyncRoutes read the maps whole and repair
// whatever differs (plugin.Reload).
func (k Kernel) ForgetWritten() { k.M.ForgetWritten() }

func bpfRoutes(rs []model.Route) []bpf.Route {
	out := make([]bpf.Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, bpf.Route{Identity: uint32(r.Identity), Port: r.Port, L4: uint8(r.L4), ListenerPort: r.ListenerPort})
	}
	return out
}

func bpfCIDRs(cs []model.CIDR) []bpf.CIDR {
	out := make([]bpf.CIDR, 0, len(cs))
	for _, c := range cs {
		out = append(out, bpf.CIDR{Prefix: c.Prefix, Identity: uint32(c.Identity)})
	}
	return out
}

// HostNet adapts *netguard.Handle and finds container network namespaces.
type HostNet struct {
	H *netguard.Handle
	// ProcRoot is the host's /proc (the plugin runs with pidhost).
	ProcRoot string
}

func guardOf(n *plugin.Network) netguard.Network {
	return netguard.Network{
		Bridge: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway, ICC: n.Config.Settings.ICC,
		DNSPort: model.DNSPort, TransparentPort: model.TransparentPort, CAPort: model.CAPort,
	}
}

// SetListenerPorts implements plugin.HostNet.
func (h HostNet) SetListenerPorts(bound plugin.ListenerPorts, perBridge map[string]plugin.ListenerPorts) error {
	per := make(map[string]netguard.Ports, len(perBridge))
	for br, p := range perBridge {
		per[br] = netguard.Ports(p)
	}
	return h.H.SetListenerPorts(netguard.Ports(bound), per)
}

// AddNetwork implements plugin.HostNet: bridge, then guard (idempotent).
func (h HostNet) AddNetwork(n *plugin.Network) error {
	if err := h.H.EnsureBridge(n.Bridge, netip.PrefixFrom(n.Gateway, n.Subnet.Bits())); err != nil {
		return err
	}
	return h.H.GuardNetwork(guardOf(n))
}

// RemoveNetwork implements plugin.HostNet.
func (h HostNet) RemoveNetwork(n *plugin.Network) error {
	errU := h.H.UnguardNetwork(n.Bridge)
	errB := h.H.DeleteBridge(n.Bridge)
	if errU != nil {
		return errU
	}
	return errB
}

// AddEndpoint implements plugin.HostNet: the veth pair and its
// anti-spoofing guard, both in place before Join returns.
func (h HostNet) AddEndpoint(n *plugin.Network, ep *plugin.Endpoint) error {
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("endpoint MAC %q: %w", ep.MAC, err)
	}
	if _, err := netlink.LinkByName(ep.HostVeth); err != nil {
		if ep.Joined {
			// The container side was moved away and the pair is gone with
			// the container: nothing to restore.
			return nil
		}
		if err := h.H.CreateVeth(ep.HostVeth, ep.PeerVeth, n.Bridge, mac); err != nil {
			return err
		}
	}
	return h.H.GuardEndpoint(netguard.Endpoint{Bridge: n.Bridge, HostVeth: ep.HostVeth, IP: ep.IP, MAC: mac})
}

// RemoveEndpoint implements plugin.HostNet.
func (h HostNet) RemoveEndpoint(n *plugin.Network, ep *plugin.Endpoint) error {
	errG := h.H.UnguardEndpoint(ep.HostVeth)
	errV := h.H.DeleteVeth(ep.HostVeth)
	if errG != nil {
		return errG
	}
	return errV
}

// NetnsPid implements plugin.HostNet: when Docker has moved the peer veth
// into the container's netns, the host-side veth carries that netns's id
// (IFLA_LINK_NETNSID); the process whose /proc/PID/ns/net has the same id is
// in the container's netns.
func (h HostNet) NetnsPid(ep *plugin.Endpoint) (int, bool, bool, error) {
	l, err := netlink.LinkByName(ep.HostVeth)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, false, true, nil
		}
		return 0, false, false, err
	}
	nsid := l.Attrs().NetNsID
	if nsid < 0 {
		return 0, false, false, nil
	}
	root := h.ProcRoot
	if root == "" {
		root = "/proc"
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return 0, false, false, err
	}
	// Newest processes first: the container's init was just created.
	for i := len(ents) - 1; i >= 0; i-- {
		pid, err := strconv.Atoi(ents[i].Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(root, ents[i].Name(), "ns", "net"))
		if err != nil {
			continue
		}
		id, err := netlink.GetNetNsIdByFd(int(f.Fd()))
		f.Close()
		if err == nil && id == nsid {
			return pid, true, false, nil
		}
	}
	return 0, false, false, fmt.Errorf("no process in netns id %d of %s yet", nsid, ep.HostVeth)
}

// Missing implements plugin.HostNet.
func (h HostNet) Missing(n *plugin.Network, eps []*plugin.Endpoint) ([]string, error) {
	veths := make([]string, 0, len(eps))
	for _, ep := range eps {
		veths = append(veths, ep.HostVeth)
	}
	return h.H.Missing(guardOf(n), veths)
}

// RemoveOrphans implements plugin.HostNet.
func (h HostNet) RemoveOrphans(known map[string]bool) ([]string, error) {
	bridges, err := h.H.Networks()
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, br := range bridges {
		if known[br] {
			continue
		}
		if err := h.H.Cleanup(br); err != nil {
			return gone, fmt.Errorf("clean up %s: %w", br, err)
		}
		gone = append(gone, br)
	}
	return gone, nil
}

// NetnsCookie implements plugin.HostNet.
func (h HostNet) NetnsCookie(path string) (uint64, error) { return bpf.NetnsCookie(path) }

// Docker adapts the Docker API client.
type Docker struct {
	C *client.Client

	mu     sync.Mutex
	images map[string]map[string]string // image id -> labels (immutable per id)
}

// NewDocker connects to the Docker socket at sock.
func NewDocker(sock string) (*Docker, error) {
	c, err := client.NewClientWithOpts(client.WithHost("unix://"+sock), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("connect to docker at %s: %w", sock, err)
	}
	return &Docker{C: c, images: map[string]map[string]string{}}, nil
}

// imageCacheMax bounds the image label cache (it is dropped when full).
const imageCacheMax = 512

// ImageLabels implements plugin.Docker through image inspect, which reads
// the image and layer stores and takes no container lock (moby
// daemon/images/image_inspect.go in 20.10, daemon/containerd/image_inspect.go
// today), so it cannot block behind a starting container. An image's
// config, labels included, never changes for its id: cached by id.
func (d *Docker) ImageLabels(ctx context.Context, imageID string) (map[string]string, error) {
	d.mu.Lock()
	l, ok := d.images[imageID]
	d.mu.Unlock()
	if ok {
		return l, nil
	}
	img, err := d.C.ImageInspect(ctx, imageID)
	if err != nil {
		return nil, err
	}
	l = map[string]string{}
	if img.Config != nil {
		for k, v := range img.Config.Labels {
			l[k] = v
		}
	}
	d.mu.Lock()
	if len(d.images) >= imageCacheMax {
		d.images = map[string]map[string]string{}
	}
	d.images[imageID] = l
	d.mu.Unlock()
	return l, nil
}

// Container implements plugin.Docker through the container list, which does
// not take the container's lock (inspect would block during start).
func (d *Docker) Container(ctx context.Context, id string) (plugin.Container, bool, error) {
	list, err := d.C.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("id", id))})
	if err != nil {
		return plugin.Container{}, false, err
	}
	for _, c := range list {
		if c.ID != id {
			continue
		}
		out := plugin.Container{ID: c.ID, Labels: c.Labels, ImageID: c.ImageID}
		if len(c.Names) > 0 {
			out.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		out.Aliases = append(out.Aliases, c.ID[:12])
		if c.NetworkSettings != nil {
			out.Networks = map[string]string{}
			for name, es := range c.NetworkSettings.Networks {
				if es != nil {
					out.Aliases = append(out.Aliases, es.Aliases...)
					out.Networks[name] = es.NetworkID
				}
			}
		}
		return out, true, nil
	}
	return plugin.Container{}, false, nil
}

// Running implements plugin.Docker.
func (d *Docker) Running(ctx context.Context) (map[string]bool, error) {
	return d.ids(ctx, container.ListOptions{})
}

// ids lists the ids of the containers opts selects.
func (d *Docker) ids(ctx context.Context, opts container.ListOptions) (map[string]bool, error) {
	list, err := d.C.ContainerList(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(list))
	for _, c := range list {
		out[c.ID] = true
	}
	return out, nil
}

// SnapshotFile publishes snapshots to the DNS sidecar: the head file it
// watches and one file per network base policy, written only when that
// base changed (dns.SnapshotWriter). Use it as a pointer, one per path.
type SnapshotFile = dns.SnapshotWriter

// Networks lists Docker's networks (every driver) as name -> id. Which of
// them are clawker-fw networks is decided by the plugin's own store (their
// ids), never by the driver's name: the plugin may be installed under any
// reference.
func (d *Docker) Networks(ctx context.Context) (map[string]string, error) {
	list, err := d.C.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(list))
	for _, n := range list {
		out[n.Name] = n.ID
	}
	return out, nil
}

// NetworkDriver resolves a network reference as Docker does (network
// inspect: full id, name, id prefix; a manager's swarm networks too) to its
// driver's name (found false when there is no such network).
func (d *Docker) NetworkDriver(ctx context.Context, ref string) (string, bool, error) {
	n, err := d.C.NetworkInspect(ctx, ref, network.InspectOptions{})
	if errdefs.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return n.Driver, true, nil
}

// VolumeOptions returns the driver options of a local named volume (found
// false when it does not exist).
func (d *Docker) VolumeOptions(ctx context.Context, name string) (map[string]string, bool, error) {
	v, err := d.C.VolumeInspect(ctx, name)
	if errdefs.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v.Options, true, nil
}

// ResolveContainer resolves a container reference as Docker does (moby's
// daemon.GetContainer: a full id, then an exact name, then a unique id
// prefix), in any state, through the container list: inspect takes the
// container's lock and blocks behind a concurrent start. The list's "id"
// filter resolves a unique prefix (or full id) the way GetContainer does;
// its "name" filter is a regular expression, anchored here, and the exact
// name is then picked from its answer.
func (d *Docker) ResolveContainer(ctx context.Context, ref string) (authz.Container, bool, error) {
	list := func(key, value string) ([]container.Summary, error) {
		return d.C.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg(key, value))})
	}
	// One list call in the common cases (a full id, a name): the next
	// step's call only when the earlier one found nothing.
	if fullID.MatchString(ref) {
		byID, err := list("id", ref)
		if err != nil {
			return authz.Container{}, false, err
		}
		for _, c := range byID {
			if c.ID == ref {
				return summary(c), true, nil
			}
		}
	}
	byName, err := list("name", "^/?"+regexp.QuoteMeta(ref)+"$")
	if err != nil {
		return authz.Container{}, false, err
	}
	for _, c := range byName {
		for _, n := range c.Names {
			if n == "/"+ref {
				return summary(c), true, nil
			}
		}
	}
	if !hexRef.MatchString(ref) || fullID.MatchString(ref) {
		return authz.Container{}, false, nil
	}
	byID, err := list("id", ref)
	if err != nil {
		return authz.Container{}, false, err
	}
	var found []container.Summary
	for _, c := range byID {
		if strings.HasPrefix(c.ID, ref) {
			found = append(found, c)
		}
	}
	if len(found) == 1 {
		return summary(found[0]), true, nil
	}
	return authz.Container{}, false, nil
}

// hexRef is what a container id or id prefix looks like.
var hexRef = regexp.MustCompile(`^[0-9a-f]+$`)

func summary(c container.Summary) authz.Container {
	out := authz.Container{ID: c.ID, NetworkMode: c.HostConfig.NetworkMode, Networks: map[string]string{}}
	for _, n := range c.Names {
		if n = strings.TrimPrefix(n, "/"); !strings.Contains(n, "/") {
			out.Name = n // not a link alias (/other/alias)
			break
		}
	}
	if c.NetworkSettings != nil {
		for name, es := range c.NetworkSettings.Networks {
			id := ""
			if es != nil {
				id = es.NetworkID
			}
			out.Networks[name] = id
		}
	}
	return out
}

// ContainerIDs returns the ids of every container, in any state.
func (d *Docker) ContainerIDs(ctx context.Context) (map[string]bool, error) {
	return d.ids(ctx, container.ListOptions{All: true})
}

// Plugin resolves a plugin reference through Docker (GET /plugins/{ref}/json
// resolves it as disable, rm, set and upgrade do: full id, name with or
// without tag and registry, unique id prefix) to its id and name.
func (d *Docker) Plugin(ctx context.Context, ref string) (id, name string, found bool, err error) {
	p, _, err := d.C.PluginInspectWithRaw(ctx, ref)
	if errdefs.IsNotFound(err) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	return p.ID, p.Name, true, nil
}

// SelfPluginID reads this managed plugin's own id from its mounts: Docker
// binds <exec-root>/plugins/<id> at /run/docker/plugins in every managed
// plugin (moby plugin/v2 InitSpec), so the mount's root ends in the id.
// mountinfo is the text of /proc/self/mountinfo.
func SelfPluginID(mountinfo string) (string, error) {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != pluginRuntimeDir {
			continue
		}
		root := strings.ReplaceAll(f[3], "\\040", " ")
		if id := filepath.Base(root); fullID.MatchString(id) {
			return id, nil
		}
		return "", fmt.Errorf("the mount at %s is %s, not <exec-root>/plugins/<id>", pluginRuntimeDir, root)
	}
	return "", fmt.Errorf("nothing is mounted at %s (not running as a Docker managed plugin?)", pluginRuntimeDir)
}

// pluginRuntimeDir is where Docker mounts a managed plugin's runtime
// directory (its socket directory).
const pluginRuntimeDir = "/run/docker/plugins"

var fullID = regexp.MustCompile(`^[0-9a-f]{64}$`)
