package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// The test dockerd's own default bridge and address pool (issue 11, class
// 10). A dockerd started with --bridge=none deletes an existing docker0 at
// start (moby's removeDefaultBridgeInterface), and one with default pools
// hands remote-driver networks subnets without looking at the host's routes:
// so the test dockerd gets a bridge of its own, created by the harness
// (dockerd requires a non-default bridge to exist), and a pool of its own.
// Neither range may overlap an address of the host; Start refuses to run
// when one does.
const (
	DockerBridge          = "cfw-e2e-br0"
	DockerBridgeAddr      = "10.222.0.1/24"
	DockerBridgeSubnet    = "10.222.0.0/24"
	DockerAddressPool     = "10.223.0.0/16"
	DockerAddressPoolSize = 24
)

// removeStaleBridge removes DockerBridge and its rules when a dead Env left
// them (Start holds the machine lock: no live Env owns it).
func removeStaleBridge() error {
	if _, err := net.InterfaceByName(DockerBridge); err != nil {
		return nil
	}
	if err := run("ip", "link", "del", DockerBridge); err != nil {
		return err
	}
	return removeBridgeRules()
}

// setupDockerBridge creates DockerBridge (once per Env).
func (e *Env) setupDockerBridge() error {
	if e.bridgeCreated {
		return nil
	}
	if err := removeStaleBridge(); err != nil {
		return err
	}
	if err := checkRangesFree(); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"ip", "link", "add", DockerBridge, "type", "bridge"},
		{"ip", "addr", "add", DockerBridgeAddr, "dev", DockerBridge},
		{"ip", "link", "set", DockerBridge, "up"},
	} {
		if err := run(args[0], args[1:]...); err != nil {
			return fmt.Errorf("create the test dockerd's bridge: %w", err)
		}
		e.bridgeCreated = true
	}
	return nil
}

// checkRangesFree fails when an address of the host lies in the bridge's
// subnet or the address pool.
func checkRangesFree() error {
	out, err := exec.Command("ip", "-j", "addr", "show").Output()
	if err != nil {
		return fmt.Errorf("ip -j addr show: %w", err)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Addrs []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return fmt.Errorf("parse ip -j addr: %w", err)
	}
	var own []*net.IPNet
	for _, c := range []string{DockerBridgeSubnet, DockerAddressPool} {
		_, n, _ := net.ParseCIDR(c)
		own = append(own, n)
	}
	for _, l := range links {
		for _, a := range l.Addrs {
			_, n, err := net.ParseCIDR(fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
			if err != nil || n.IP.To4() == nil {
				continue
			}
			for _, o := range own {
				if o.Contains(n.IP) || n.Contains(o.IP) {
					return fmt.Errorf("the test dockerd's range %s clashes with %s/%d on %s: free it or change harness.DockerBridgeSubnet/DockerAddressPool", o, a.Local, a.Prefixlen, l.Name)
				}
			}
		}
	}
	return nil
}

// removeDockerBridge deletes DockerBridge and the iptables rules dockerd
// made for it (with --live-restore dockerd leaves them at exit). Only rules
// that name the bridge or its subnet go: they are the test dockerd's.
func (e *Env) removeDockerBridge() error {
	if !e.bridgeCreated {
		return nil
	}
	var errs []error
	if _, err := net.InterfaceByName(DockerBridge); err == nil {
		errs = append(errs, run("ip", "link", "del", DockerBridge))
	}
	errs = append(errs, removeBridgeRules())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.bridgeCreated = false
	return nil
}

// removeBridgeRules deletes every iptables/ip6tables rule, in the tables
// dockerd writes, that names DockerBridge or DockerBridgeSubnet.
func removeBridgeRules() error {
	return deleteRules([]string{"iptables", "ip6tables"}, []string{"filter", "nat", "raw", "mangle"}, namesOwnBridge)
}

// deleteRules deletes every rule (an `-S` line starting "-A ") of the
// given tables for which match is true, with each of bins (iptables,
// ip6tables). A table a binary does not have is skipped; every failed
// delete is returned, the others still run.
func deleteRules(bins, tables []string, match func(rule string) bool) error {
	var errs []error
	for _, bin := range bins {
		for _, table := range tables {
			out, err := exec.Command(bin, "-w", "-t", table, "-S").Output()
			if err != nil {
				continue // table not available
			}
			for _, line := range strings.Split(string(out), "\n") {
				if !strings.HasPrefix(line, "-A ") || !match(line) {
					continue
				}
				// -S prints the rule as it was added; -D takes the same words.
				args, err := splitRule(line)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				args[0] = "-D"
				errs = append(errs, run(bin, append([]string{"-w", "-t", table}, args...)...))
			}
		}
	}
	return errors.Join(errs...)
}

func namesOwnBridge(rule string) bool {
	for _, f := range strings.Fields(rule) {
		if f == DockerBridge || f == DockerBridgeSubnet || f == strings.TrimSuffix(DockerBridgeAddr, "/24")+"/32" {
			return true
		}
	}
	return false
}

// splitRule splits an iptables -S line into arguments (double-quoted words,
// as iptables prints comments, with \" escapes).
func splitRule(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unbalanced quotes in iptables rule %q", line)
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}

// restoreDockerChains puts Docker's iptables chains back as they were in
// before (after the test dockerd stopped). Every dockerd with iptables on
// removes and recreates Docker's chains in its namespace at start (moby's
// removeIPChains: DOCKER, DOCKER-ISOLATION-STAGE-*, and in the current
// engine DOCKER-FORWARD/-BRIDGE/-CT/-INTERNAL) and the current engine also
// deletes 20.10's FORWARD jump to DOCKER-ISOLATION-STAGE-1: a host dockerd's
// rules are gone while the test dockerd runs and must come back after it.
//  1. jumps from the built-in chains to DOCKER* chains that did not exist
//     before are deleted, and those chains flushed;
//  2. each DOCKER* chain that existed before gets its rules back (created if
//     gone; flushed and refilled if different);
//  3. the chains of step 1 are deleted;
//  4. rules of the built-in chains that are gone are inserted back at their
//     position.
func restoreDockerChains(before *HostDocker) error { return restoreDockerChainsIn(nil, before) }

// restoreDockerChainsIn is restoreDockerChains through commands prefixed
// with prefix (ip netns exec NAME, in tests).
func restoreDockerChainsIn(prefix []string, before *HostDocker) error {
	now, err := snapshotHostDocker(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, fam := range []struct{ name, bin string }{{"ip4", "iptables"}, {"ip6", "ip6tables"}} {
		for _, table := range []string{"filter", "nat"} {
			keyPrefix := fam.name + " " + table + " "
			ipt := func(args ...string) {
				cmd := append(slices.Clone(prefix), fam.bin, "-w", "-t", table)
				if err := run(cmd[0], append(cmd[1:], args...)...); err != nil {
					errs = append(errs, err)
				}
			}
			var created []string
			for _, key := range sortedKeys(now.Chains) {
				if _, ok := before.Chains[key]; !ok && strings.HasPrefix(key, keyPrefix+"DOCKER") {
					created = append(created, strings.TrimPrefix(key, keyPrefix))
				}
			}
			for _, b := range builtinChains[table] {
				for _, r := range now.Chains[keyPrefix+b] {
					if slices.Contains(created, jumpTarget(r)) {
						if args, err := splitRule(r); err == nil {
							args[0] = "-D"
							ipt(args...)
						}
					}
				}
			}
			for _, c := range created {
				ipt("-F", c)
			}
			for _, key := range sortedKeys(before.Chains) {
				chain, ok := strings.CutPrefix(key, keyPrefix)
				if !ok || !strings.HasPrefix(chain, "DOCKER") {
					continue
				}
				cur, exists := now.Chains[key]
				if exists && slices.Equal(cur, before.Chains[key]) {
					continue
				}
				if exists {
					ipt("-F", chain)
				} else {
					ipt("-N", chain)
				}
			}
			for _, key := range sortedKeys(before.Chains) {
				chain, ok := strings.CutPrefix(key, keyPrefix)
				if !ok || !strings.HasPrefix(chain, "DOCKER") {
					continue
				}
				if cur, exists := now.Chains[key]; exists && slices.Equal(cur, before.Chains[key]) {
					continue
				}
				for _, r := range before.Chains[key] {
					if args, err := splitRule(r); err == nil {
						ipt(args...)
					}
				}
			}
			for _, c := range created {
				ipt("-X", c)
			}
			for _, b := range builtinChains[table] {
				cur := slices.Clone(now.Chains[keyPrefix+b])
				cur = slices.DeleteFunc(cur, func(r string) bool { return slices.Contains(created, jumpTarget(r)) })
				for i, r := range before.Chains[keyPrefix+b] {
					if slices.Contains(cur, r) {
						continue
					}
					args, err := splitRule(r)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					pos := min(i+1, len(cur)+1)
					ipt(append([]string{"-I", b, strconv.Itoa(pos)}, args[2:]...)...)
					cur = slices.Insert(cur, pos-1, r)
				}
			}
		}
	}
	return errors.Join(errs...)
}
