package authz

import (
	"errors"
	"fmt"
	"strings"

	"github.com/docker/go-plugins-helpers/authorization"
)

// Shared namespaces (issue 11, class 3).
//
// A container that shares a firewalled container's network namespace
// (--network container:X) is inside the same firewall and gets the same
// checks; one that shares a PID namespace with a container of another
// firewall, or with one outside any firewall, can be made to send through the
// other's network (ptrace needs no extra capability). Docker resolves X again
// at every start, by full id, then name, then unique id prefix, in any state
// and after renames, so the checks do the same, at create and at start, from
// Docker's container list (inspect blocks behind a concurrent start).

// Container is what Docker's container list shows of one container.
type Container struct {
	ID   string
	Name string
	// NetworkMode is the host config's network mode ("container:<ref>"
	// when it shares another container's network namespace).
	NetworkMode string
	// Networks maps each network the container is attached to (by name, or
	// the reference given at create) to the network's id ("" until Docker
	// has connected it once).
	Networks map[string]string
}

// netns is a container's network namespace as far as the checks care.
type netns struct {
	// owner is the full id of the container whose namespace it is; "" for
	// the new namespace of a container being created.
	owner string
	// fw says how the namespace is firewalled, phrased to follow "on the
	// clawker-fw network" ("" when it is not).
	fw string
}

// maxShareDepth bounds --network container: chains (Docker refuses to join
// a container that itself joins another; the bound only guards a loop).
const maxShareDepth = 4

// container resolves a container reference through Docker's list.
func (a *Authz) container(ref string) (Container, bool, error) {
	ref = strings.TrimPrefix(ref, "/")
	if ref == "" {
		return Container{}, false, nil
	}
	if a.cfg.Container == nil {
		return Container{}, false, errors.New("no Docker client to resolve containers")
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	c, found, err := a.cfg.Container(ctx, ref)
	if err != nil {
		return Container{}, false, fmt.Errorf("cannot resolve container %q through Docker's container list (%v); retry", ref, err)
	}
	return c, found, nil
}

// netnsOfRef resolves a container reference and returns its network
// namespace. A container that does not exist has a namespace of its own
// that is not firewalled: Docker refuses to share it anyway.
func (a *Authz) netnsOfRef(ref string) (netns, error) {
	c, found, err := a.container(ref)
	if err != nil || !found {
		return netns{owner: "missing:" + ref}, err
	}
	return a.netnsOf(c, 0)
}

// netnsOf returns the network namespace c runs in: the one of the container
// it shares (followed through Docker, as Docker does at start), or its own.
func (a *Authz) netnsOf(c Container, depth int) (netns, error) {
	if ref, ok := strings.CutPrefix(c.NetworkMode, "container:"); ok {
		if depth >= maxShareDepth {
			return netns{}, fmt.Errorf("container %s: --network container: chain longer than %d", c.Name, maxShareDepth)
		}
		x, found, err := a.container(ref)
		if err != nil {
			return netns{}, err
		}
		if !found {
			return netns{owner: "missing:" + ref}, nil
		}
		ns, err := a.netnsOf(x, depth+1)
		if err == nil && ns.fw != "" && depth == 0 {
			ns.fw = fmt.Sprintf("of container %s (--network container:%s)", nameOr(x), ref[:min(12, len(ref))])
		}
		return ns, err
	}
	fw, err := a.firewalledHow(c)
	return netns{owner: c.ID, fw: fw}, err
}

// firewalledHow says why c's own network namespace is firewalled ("" when
// it is not): it is remembered as firewalled (for its life), it is an
// identified endpoint of the snapshot, or one of its networks is a
// clawker-fw network (a created or stopped container has no endpoint).
func (a *Authz) firewalledHow(c Container) (string, error) {
	for name, id := range c.Networks {
		fw, err := a.networkFirewalled(name, id)
		if err != nil || fw {
			return name, err
		}
	}
	if snap := a.cfg.Snapshot(); snap != nil {
		for _, ep := range snap.Endpoints {
			if ep.ContainerID == c.ID {
				return ep.NetworkID[:min(12, len(ep.NetworkID))], nil
			}
		}
	}
	if rec, ok := a.cfg.Records.Get(c.ID); ok && rec.Firewalled != "" {
		return fmt.Sprintf("of container %s (firewalled for its life: %s)", nameOr(c), rec.Firewalled), nil
	}
	return "", nil
}

// networkFirewalled reports whether a container's network (its name or
// reference, and its id once known) is a clawker-fw network.
func (a *Authz) networkFirewalled(name, id string) (bool, error) {
	if id != "" && a.ownNetwork(id) {
		return true, nil
	}
	return a.isFirewalled(name)
}

// otherNetworks returns c's networks other than target (a reference).
func otherNetworks(c Container, target string) []string {
	var out []string
	for name, id := range c.Networks {
		if name == target || (id != "" && strings.HasPrefix(id, target)) {
			continue
		}
		out = append(out, name)
	}
	return out
}

func nameOr(c Container) string {
	if c.Name != "" {
		return c.Name
	}
	return c.ID[:min(12, len(c.ID))]
}

// checkPid applies the PID namespace rule to a container in namespace self
// with PID mode pidMode: sharing is allowed only between containers of one
// network namespace, or between containers that are both unfirewalled. A
// process may ptrace another in its PID namespace (Docker's seccomp profile
// allows it), and so send through that process's network: between a
// firewalled and an unfirewalled container, in either direction, or between
// two firewalls (whose policies may differ), that is egress the firewall
// does not see.
func (a *Authz) checkPid(pidMode string, self netns) authorization.Response {
	ref, ok := strings.CutPrefix(pidMode, "container:")
	if !ok {
		return allow()
	}
	x, found, err := a.container(ref)
	if err != nil {
		return deny("%v", err)
	}
	if !found {
		return allow() // Docker refuses a PID namespace of no container
	}
	other, err := a.netnsOf(x, 0)
	if err != nil {
		return deny("%v", err)
	}
	// Docker stores the target by id once it exists: show it short, and
	// name it.
	short, who := ref, ref
	if ref == x.ID {
		short = x.ID[:min(12, len(x.ID))]
		who = short + " (" + nameOr(x) + ")"
	}
	switch {
	case self.owner != "" && self.owner == other.owner:
		return allow()
	case self.fw == "" && other.fw == "":
		return allow()
	case other.fw == "":
		return deny("--pid container:%s is not allowed: this container is on the clawker-fw network %s and %s is not firewalled; a shared PID namespace lets one container's processes ptrace the other's and send through its network; drop --pid", short, self.fw, who)
	case self.fw == "":
		return deny("--pid container:%s is not allowed: %s is firewalled (on the clawker-fw network %s) and this container is not; a shared PID namespace would let the firewalled processes ptrace this container's and send through its network; drop --pid, or run it in the same network namespace (--network container:%s)", short, who, other.fw, short)
	}
	return deny("--pid container:%s is not allowed: both containers are firewalled but in different network namespaces (this one on the clawker-fw network %s, %s on %s), whose policies may differ; ptrace would give one the other's egress; share the network namespace too (--network container:%s) or drop --pid", short, self.fw, who, other.fw, short)
}

// pidSharers reports a remembered container whose PID mode names c (by id
// prefix or name) from another network namespace, or whose PID namespace c
// joins: such a container cannot become firewalled.
func (a *Authz) pidSharers(c Container) string {
	if a.cfg.Records == nil {
		return ""
	}
	if rec, ok := a.cfg.Records.Get(c.ID); ok && rec.HostConfig != nil {
		if ref, ok := strings.CutPrefix(rec.HostConfig.PidMode, "container:"); ok {
			return ref
		}
	}
	a.cfg.Records.mu.Lock()
	defer a.cfg.Records.mu.Unlock()
	for id, rec := range a.cfg.Records.m {
		if id == c.ID || rec.HostConfig == nil {
			continue
		}
		ref, ok := strings.CutPrefix(rec.HostConfig.PidMode, "container:")
		if !ok || ref == "" {
			continue
		}
		if strings.TrimPrefix(ref, "/") == c.Name || strings.HasPrefix(c.ID, ref) {
			if net, ok := strings.CutPrefix(rec.HostConfig.NetworkMode, "container:"); ok &&
				(strings.TrimPrefix(net, "/") == c.Name || strings.HasPrefix(c.ID, net)) {
				continue // shares c's network namespace too
			}
			return id[:min(12, len(id))]
		}
	}
	return ""
}
