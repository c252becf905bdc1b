package harness

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"
)

// Swarm on the test dockerd.
//
// `docker swarm init` makes dockerd create what the host's Docker would
// share: the ingress network's sandbox joined to a bridge network
// docker_gwbridge (a link of that name on the host), and the iptables chain
// DOCKER-INGRESS (filter and nat) with jumps from FORWARD, PREROUTING and
// OUTPUT. `docker swarm leave --force` leaves the bridge and the chain
// behind. So SwarmInit refuses to start when either exists already (another
// Docker's swarm: not ours to touch), and SwarmLeave removes both.

const (
	// SwarmAddressPool is the address pool Swarm allocates networks from
	// (the ingress network; a swarm network without --subnet).
	SwarmAddressPool = "10.226.0.0/16"
	// SwarmPort is the manager's port (not the default 2377, which a
	// developer's own swarm may use).
	SwarmPort = "2477"
	// SwarmIngressChain is the iptables chain Swarm's ingress creates.
	SwarmIngressChain = "DOCKER-INGRESS"
	// SwarmGatewayBridge is the bridge network (and link) of ingress.
	SwarmGatewayBridge = "docker_gwbridge"
)

// SwarmInit makes the Env's dockerd a single-node swarm manager that listens
// and advertises on addr ("" = 127.0.0.1: no packet leaves the machine).
// The Env must run without --live-restore (Options.NoLiveRestore).
func (e *Env) SwarmInit(addr string) error {
	if !e.opts.NoLiveRestore {
		return errors.New("swarm init: dockerd runs with --live-restore, which Swarm refuses (start the Env with NoLiveRestore)")
	}
	if addr == "" {
		addr = "127.0.0.1"
	}
	if _, err := net.InterfaceByName(SwarmGatewayBridge); err == nil {
		return fmt.Errorf("swarm init: link %s exists already (another Docker's swarm?): not ours to touch", SwarmGatewayBridge)
	}
	for _, table := range []string{"filter", "nat"} {
		if exec.Command("iptables", "-w", "-t", table, "-S", SwarmIngressChain).Run() == nil {
			return fmt.Errorf("swarm init: iptables chain %s (%s) exists already (another Docker's swarm?): not ours to touch", SwarmIngressChain, table)
		}
	}
	e.mu.Lock()
	e.swarm = true
	e.mu.Unlock()
	ep := net.JoinHostPort(addr, SwarmPort)
	_, _, err := e.Docker("swarm", "init", "--listen-addr", ep, "--advertise-addr", ep,
		"--default-addr-pool", SwarmAddressPool, "--default-addr-pool-mask-length", "24")
	return err
}

// SwarmLeave leaves the swarm (--force) and removes what Swarm leaves on the
// host: the docker_gwbridge network and the DOCKER-INGRESS chains. Close
// calls it when a test did not.
func (e *Env) SwarmLeave() error {
	e.mu.Lock()
	joined := e.swarm
	e.swarm = false
	e.mu.Unlock()
	if !joined {
		return nil
	}
	var errs []error
	// Swarm networks first, while this node still manages them: a node that
	// left keeps a swarm network whose tasks were still detaching (measured
	// on the current engine), and then cannot remove it ("not a swarm
	// manager"), nor its driver's bridge.
	if out, _, err := e.Docker("service", "ls", "-q"); err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = e.Docker(append([]string{"service", "rm"}, strings.Fields(out)...)...)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, _, err := e.Docker("ps", "-q", "--filter", "label=com.docker.swarm.task.id")
		if err != nil || strings.TrimSpace(out) == "" {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		out, _, err := e.Docker("network", "ls", "--filter", "scope=swarm", "--format", "{{.ID}} {{.Name}}")
		var left []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] != "ingress" {
				left = append(left, f[0])
			}
		}
		if err != nil || len(left) == 0 {
			break
		}
		_, _, _ = e.Docker(append([]string{"network", "rm"}, left...)...)
		time.Sleep(500 * time.Millisecond)
	}
	if _, stderr, err := e.Docker("swarm", "leave", "--force"); err != nil && !strings.Contains(stderr, "not part of a swarm") {
		errs = append(errs, err)
	}
	if out, _, _ := e.Docker("network", "ls", "-q", "--filter", "name=^"+SwarmGatewayBridge+"$"); strings.TrimSpace(out) != "" {
		if _, _, err := e.Docker("network", "rm", SwarmGatewayBridge); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := net.InterfaceByName(SwarmGatewayBridge); err == nil {
		errs = append(errs, run("ip", "link", "del", SwarmGatewayBridge))
	}
	errs = append(errs, removeIngressChains())
	return errors.Join(errs...)
}

// removeIngressChains deletes every jump to DOCKER-INGRESS, then the chain,
// in the filter and nat tables.
func removeIngressChains() error {
	errs := []error{deleteRules([]string{"iptables"}, []string{"filter", "nat"}, func(rule string) bool {
		return strings.Contains(rule, "-j "+SwarmIngressChain) && !strings.HasPrefix(rule, "-A "+SwarmIngressChain+" ")
	})}
	for _, table := range []string{"filter", "nat"} {
		if exec.Command("iptables", "-w", "-t", table, "-S", SwarmIngressChain).Run() == nil {
			errs = append(errs, run("iptables", "-w", "-t", table, "-F", SwarmIngressChain))
			errs = append(errs, run("iptables", "-w", "-t", table, "-X", SwarmIngressChain))
		}
	}
	return errors.Join(errs...)
}
