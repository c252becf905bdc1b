package plugin

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// NetworkRequest is the part of Docker's CreateNetwork the core needs.
type NetworkRequest struct {
	ID string
	// Options are the `-o` options (Options["com.docker.network.generic"]).
	Options map[string]string
	// Pool and Gateway come from IPv4Data[0] ("10.0.0.0/24", "10.0.0.1/24").
	Pool    string
	Gateway string
}

// CreateNetwork validates the options (an invalid one fails the create with
// the option named and nothing created), persists the network, then brings up
// its bridge and closed-network guard.
func (p *Plugin) CreateNetwork(req NetworkRequest) error {
	cfg, err := policy.ParseNetworkOptions(req.Options, req.ID)
	if err != nil {
		return rejected(ReasonInvalidRule, "%w", err)
	}
	if err := model.CheckLimit(cfg.Rules, model.MaxPortsPerNetwork, "a network"); err != nil {
		return rejected(ReasonPortLimit, "option %w", err)
	}
	pool, err := parsePrefixAddr(req.Pool)
	if err != nil {
		return rejected(ReasonInvalidRequest, "network subnet: %w", err)
	}
	gw, err := parsePrefixAddr(req.Gateway)
	if err != nil {
		return rejected(ReasonInvalidRequest, "network gateway: %w", err)
	}
	if !pool.Contains(gw.Addr()) {
		return rejected(ReasonInvalidRequest, "network gateway %s is outside the subnet %s", gw.Addr(), pool)
	}
	// The network's options are its own (immutable, see Network): the
	// caller's map stays the caller's.
	n := &Network{
		ID: req.ID, Options: maps.Clone(req.Options), Config: cfg, Bridge: bridgeName(req.ID),
		Subnet: pool.Masked(), Gateway: gw.Addr(), Created: p.cfg.Now().UTC(),
	}
	if p.Scope() == ScopeGlobal {
		n.Scope = ScopeGlobal
	}
	return p.q.Do(p.ctx, queue.KindMutate, func() error {
		if _, ok := p.st.Networks[req.ID]; ok {
			return rejected(ReasonInvalidRequest, "network %s exists already", short(req.ID))
		}
		if err := p.checkPorts(cfg.Rules); err != nil {
			return err
		}
		next := p.st.clone()
		next.Networks[n.ID] = n
		if err := p.commit(next); err != nil {
			return err
		}
		if err := p.hn.AddNetwork(n); err != nil {
			// Undo: a create that fails must leave nothing behind.
			_ = p.hn.RemoveNetwork(n)
			undo := p.st.clone()
			delete(undo.Networks, n.ID)
			_ = p.commit(undo)
			return fmt.Errorf("create network %s: %w", short(n.ID), err)
		}
		p.log.WithField(FieldNetwork, short(n.ID)).WithField("bridge", n.Bridge).
			WithField("rules", len(cfg.Rules)).Info("network created")
		return p.publish()
	})
}

// DeleteNetwork removes a network and everything it owns.
func (p *Plugin) DeleteNetwork(id string) error {
	return p.q.Do(p.ctx, queue.KindTeardown, func() error {
		n, ok := p.st.Networks[id]
		if !ok {
			return nil // idempotent: Docker may retry
		}
		eps := p.st.endpointsOf(id)
		next := p.st.clone()
		delete(next.Networks, id)
		for _, ep := range eps {
			delete(next.Endpoints, ep.ID)
		}
		if err := p.commit(next); err != nil {
			return err
		}
		var errs []error
		for _, ep := range eps {
			errs = append(errs, p.dropEndpoint(n, ep)...)
		}
		if err := p.hn.RemoveNetwork(n); err != nil {
			errs = append(errs, err)
		}
		if err := p.publish(); err != nil {
			errs = append(errs, err)
		}
		p.log.WithField(FieldNetwork, short(id)).Info("network deleted")
		return joinPartial(errs)
	})
}

// EndpointRequest is the part of Docker's CreateEndpoint the core needs.
type EndpointRequest struct {
	NetworkID  string
	EndpointID string
	Address    string // "10.0.0.2/24"
	MacAddress string // may be empty: the driver picks one
}

// CreateEndpoint allocates the endpoint's stable index, creates its veth pair
// and installs its anti-spoofing guard before Join can return. It returns the
// MAC address the driver chose ("" when Docker gave one).
func (p *Plugin) CreateEndpoint(req EndpointRequest) (string, error) {
	addr, err := parsePrefixAddr(req.Address)
	if err != nil {
		return "", rejected(ReasonInvalidRequest, "endpoint address: %w", err)
	}
	mac := req.MacAddress
	chosen := ""
	if mac == "" {
		mac = macFor(addr.Addr())
		chosen = mac
	} else if _, err := net.ParseMAC(mac); err != nil {
		return "", rejected(ReasonInvalidRequest, "endpoint MAC %q: %w", mac, err)
	}
	err = p.q.Do(p.ctx, queue.KindMutate, func() error {
		n, ok := p.st.Networks[req.NetworkID]
		if !ok {
			return rejected(ReasonNetworkNotFound, "network %s is not a clawker-fw network known to the plugin", short(req.NetworkID))
		}
		if !n.Subnet.Contains(addr.Addr()) {
			return rejected(ReasonInvalidRequest, "endpoint address %s is outside the network subnet %s", addr.Addr(), n.Subnet)
		}
		next := p.st.clone()
		ep := &Endpoint{
			ID: req.EndpointID, NetworkID: req.NetworkID, Index: next.NextIndex, IP: addr.Addr(), MAC: mac,
			HostVeth: vethName("cfwh", req.EndpointID), PeerVeth: vethName("cfwc", req.EndpointID),
		}
		next.NextIndex++
		next.Endpoints[ep.ID] = ep
		if err := p.commit(next); err != nil {
			return err
		}
		if err := p.hn.AddEndpoint(n, ep); err != nil {
			_ = p.hn.RemoveEndpoint(n, ep)
			undo := p.st.clone()
			delete(undo.Endpoints, ep.ID)
			_ = p.commit(undo)
			return fmt.Errorf("create endpoint %s: %w", short(ep.ID), err)
		}
		p.log.WithField(FieldEndpoint, short(ep.ID)).WithField(FieldIndex, ep.Index).WithField("ip", ep.IP).Info("endpoint created")
		return p.publish()
	})
	return chosen, err
}

// DeleteEndpoint removes an endpoint: guard, veth, enrollment, BPF entries.
func (p *Plugin) DeleteEndpoint(networkID, endpointID string) error {
	return p.q.Do(p.ctx, queue.KindTeardown, func() error {
		ep, ok := p.st.Endpoints[endpointID]
		if !ok {
			return nil
		}
		n := p.st.Networks[ep.NetworkID]
		next := p.st.clone()
		delete(next.Endpoints, endpointID)
		if err := p.commit(next); err != nil {
			return err
		}
		errs := p.dropEndpoint(n, ep)
		if err := p.publish(); err != nil {
			errs = append(errs, err)
		}
		p.log.WithField(FieldEndpoint, short(endpointID)).WithField(FieldIndex, ep.Index).Info("endpoint deleted")
		return joinPartial(errs)
	})
}

func (p *Plugin) dropEndpoint(n *Network, ep *Endpoint) []error {
	var errs []error
	if ep.NetnsCookie != 0 {
		if err := p.k.Unenroll(ep.NetnsCookie); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.k.ForgetEndpoint(ep.Index); err != nil {
		errs = append(errs, err)
	}
	if n != nil {
		if err := p.hn.RemoveEndpoint(n, ep); err != nil {
			errs = append(errs, err)
		}
	}
	p.stopBypassTimer(ep.ID)
	p.stopLearning(ep)
	return errs
}

// JoinInfo is what Join answers.
type JoinInfo struct {
	SrcName string
	Gateway netip.Addr
}

// SandboxNetnsDir is where the plugin sees Docker's netns directory (the
// destination of config.json's netns mount).
const SandboxNetnsDir = "/var/run/docker/netns"

// Join records the join and starts identifying the container in the
// background: it never inspects the starting container (that call would
// block until the plugin times out) and returns at once.
//
// Docker >= 28 calls Join once the container's network namespace exists at
// SandboxKey (Docker 20.10 creates it later, in a prestart hook): Join then
// enrolls that namespace before answering, so the hooks hold from the
// container's first instruction (else a process could reach the embedded
// resolver's real ports before the enrollment, and that engine forwards
// from the host's namespace). Where the namespace is not there yet the
// enrollment follows the veth into it (identify).
func (p *Plugin) Join(networkID, endpointID, sandboxKey string) (JoinInfo, error) {
	var info JoinInfo
	var hostVeth string
	err := p.q.Do(p.ctx, queue.KindMutate, func() error {
		ep, ok := p.st.Endpoints[endpointID]
		if !ok {
			return rejected(ReasonInvalidRequest, "join: unknown endpoint %s", short(endpointID))
		}
		n := p.st.Networks[ep.NetworkID]
		next := p.st.clone()
		nep := next.Endpoints[endpointID]
		nep.Joined, nep.SandboxKey = true, sandboxKey
		nep.ContainerID, nep.ContainerName, nep.Aliases, nep.Labels, nep.LabelRules, nep.LabelError = "", "", nil, nil, nil, ""
		nep.IgnoredLabels = nil
		if sandboxKey != "" {
			if cookie, err := p.hn.NetnsCookie(filepath.Join(SandboxNetnsDir, filepath.Base(sandboxKey))); err == nil {
				nep.NetnsCookie = cookie
			}
		}
		if err := p.commit(next); err != nil {
			return err
		}
		if cookie := p.st.Endpoints[endpointID].NetnsCookie; cookie != 0 {
			log := p.log.WithField(FieldEndpoint, short(endpointID)).WithField("cookie", cookie)
			if err := p.k.Enroll(cookie, p.enrollment(n, p.st.Endpoints[endpointID])); err != nil {
				log.WithError(err).Warn("enroll at join failed: enrolling when the veth moves")
			} else {
				log.Info("endpoint enrolled at join")
			}
		}
		info = JoinInfo{SrcName: ep.PeerVeth, Gateway: n.Gateway}
		hostVeth = ep.HostVeth
		return p.publish()
	})
	if err != nil {
		if layer, _ := ReasonOf(err); layer == LayerPartial {
			p.log.WithError(err).Warn("join: publish failed partly")
		} else {
			return JoinInfo{}, err
		}
	}
	p.identifyAsync(endpointID, hostVeth, false)
	return info, nil
}

// Leave drops the endpoint's enrollment.
func (p *Plugin) Leave(networkID, endpointID string) error {
	return p.q.Do(p.ctx, queue.KindMutate, func() error {
		ep, ok := p.st.Endpoints[endpointID]
		if !ok {
			return nil
		}
		next := p.st.clone()
		nep := next.Endpoints[endpointID]
		cookie := nep.NetnsCookie
		nep.Joined, nep.NetnsCookie, nep.SandboxKey = false, 0, ""
		if err := p.commit(next); err != nil {
			return err
		}
		var errs []error
		if cookie != 0 {
			if err := p.k.Unenroll(cookie); err != nil {
				errs = append(errs, err)
			}
		}
		if err := p.k.ForgetEndpoint(ep.Index); err != nil {
			errs = append(errs, err)
		}
		if err := p.publish(); err != nil {
			errs = append(errs, err)
		}
		return joinPartial(errs)
	})
}

func joinPartial(errs []error) error {
	var out []error
	for _, e := range errs {
		if e == nil {
			continue
		}
		if _, reason := ReasonOf(e); reason != "" {
			out = append(out, e)
		} else {
			out = append(out, partial(ReasonConfigRegenFailed, e))
		}
	}
	if len(out) == 0 {
		return nil
	}
	if len(out) == 1 {
		return out[0]
	}
	return partial(ReasonConfigRegenFailed, fmt.Errorf("%d errors: %v", len(out), out))
}

// bridgeName is the bridge of network id (15 characters at most).
func bridgeName(id string) string { return "cfw-" + shortN(id, 11) }

func vethName(prefix, id string) string { return prefix + shortN(id, 11) }

func shortN(id string, n int) string {
	if len(id) > n {
		return id[:n]
	}
	return id
}

// macFor derives a locally administered MAC from the endpoint IP, as Docker
// does, so it is stable and unique within the subnet.
func macFor(ip netip.Addr) string {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}.String()
}
