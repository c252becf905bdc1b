package authz

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/docker/go-plugins-helpers/authorization"

	"github.com/clawker-fw/clawker-fw/policy"
)

// networkCreateBody is the part of POST /networks/create the check reads.
type networkCreateBody struct {
	Name       string            `json:"Name"`
	Driver     string            `json:"Driver"`
	Scope      string            `json:"Scope"`
	Attachable bool              `json:"Attachable"`
	Options    map[string]string `json:"Options"`
}

// checkNetworkCreate refuses a clawker-fw network of a scope other than
// local that is given clawker.* options (`docker network create -d
// clawker-fw:latest --scope swarm -o clawker.allow=...`, or a `docker stack
// deploy` network with driver_opts). The driver reports local scope, and
// Swarm hands a local-scope driver no options of a swarm network (measured
// on Docker 20.10: the plugin logs "rules: 0", `docker network inspect`
// shows no options), so the network's containers would run with none of its
// rules, silently. Until network rules reach every node it is refused with
// a message. So is --attachable: a standalone container joining a swarm
// network on a node where no task of it ran yet is created before the
// network is in that node's plugin store, so the container checks would
// not see it as a clawker-fw network (services are checked by the driver's
// name: checkService). A swarm network without both (rules per service with
// --container-label) and local networks pass.
//
// Decision order:
//  1. local scope ("" or "local"): allowed (the driver validates options);
//  2. no clawker.* option and not attachable: allowed;
//  3. the driver is resolved as Docker resolves it (plugin id, name with or
//     without tag, id prefix); not a plugin, or another plugin: allowed;
//  4. this plugin, or this plugin's id unknown, or the driver not
//     resolvable: refused (fail closed).
func (a *Authz) checkNetworkCreate(c apiCall) authorization.Response {
	var body networkCreateBody
	if err := json.Unmarshal(c.body, &body); err != nil {
		return deny("cannot parse the network create request: %v", err)
	}
	if body.Scope == "" || body.Scope == "local" {
		return allow()
	}
	var keys []string
	for k := range body.Options {
		if policy.IsClawkerKey(k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 && !body.Attachable {
		return allow()
	}
	sort.Strings(keys)
	if body.Driver == "" {
		return allow() // Docker's default driver (bridge, overlay in swarm)
	}
	refuse := deny("a %s-scope clawker-fw network (%s) cannot carry network rules yet (%s): Swarm does not pass a network's options to the clawker-fw driver on its nodes, so the network's containers would run without its rules. Create it without -o clawker.* and give the rules to the service (docker service create --container-label clawker.allow=...), or create a local network (without --scope)",
		body.Scope, body.Name, strings.Join(keys, ", "))
	if len(keys) == 0 {
		refuse = deny("a %s-scope clawker-fw network (%s) cannot be --attachable yet: a standalone container could join it on a node before the firewall there knows the network, past the container checks. Create it without --attachable and run services on it (they are checked), or create a local network (without --scope)",
			body.Scope, body.Name)
	}
	if a.cfg.SelfID == "" || a.cfg.Plugin == nil {
		return refuse
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	id, _, found, err := a.cfg.Plugin(ctx, body.Driver)
	switch {
	case err != nil:
		return deny("cannot resolve the network driver %q through Docker (%v); retry", body.Driver, err)
	case !found || id != a.cfg.SelfID:
		return allow()
	}
	return refuse
}

// serviceSpec is the part of a service spec (POST /services/create, and the
// whole new spec of POST /services/{id}/update) the checks read. Swarm
// creates the task containers itself, past the container checks, so the
// spec is checked instead, as a container create would be.
type serviceSpec struct {
	TaskTemplate struct {
		// ContainerSpec carries the mounts in the container create shape;
		// its capabilities are CapabilityAdd. Swarm has no --privileged,
		// --pid, --device, --volumes-from or Binds for services.
		ContainerSpec *struct {
			HostConfigBody
			CapabilityAdd []string          `json:"CapabilityAdd"`
			Labels        map[string]string `json:"Labels"`
		} `json:"ContainerSpec"`
		Networks []networkAttachment `json:"Networks"`
	} `json:"TaskTemplate"`
	Networks []networkAttachment `json:"Networks"` // deprecated spelling, still applied
}

type networkAttachment struct {
	Target string `json:"Target"`
}

// checkService applies the container checks to a service's tasks:
//  1. invalid clawker.* container labels (--container-label) are refused;
//  2. the networks are placed: a clawker-fw network is one in the plugin's
//     store, or (a swarm network no task of which ran here yet) one whose
//     driver Docker resolves to this plugin; unknown: refused;
//  3. on no clawker-fw network, clawker.* labels are refused (they would
//     protect nothing); on one, the escapes are refused as for a container:
//     a second network (`--network host` included), dangerous --cap-add,
//     mounts of Docker's or the firewall's paths (binds, volume options,
//     existing named volumes of this node).
func (a *Authz) checkService(c apiCall) authorization.Response {
	var spec serviceSpec
	if err := json.Unmarshal(c.body, &spec); err != nil {
		return deny("cannot parse the service spec: %v", err)
	}
	var hc HostConfigBody
	var labels map[string]string
	if cs := spec.TaskTemplate.ContainerSpec; cs != nil {
		hc = cs.HostConfigBody
		hc.CapAdd = append(hc.CapAdd, cs.CapabilityAdd...)
		labels = cs.Labels
	}
	if resp := checkLabels(labels); !resp.Allow {
		return resp
	}
	var nets, fw []string
	for _, n := range append(spec.TaskTemplate.Networks, spec.Networks...) {
		if n.Target == "" || contains(nets, n.Target) {
			continue
		}
		nets = append(nets, n.Target)
		isFW, err := a.serviceNetworkFirewalled(n.Target)
		if err != nil {
			return deny("%v", err)
		}
		if isFW {
			fw = append(fw, n.Target)
		}
	}
	if len(fw) == 0 {
		return unfirewalledWithLabels(labels, nets)
	}
	return a.checkEscapes(hc, nets, fw)
}

// serviceNetworkFirewalled reports whether a service's network reference is
// a clawker-fw network: in the plugin's store, or with a driver that Docker
// resolves to this plugin. It fails closed when Docker cannot answer, and
// counts every plugin driver as this one when the plugin's own id is unknown.
func (a *Authz) serviceNetworkFirewalled(ref string) (bool, error) {
	if fw, err := a.isFirewalled(ref); err != nil || fw {
		return fw, err
	}
	if a.cfg.NetworkDriver == nil {
		return false, nil
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	driver, found, err := a.cfg.NetworkDriver(ctx, ref)
	if err != nil {
		return false, fmt.Errorf("cannot tell whether network %s is a clawker-fw network (Docker: %v); retry", ref, err)
	}
	if !found || driver == "" || a.cfg.Plugin == nil {
		return false, nil
	}
	id, _, found, err := a.cfg.Plugin(ctx, driver)
	if err != nil {
		return false, fmt.Errorf("cannot resolve the driver %s of network %s through Docker (%v); retry", driver, ref, err)
	}
	return found && (a.cfg.SelfID == "" || id == a.cfg.SelfID), nil
}
