package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Identifying an endpoint's container.
//
// Join carries no container id and no labels, and on Docker 20.10 the
// container's netns does not exist yet when Join runs. So after Join the
// plugin watches the endpoint's host-side veth: when Docker moves its peer
// into the container's netns, the veth's link-netnsid appears; a process in
// that netns (found through the host's /proc: the plugin runs with pidhost)
// gives the netns cookie to enroll and, through its cgroup, the container
// id; the container's labels then come from the container *list* (never
// inspect: it blocks on the starting container).
//
// Until the labels are known the endpoint is pending: it is enrolled at once
// with its non-DNS flows left to the closed network's redirect, and DNS and
// the proxy wait (bounded) for its policy, so the first connection works.

var containerIDRe = regexp.MustCompile(`[0-9a-f]{64}`)

// errVethGone says the endpoint's host-side veth no longer exists: its
// container (and netns) went away.
var errVethGone = errors.New("veth is gone (container stopped)")

// procRoot is where the host's /proc is (tests point it elsewhere).
var procRoot = "/proc"

func (p *Plugin) identifyAsync(endpointID, hostVeth string, restore bool) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		log := p.log.WithField(FieldEndpoint, short(endpointID))
		if err := p.identify(endpointID, restore); err != nil {
			log.WithError(err).Warn("endpoint not identified: it has no egress")
		}
	}()
}

func (p *Plugin) identify(endpointID string, restore bool) error {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.IdentifyTimeout)
	defer cancel()
	ep, ok := p.endpointCopy(endpointID)
	if !ok {
		return nil
	}
	start := time.Now()
	pid, err := p.waitNetns(ctx, ep)
	if errors.Is(err, errVethGone) && restore {
		// The container went away while the plugin was down: Docker's
		// Leave could not reach us, so drop the stale enrollment now.
		p.log.WithField(FieldEndpoint, short(endpointID)).WithField(FieldContainer, ep.ContainerName).
			Info("container gone while the plugin was down: cleaning its enrollment")
		return p.Leave(ep.NetworkID, endpointID)
	}
	if err != nil {
		return err
	}
	nsPath := fmt.Sprintf("%s/%d/ns/net", procRoot, pid)
	cookie, err := p.hn.NetnsCookie(nsPath)
	if err != nil {
		return fmt.Errorf("read netns cookie of %s: %w", nsPath, err)
	}
	containerID, _ := containerOfPid(pid)

	// Enroll at once so the hooks steer DNS (127.0.0.11 included) from the
	// first instruction; pending flows pass to the closed network's redirect.
	err = p.q.Do(p.ctx, queue.KindMutate, func() error {
		cur, ok := p.st.Endpoints[endpointID]
		if !ok || !cur.Joined {
			return nil
		}
		next := p.st.clone()
		next.Endpoints[endpointID].NetnsCookie = cookie
		if err := p.commit(next); err != nil {
			return err
		}
		n := p.st.Networks[cur.NetworkID]
		return p.k.Enroll(cookie, p.enrollment(n, p.st.Endpoints[endpointID]))
	})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	p.log.WithField(FieldEndpoint, short(endpointID)).WithField("cookie", cookie).
		WithField("after", time.Since(start).Round(time.Millisecond).String()).Info("endpoint enrolled")
	if restore && ep.Identified() {
		return nil
	}
	if containerID == "" {
		return p.markLabelError(endpointID, "", fmt.Errorf("no Docker container id in %s/%d/cgroup", procRoot, pid))
	}
	var c Container
	for {
		var found bool
		c, found, err = p.dk.Container(ctx, containerID)
		if err == nil && found {
			break
		}
		select {
		case <-ctx.Done():
			return p.markLabelError(endpointID, containerID, fmt.Errorf("container %s not listed by Docker: %v", short(containerID), err))
		case <-time.After(50 * time.Millisecond):
		}
	}
	for name, id := range c.Networks {
		p.learnNetworkName(id, name)
	}
	given, ignored, gerr := p.givenLabels(ctx, c)
	if err := p.setContainer(endpointID, c, given, ignored, gerr); err != nil {
		return err
	}
	p.refreshAliases(endpointID, c)
	return nil
}

// refreshAliases re-reads the container a little later: Docker fills a
// container's network aliases (--network-alias) only once it has started,
// after the listing identification used, and DNS answers them.
func (p *Plugin) refreshAliases(endpointID string, c Container) {
	have := strings.Join(c.Aliases, ",")
	for _, wait := range []time.Duration{500 * time.Millisecond, 2 * time.Second, 5 * time.Second} {
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		now, found, err := p.dk.Container(ctx, c.ID)
		cancel()
		if err != nil || !found {
			return
		}
		if got := strings.Join(now.Aliases, ","); got != have {
			have = got
			_ = p.q.Do(p.ctx, queue.KindMutate, func() error {
				cur, ok := p.st.Endpoints[endpointID]
				if !ok || cur.ContainerID != c.ID {
					return nil
				}
				next := p.st.clone()
				next.Endpoints[endpointID].Aliases = now.Aliases
				if err := p.commit(next); err != nil {
					return err
				}
				return p.publish()
			})
		}
	}
}

func (p *Plugin) endpointCopy(id string) (Endpoint, bool) {
	var ep Endpoint
	var ok bool
	_ = p.q.Do(p.ctx, queue.KindRead, func() error {
		if e, found := p.st.Endpoints[id]; found {
			ep, ok = *e, true
		}
		return nil
	})
	return ep, ok
}

// waitNetns polls until the endpoint's veth peer is in a container netns:
// every 2 ms for the first 2 s (the window before the container's first
// instruction is short), then every 25 ms.
func (p *Plugin) waitNetns(ctx context.Context, ep Endpoint) (int, error) {
	start := time.Now()
	for {
		pid, ok, gone, err := p.hn.NetnsPid(&ep)
		if err == nil && ok {
			return pid, nil
		}
		if gone {
			return 0, fmt.Errorf("veth %s: %w", ep.HostVeth, errVethGone)
		}
		wait := 2 * time.Millisecond
		if time.Since(start) > 2*time.Second {
			wait = 25 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return 0, fmt.Errorf("find container netns of %s: %w", ep.HostVeth, err)
			}
			return 0, fmt.Errorf("find container netns of %s: %w", ep.HostVeth, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// containerOfPid reads a process's Docker container id from its cgroup.
func containerOfPid(pid int) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("%s/%d/cgroup", procRoot, pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.Contains(line, "docker") {
			continue
		}
		if id := containerIDRe.FindString(line); id != "" {
			return id, nil
		}
	}
	return "", fmt.Errorf("no container id in cgroup of pid %d", pid)
}

// setContainer records the container's identity and label rules (from the
// labels given for it: see given.go), publishes the endpoint's real policy,
// then switches its enrollment from pass-through to enforced (routes first,
// so no allowed connect fails in between). gerr says the given labels could
// not be told apart: the container then has no egress.
func (p *Plugin) setContainer(endpointID string, c Container, given map[string]string, ignored []IgnoredLabel, gerr error) error {
	rules, perr := policy.ParseLabels(given, c.ID)
	if gerr != nil {
		rules, perr = nil, gerr
	}
	return p.q.Do(p.ctx, queue.KindMutate, func() error {
		cur, ok := p.st.Endpoints[endpointID]
		if !ok || !cur.Joined {
			return nil
		}
		next := p.st.clone()
		ep := next.Endpoints[endpointID]
		ep.ContainerID, ep.ContainerName, ep.Aliases = c.ID, c.Name, c.Aliases
		ep.Labels, ep.IgnoredLabels = given, ignored
		ep.LabelRules, ep.LabelError = rules, ""
		log := p.log.WithField(FieldEndpoint, short(endpointID)).WithField(FieldContainer, c.Name)
		for _, l := range ignored {
			log.WithField("label", l.Key+"="+l.Value).WithField("why", l.Why).Warn("clawker label ignored: only labels given for the container carry rules")
		}
		if perr != nil {
			ep.LabelRules, ep.LabelError = nil, perr.Error()
			log.WithField(FieldError, perr.Error()).Error("invalid clawker label: the container has no egress at all until it is recreated with valid labels")
		}
		if err := p.commit(next); err != nil {
			return err
		}
		if p.cfg.Firewalled != nil {
			p.cfg.Firewalled(c.ID, ep.NetworkID)
		}
		pubErr := p.publish()
		var enrollErr error
		if ep.NetnsCookie != 0 {
			enrollErr = p.k.Enroll(ep.NetnsCookie, p.enrollment(p.st.Networks[ep.NetworkID], ep))
		}
		log.WithField("label_rules", len(ep.LabelRules)).Info("container identified")
		return joinPartial([]error{pubErr, enrollErr})
	})
}

func (p *Plugin) markLabelError(endpointID, containerID string, cause error) error {
	_ = p.q.Do(p.ctx, queue.KindMutate, func() error {
		cur, ok := p.st.Endpoints[endpointID]
		if !ok {
			return nil
		}
		next := p.st.clone()
		ep := next.Endpoints[endpointID]
		ep.ContainerID = containerID
		if ep.ContainerID == "" {
			ep.ContainerID = "unknown-" + cur.ID
		}
		ep.LabelError = "container not identified: " + cause.Error()
		if err := p.commit(next); err != nil {
			return err
		}
		return p.publish()
	})
	return cause
}
