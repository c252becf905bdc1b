package harness

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
)

// HostDocker is what of the host's Docker the suite must leave as it found
// it (issue 11, class 10): the host's links (docker0 among them) with their
// indexes and addresses, the rules of every iptables chain named DOCKER* and
// of the built-in FORWARD chain, the FORWARD policies, the forwarding
// sysctls, the plugin socket directories in /run/docker/plugins (every
// dockerd puts its plugins' sockets there, whatever its exec-root) and the
// files in /etc/docker.
type HostDocker struct {
	Links    map[string]LinkState // by name
	Chains   map[string][]string  // "ip4 filter DOCKER" -> its rules (iptables -S)
	Policies map[string]string    // "ip4 FORWARD" -> ACCEPT/DROP
	Sysctls  map[string]string    // path -> value
	Plugins  []string             // entries of /run/docker/plugins
	Etc      []string             // entries of /etc/docker (20.10 creates key.json there)
}

// LinkState is one link of a HostDocker snapshot.
type LinkState struct {
	Index int
	Kind  string
	Addrs []string
}

// hostSysctls are the host-wide settings a dockerd changes.
var hostSysctls = []string{
	"/proc/sys/net/ipv4/ip_forward",
	"/proc/sys/net/ipv6/conf/all/forwarding",
	"/proc/sys/net/ipv6/conf/default/forwarding",
}

// builtinChains are the built-in chains, per table, where dockerd puts its
// jumps and rules.
var builtinChains = map[string][]string{"filter": {"FORWARD"}, "nat": {"PREROUTING", "OUTPUT", "POSTROUTING"}}

// isBuiltinKey reports whether a Chains key ("ip4 nat POSTROUTING") names a
// built-in chain.
func isBuiltinKey(key string) bool {
	f := strings.Fields(key)
	return len(f) == 3 && slices.Contains(builtinChains[f[1]], f[2])
}

// PluginSocketRoot is where every dockerd (20.10 and current moby alike,
// whatever its --exec-root) puts the socket directories of its managed
// plugins: shared with the host's Docker.
const PluginSocketRoot = "/run/docker/plugins"

// SnapshotHostDocker reads the host's (this network namespace's) state.
func SnapshotHostDocker() (*HostDocker, error) { return snapshotHostDocker(nil) }

// snapshotHostDocker reads it through commands prefixed with prefix (e.g.
// ip netns exec NAME, for tests of the snapshot itself).
func snapshotHostDocker(prefix []string) (*HostDocker, error) {
	cmd := func(args ...string) ([]byte, error) {
		all := append(slices.Clone(prefix), args...)
		c := exec.Command(all[0], all[1:]...)
		out, err := c.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = strings.TrimSpace(string(ee.Stderr))
			}
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(all, " "), err, stderr)
		}
		return out, nil
	}
	s := &HostDocker{Links: map[string]LinkState{}, Chains: map[string][]string{}, Policies: map[string]string{}, Sysctls: map[string]string{}}
	out, err := cmd("ip", "-j", "-d", "addr", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Index    int    `json:"ifindex"`
		Name     string `json:"ifname"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
		Addrs []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parse ip -j addr: %w", err)
	}
	for _, l := range links {
		hl := LinkState{Index: l.Index, Kind: l.LinkInfo.Kind}
		for _, a := range l.Addrs {
			hl.Addrs = append(hl.Addrs, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
		}
		sort.Strings(hl.Addrs)
		s.Links[l.Name] = hl
	}
	for _, fam := range []struct{ name, bin string }{{"ip4", "iptables"}, {"ip6", "ip6tables"}} {
		for _, table := range []string{"filter", "nat"} {
			out, err := cmd(fam.bin, "-w", "-t", table, "-S")
			if err != nil {
				if table == "nat" && fam.name == "ip6" {
					continue // no ip6 nat support is not a change
				}
				return nil, err
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 {
					continue
				}
				switch {
				case f[0] == "-P" && f[1] == "FORWARD" && table == "filter" && len(f) == 3:
					s.Policies[fam.name+" FORWARD"] = f[2]
				case f[0] == "-N" && strings.HasPrefix(f[1], "DOCKER"):
					key := fam.name + " " + table + " " + f[1]
					if _, ok := s.Chains[key]; !ok {
						s.Chains[key] = []string{}
					}
				case f[0] == "-A" && (strings.HasPrefix(f[1], "DOCKER") || slices.Contains(builtinChains[table], f[1])):
					key := fam.name + " " + table + " " + f[1]
					s.Chains[key] = append(s.Chains[key], line)
				}
			}
		}
	}
	for _, p := range hostSysctls {
		out, err := cmd("cat", p)
		if err != nil {
			continue // IPv6 off: nothing to change
		}
		s.Sysctls[p] = strings.TrimSpace(string(out))
	}
	if out, err := cmd("ls", "-1A", PluginSocketRoot); err == nil {
		s.Plugins = strings.Fields(string(out))
	}
	if out, err := cmd("ls", "-1A", "/etc/docker"); err == nil {
		s.Etc = strings.Fields(string(out))
	}
	return s, nil
}

// ownLinkPrefixes are the names the suite's own links carry (the fake
// internet's veth, the test dockerd's bridge, the plugin's bridges and
// veths, bridges and veths of bridge networks in the test dockerd): a new
// such link after the suite is one it left behind. Other new links may be
// another program's on this shared host, so they are not counted.
var ownLinkPrefixes = []string{"cfw", "br-", "veth", "docker"}

// Diff lists how after differs from s (the state before), in words; nil if
// the host's Docker was left as it was found:
//   - a link that existed before is gone, or has another index or kind or
//     other addresses (docker0 deleted and recreated counts);
//   - a new link whose name is one the suite uses;
//   - a DOCKER* chain that existed before has other rules, a new one holds
//     rules, a rule of a built-in chain (FORWARD; nat PREROUTING, OUTPUT,
//     POSTROUTING) is gone, or one there names the suite's bridge or jumps
//     to a DOCKER* chain that did not exist before;
//   - a FORWARD policy, a forwarding sysctl or the plugin socket directory
//     changed, or /etc/docker holds other files.
func (s *HostDocker) Diff(after *HostDocker) []string {
	var d []string
	for _, name := range sortedKeys(s.Links) {
		b := s.Links[name]
		a, ok := after.Links[name]
		switch {
		case !ok:
			d = append(d, fmt.Sprintf("link %s (%s, index %d) is gone", name, kindOr(b.Kind), b.Index))
		case a.Index != b.Index || a.Kind != b.Kind:
			d = append(d, fmt.Sprintf("link %s was replaced: index %d %s, was %d %s", name, a.Index, kindOr(a.Kind), b.Index, kindOr(b.Kind)))
		case !slices.Equal(a.Addrs, b.Addrs):
			d = append(d, fmt.Sprintf("link %s addresses %v, were %v", name, a.Addrs, b.Addrs))
		}
	}
	for _, name := range sortedKeys(after.Links) {
		if _, ok := s.Links[name]; ok {
			continue
		}
		for _, p := range ownLinkPrefixes {
			if strings.HasPrefix(name, p) {
				d = append(d, fmt.Sprintf("new link %s (%s) left behind", name, kindOr(after.Links[name].Kind)))
				break
			}
		}
	}
	for _, key := range sortedKeys(s.Chains) {
		b := s.Chains[key]
		a, ok := after.Chains[key]
		switch {
		case !ok:
			d = append(d, fmt.Sprintf("iptables chain %s is gone", key))
		case isBuiltinKey(key):
			for _, r := range b {
				if !slices.Contains(a, r) {
					d = append(d, fmt.Sprintf("iptables rule gone: %s (%s)", r, key))
				}
			}
		case !slices.Equal(a, b):
			d = append(d, fmt.Sprintf("iptables chain %s changed: %q, was %q", key, a, b))
		}
	}
	for _, key := range sortedKeys(after.Chains) {
		if !isBuiltinKey(key) {
			if _, ok := s.Chains[key]; !ok && len(after.Chains[key]) > 0 {
				d = append(d, fmt.Sprintf("iptables chain %s left behind with rules %q", key, after.Chains[key]))
			}
			continue
		}
		fam, table := strings.Fields(key)[0], strings.Fields(key)[1]
		for _, r := range after.Chains[key] {
			target := jumpTarget(r)
			_, existed := s.Chains[fam+" "+table+" "+target]
			if slices.Contains(strings.Fields(r), DockerBridge) || (strings.HasPrefix(target, "DOCKER") && !existed) {
				d = append(d, fmt.Sprintf("iptables rule left behind: %s (%s)", r, key))
			}
		}
	}
	for _, m := range []struct {
		what          string
		before, after map[string]string
	}{{"policy", s.Policies, after.Policies}, {"sysctl", s.Sysctls, after.Sysctls}} {
		for _, k := range sortedKeys(m.before) {
			if m.after[k] != m.before[k] {
				d = append(d, fmt.Sprintf("%s %s is %q, was %q", m.what, k, m.after[k], m.before[k]))
			}
		}
	}
	if !slices.Equal(s.Plugins, after.Plugins) {
		d = append(d, fmt.Sprintf("%s holds %v, held %v", PluginSocketRoot, after.Plugins, s.Plugins))
	}
	if !slices.Equal(s.Etc, after.Etc) {
		d = append(d, fmt.Sprintf("/etc/docker holds %v, held %v", after.Etc, s.Etc))
	}
	return d
}

// jumpTarget is the chain an iptables -S rule jumps (-j) or goes (-g) to.
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

func kindOr(k string) string {
	if k == "" {
		return "device"
	}
	return k
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
