package plugin

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// The plugin's core talks to the kernel, the host network, the data planes
// and Docker through these small interfaces. plugin/wire wires the real packages
// (bpf, netguard, proxy/builtin, the Docker client); unit tests of the state
// machine swap them at this boundary.

// Enrollment is what the socket hooks need to know about one endpoint.
type Enrollment struct {
	Index   uint32
	IP      netip.Addr
	Gateway netip.Addr
	Subnet  netip.Prefix
	ICC     bool
	// PassUntil leaves the endpoint's non-DNS flows untouched by the hooks
	// until then, so the closed network redirects them to the transparent
	// listener: used while the container is pending and during a bypass.
	PassUntil time.Time
}

// Kernel is the BPF socket-hook enforcement (package bpf).
type Kernel interface {
	Enroll(cookie uint64, e Enrollment) error
	Unenroll(cookie uint64) error
	SyncRoutes(m *model.Model) error
	ForgetEndpoint(index uint32) error
	// ForgetWritten makes the next SyncRoutes read the maps whole instead
	// of comparing with what it last wrote (Reload: something may have
	// changed them behind the plugin's back).
	ForgetWritten()
}

// HostNet is the closed network: bridges, veths and the nftables guard
// (package netguard).
type HostNet interface {
	AddNetwork(n *Network) error
	RemoveNetwork(n *Network) error
	AddEndpoint(n *Network, ep *Endpoint) error
	RemoveEndpoint(n *Network, ep *Endpoint) error
	// NetnsPid returns a process living in the network namespace that the
	// endpoint's container-side veth was moved into, and ok=false while the
	// veth is still in the host namespace. gone is true when the host-side
	// veth no longer exists.
	NetnsPid(ep *Endpoint) (pid int, ok, gone bool, err error)
	// NetnsCookie returns the cookie of the network namespace at path.
	NetnsCookie(path string) (uint64, error)
	// RemoveOrphans removes bridges, guards and veths the host carries for
	// networks not in known (bridge names): left behind when a network was
	// removed while the plugin was down. It returns what it removed.
	RemoveOrphans(known map[string]bool) ([]string, error)
	// SetListenerPorts tells the guard which listener ports the plugin has
	// bound (reachable from no other interface than the networks' bridges)
	// and which of them each network (by bridge name) may reach on its
	// gateway, besides DNS, the CA and the transparent port.
	SetListenerPorts(bound ListenerPorts, perBridge map[string]ListenerPorts) error
	// Missing returns what of the network's guard and of its endpoints'
	// guards is no longer on the host (removed by something else, such as
	// a firewall reload); empty when all is in place.
	Missing(n *Network, eps []*Endpoint) ([]string, error)
}

// ListenerPorts are listener ports by transport.
type ListenerPorts struct {
	TCP, UDP []uint16
}

// DataPlane is an L7 proxy engine (builtin or envoy).
type DataPlane interface {
	// Apply returns a *model.BindError (possibly wrapped) naming the
	// listeners that did not open; everything else is applied.
	Apply(snap *policy.Snapshot, m *model.Model) error
}

// Container is what the plugin learns about a container from Docker.
type Container struct {
	ID      string
	Name    string
	Aliases []string
	// Labels are Docker's merged labels: the image's and those given at
	// create (see given.go).
	Labels map[string]string
	// ImageID is the container's image ("sha256:...").
	ImageID string
	// Networks are the container's networks, id by name.
	Networks map[string]string
}

// Docker is the slice of the Docker API the plugin uses. It must never
// inspect a starting container (the call blocks while the container is
// locked during start): implementations list.
type Docker interface {
	Container(ctx context.Context, id string) (Container, bool, error)
	Running(ctx context.Context) (map[string]bool, error)
	// ImageLabels returns an image's labels (image inspect takes no
	// container lock).
	ImageLabels(ctx context.Context, imageID string) (map[string]string, error)
}

// SnapshotSink receives every published snapshot (the DNS sidecar's file).
type SnapshotSink interface {
	Publish(snap *policy.Snapshot) error
}

// Listener opens the plugin's API sockets (tests use net.Listen on temp paths).
type Listener func(path string) (net.Listener, error)
