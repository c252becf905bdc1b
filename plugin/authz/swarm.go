package authz

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/docker/go-plugins-helpers/authorization"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// networkCreateBody is the part of POST /networks/create the check reads.
type networkCreateBody struct {
	Name       string            `json:"Name"`
	Driver     string            `json:"Driver"`
	Scope      string            `json:"Scope"`
	Attachable bool              `json:"Attachable"`
	Options    map[string]string `json:"Options"`
}

// checkNetworkCreate checks the creation of a clawker-fw network that is
// not local (`docker network create -d clawker-fw:latest --scope swarm -o
// clawker.allow=...`, or a `docker stack deploy` network with driver_opts).
//
// A local-scope install (the default) gets no options from Swarm (measured
// on Docker 20.10: the plugin logs "rules: 0", `docker network inspect`
// shows none): a swarm network with clawker.* options would run its
// containers without its rules, silently, so it is refused, naming the
// install setting that carries them (CLAWKER_SCOPE=global: the driver then
// allocates the network on the manager and Swarm hands every node the
// options it echoes, see plugin/swarm.go). A global-scope install gets its
// options checked here, because Swarm allocates a network after the create
// has returned: an invalid option would leave it unallocated and its tasks
// pending, with the error only in the manager's log.
//
// --attachable is refused in both: a standalone container joining a swarm
// network on a node where no task of it ran yet is created before the
// network is in that node's plugin store (and a worker's API does not know
// the network at all), so the container checks would not see it as a
// clawker-fw network (services are checked by the driver's name:
// checkService).
//
// Decision order:
//  1. a local-scope install and local scope ("" or "local"): allowed (the
//     driver validates the options synchronously);
//  2. not attachable, and no clawker.* option (a local-scope install) or
//     no option at all (a global-scope install): allowed;
//  3. the driver is resolved as Docker resolves it (plugin id, name with or
//     without tag, id prefix); not a plugin, or another plugin: allowed;
//     this plugin's id unknown, or the driver not resolvable: counted as
//     this plugin (fail closed);
//  4. a local-scope install: clawker.* options refused (the message names
//     the setting that carries them);
//  5. attachable: refused;
//  6. a global-scope install: the options are validated (refused with the
//     option named, as the driver's AllocateNetwork and CreateNetwork
//     would), then allowed.
func (a *Authz) checkNetworkCreate(c apiCall) authorization.Response {
	var body networkCreateBody
	if err := json.Unmarshal(c.body, &body); err != nil {
		return deny("cannot parse the network create request: %v", err)
	}
	local := body.Scope == "" || body.Scope == "local"
	if local && !a.cfg.GlobalScope {
		return allow()
	}
	var keys []string
	for k := range body.Options {
		if policy.IsClawkerKey(k) {
			keys = append(keys, k)
		}
	}
	if !body.Attachable && (len(keys) == 0 && !a.cfg.GlobalScope || len(body.Options) == 0) {
		return allow()
	}
	sort.Strings(keys)
	if body.Driver == "" {
		return allow() // Docker's default driver (bridge, overlay in swarm)
	}
	if a.cfg.SelfID != "" && a.cfg.Plugin != nil {
		ctx, cancel := dockerCtx()
		id, _, found, err := a.cfg.Plugin(ctx, body.Driver)
		cancel()
		switch {
		case err != nil:
			return deny("cannot resolve the network driver %q through Docker (%v); retry", body.Driver, err)
		case !found || id != a.cfg.SelfID:
			return allow()
		}
	}
	scope := body.Scope
	if local {
		scope = "swarm" // a global-scope driver's network on a manager
	}
	if !a.cfg.GlobalScope && len(keys) > 0 {
		return deny("a %s-scope clawker-fw network (%s) cannot carry network rules (%s) while the plugin reports local scope: Swarm passes a local-scope driver no network options, so the network's containers would run without its rules. Install the plugin on every node with CLAWKER_SCOPE=global (docker plugin set clawker-fw:latest CLAWKER_SCOPE=global while it is disabled) so Swarm carries them, or give the rules to the service (docker service create --container-label clawker.allow=...), or create a local network (without --scope)",
			scope, body.Name, strings.Join(keys, ", "))
	}
	if body.Attachable {
		return deny("a %s-scope clawker-fw network (%s) cannot be --attachable: a standalone container could join it on a node before the firewall there knows the network, past the container checks. Create it without --attachable and run services on it (they are checked), or create a local network on a node without the swarm setting",
			scope, body.Name)
	}
	cfg, err := policy.ParseNetworkOptions(body.Options, body.Name)
	if err != nil {
		return deny("invalid network option: %v. Fix the option and create the network again; nothing was created", err)
	}
	if err := model.CheckLimit(cfg.Rules, model.MaxPortsPerNetwork, "a network"); err != nil {
		return deny("option %v. Narrow the port ranges and create the network again; nothing was created", err)
	}
	return allow()
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
	Networks     []networkAttachment `json:"Networks"` // deprecated spelling, still applied
	EndpointSpec *struct {
		Ports []struct {
			TargetPort  uint32 `json:"TargetPort"`
			PublishMode string `json:"PublishMode"`
		} `json:"Ports"`
	} `json:"EndpointSpec"`
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
//     a second network (`--network host` included, and the ingress network
//     that a port published in ingress mode attaches), dangerous
//     --cap-add, mounts of Docker's or the firewall's paths (binds, volume
//     options, existing named volumes of this node).
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
	if ep := spec.EndpointSpec; ep != nil {
		for _, p := range ep.Ports {
			// Swarm reads the mode upper-cased, and an unknown or empty
			// one is ingress (swarmkit's PortConfig_PublishMode_value).
			if strings.ToUpper(p.PublishMode) != "HOST" {
				return deny("a container on the clawker-fw network %s cannot join other networks (ingress, for the published port %d): that would bypass the firewall; drop the published port (a clawker-fw network publishes none)", fw[0], p.TargetPort)
			}
		}
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
