package wire

import (
	"context"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"

	"github.com/clawker-fw/clawker-fw/plugin"
)

// Names resolves references through Docker for the admin API
// (plugin.Names).
type Names struct{ D *Docker }

// Network implements plugin.Names with Docker's network inspect, which
// resolves the reference by the daemon's own rules (a full id, then an
// exact name, then a unique id prefix; ambiguity is an error) and takes no
// container lock.
func (n Names) Network(ctx context.Context, ref string) (id, name string, found bool, err error) {
	res, err := n.D.C.NetworkInspect(ctx, ref, network.InspectOptions{})
	switch {
	case errdefs.IsNotFound(err):
		return "", "", false, nil
	case errdefs.IsInvalidParameter(err):
		return "", "", false, err // an answer: ambiguous
	case err != nil:
		return "", "", false, plugin.Unavailable(err)
	}
	return res.ID, res.Name, true, nil
}

// Container implements plugin.Names with ResolveContainer (the container
// list, never inspect).
func (n Names) Container(ctx context.Context, ref string) (string, bool, error) {
	c, found, err := n.D.ResolveContainer(ctx, ref)
	if err != nil {
		return "", false, plugin.Unavailable(err)
	}
	return c.ID, found, nil
}

// NetworkNames implements plugin.Names.
func (n Names) NetworkNames(ctx context.Context) (map[string]string, error) {
	list, err := n.D.C.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(list))
	for _, nw := range list {
		out[nw.ID] = nw.Name
	}
	return out, nil
}

// NetworkScope implements plugin.NetworkScoper with Docker's network
// inspect: "local", "swarm" or "global".
func (n Names) NetworkScope(ctx context.Context, id string) (string, error) {
	nw, err := n.D.C.NetworkInspect(ctx, id, network.InspectOptions{})
	if err != nil {
		return "", err
	}
	return nw.Scope, nil
}
