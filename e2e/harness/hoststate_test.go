package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"-A DOCKER -i cfw-e2e-br0 -j RETURN", []string{"-A", "DOCKER", "-i", "cfw-e2e-br0", "-j", "RETURN"}},
		{`-A DOCKER-USER -i b -m comment --comment "clawker-fw net=b" -j ACCEPT`,
			[]string{"-A", "DOCKER-USER", "-i", "b", "-m", "comment", "--comment", "clawker-fw net=b", "-j", "ACCEPT"}},
		{`-A X -m comment --comment "say \"hi\"" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", `say "hi"`, "-j", "ACCEPT"}},
	} {
		t.Run(tc.line, func(t *testing.T) {
			got, err := splitRule(tc.line)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	_, err := splitRule(`-A X --comment "open`)
	require.Error(t, err)
}

func TestNamesOwnBridge(t *testing.T) {
	require.True(t, namesOwnBridge("-A FORWARD -o cfw-e2e-br0 -j DOCKER"))
	require.True(t, namesOwnBridge("-A POSTROUTING -s 10.222.0.0/24 ! -o x -j MASQUERADE"))
	require.False(t, namesOwnBridge("-A FORWARD -o docker0 -j DOCKER"))
	require.False(t, namesOwnBridge("-A FORWARD -o cfw-e2e-br01 -j DOCKER"))
	require.False(t, namesOwnBridge("-A POSTROUTING -s 10.222.0.0/16 -j MASQUERADE"))
}

// The host-state check sees every kind of change it is meant to catch:
// made in a scratch network namespace (links, iptables and forwarding
// sysctls are per namespace), never on the host.
func TestHostDockerDiffSeesChanges(t *testing.T) {
	testutil.RequirePrivileged(t)
	_, err := exec.LookPath("iptables")
	testutil.Require(t, err == nil, "iptables on PATH")
	ns := fmt.Sprintf("cfw-hs-%d", os.Getpid())
	sh := func(args ...string) {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		require.NoError(t, err, "%s: %s", strings.Join(args, " "), out)
	}
	require.NoError(t, run("ip", "netns", "add", ns))
	t.Cleanup(func() { _ = run("ip", "netns", "del", ns) })
	prefix := []string{"ip", "netns", "exec", ns}

	// A host with a Docker of its own: docker0, its chains, FORWARD DROP.
	sh("ip", "link", "add", "docker0", "type", "bridge")
	sh("ip", "addr", "add", "172.31.250.1/24", "dev", "docker0")
	sh("ip", "link", "add", "eth9", "type", "bridge")
	sh("iptables", "-w", "-N", "DOCKER")
	sh("iptables", "-w", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN")
	sh("iptables", "-w", "-N", "DOCKER-USER")
	sh("iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
	sh("iptables", "-w", "-A", "FORWARD", "-j", "DOCKER-USER")
	sh("iptables", "-w", "-P", "FORWARD", "DROP")
	sh("sysctl", "-qw", "net.ipv4.ip_forward=1")

	before, err := snapshotHostDocker(prefix)
	require.NoError(t, err)
	require.Contains(t, before.Links, "docker0")
	require.Equal(t, []string{"172.31.250.1/24"}, before.Links["docker0"].Addrs)
	require.Equal(t, []string{"-A DOCKER -i docker0 -j RETURN"}, before.Chains["ip4 filter DOCKER"])
	require.Equal(t, "DROP", before.Policies["ip4 FORWARD"])
	again, err := snapshotHostDocker(prefix)
	require.NoError(t, err)
	require.Empty(t, before.Diff(again), "no change, no difference")

	// What a careless test dockerd does.
	sh("ip", "link", "del", "docker0")                        // --bridge=none
	sh("ip", "addr", "add", "10.9.9.9/24", "dev", "eth9")     // an address moved
	sh("ip", "link", "add", "cfw-left", "type", "bridge")     // a link left behind
	sh("ip", "link", "add", "someone-else", "type", "bridge") // another program's: not counted
	sh("iptables", "-w", "-I", "DOCKER-USER", "-j", "ACCEPT") // a rule in the host dockerd's chain
	sh("iptables", "-w", "-D", "FORWARD", "-j", "DOCKER-USER")
	sh("iptables", "-w", "-A", "FORWARD", "-o", DockerBridge, "-j", "ACCEPT")
	sh("iptables", "-w", "-P", "FORWARD", "ACCEPT")
	sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
	after, err := snapshotHostDocker(prefix)
	require.NoError(t, err)
	diff := strings.Join(before.Diff(after), "\n")
	for _, want := range []string{
		"link docker0 (bridge, index",
		"link eth9 addresses [10.9.9.9/24], were []",
		"new link cfw-left (bridge) left behind",
		`iptables chain ip4 filter DOCKER-USER changed`,
		"iptables rule gone: -A FORWARD -j DOCKER-USER",
		"iptables rule left behind: -A FORWARD -o " + DockerBridge + " -j ACCEPT",
		`policy ip4 FORWARD is "ACCEPT", was "DROP"`,
		`sysctl /proc/sys/net/ipv4/ip_forward is "0", was "1"`,
	} {
		require.Contains(t, diff, want)
	}
	require.NotContains(t, diff, "someone-else")

	// docker0 deleted and recreated is not the same docker0.
	sh("ip", "link", "add", "docker0", "type", "bridge")
	sh("ip", "addr", "add", "172.31.250.1/24", "dev", "docker0")
	after, err = snapshotHostDocker(prefix)
	require.NoError(t, err)
	require.Contains(t, strings.Join(before.Diff(after), "\n"), "link docker0 was replaced")
}

// What a current engine's dockerd does at start to a 20.10 host dockerd's
// chains (measured: its removeIPChains and the deletion of the FORWARD jump
// to DOCKER-ISOLATION-STAGE-1), undone by restoreDockerChains: made in a
// scratch network namespace.
func TestRestoreDockerChains(t *testing.T) {
	testutil.RequirePrivileged(t)
	_, err := exec.LookPath("iptables")
	testutil.Require(t, err == nil, "iptables on PATH")
	ns := fmt.Sprintf("cfw-rs-%d", os.Getpid())
	sh := func(args ...string) {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		require.NoError(t, err, "%s: %s", strings.Join(args, " "), out)
	}
	require.NoError(t, run("ip", "netns", "add", ns))
	t.Cleanup(func() { _ = run("ip", "netns", "del", ns) })
	prefix := []string{"ip", "netns", "exec", ns}

	// The host's Docker 20.10.
	for _, c := range []string{"DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"} {
		sh("iptables", "-w", "-N", c)
	}
	sh("iptables", "-w", "-t", "nat", "-N", "DOCKER")
	sh("iptables", "-w", "-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN")
	sh("iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")
	sh("iptables", "-w", "-A", "FORWARD", "-j", "DOCKER-USER")
	sh("iptables", "-w", "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
	sh("iptables", "-w", "-A", "FORWARD", "-o", "docker0", "-j", "DOCKER")
	sh("iptables", "-w", "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "docker0", "!", "-o", "docker0", "-j", "DOCKER-ISOLATION-STAGE-2")
	sh("iptables", "-w", "-A", "DOCKER-ISOLATION-STAGE-2", "-o", "docker0", "-j", "DROP")
	sh("iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
	sh("iptables", "-w", "-A", "DOCKER", "-d", "172.17.0.2/32", "!", "-i", "docker0", "-o", "docker0", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT")
	before, err := snapshotHostDocker(prefix)
	require.NoError(t, err)

	// The test dockerd (current engine) starts: chains flushed or removed,
	// the old jump deleted, its own chains and jumps added.
	sh("iptables", "-w", "-D", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
	sh("iptables", "-w", "-F", "DOCKER-ISOLATION-STAGE-1")
	sh("iptables", "-w", "-F", "DOCKER-ISOLATION-STAGE-2")
	sh("iptables", "-w", "-X", "DOCKER-ISOLATION-STAGE-1")
	sh("iptables", "-w", "-X", "DOCKER-ISOLATION-STAGE-2")
	sh("iptables", "-w", "-F", "DOCKER")
	sh("iptables", "-w", "-t", "nat", "-F", "DOCKER")
	sh("iptables", "-w", "-N", "DOCKER-FORWARD")
	sh("iptables", "-w", "-A", "DOCKER-FORWARD", "-i", DockerBridge, "-j", "ACCEPT")
	sh("iptables", "-w", "-I", "FORWARD", "2", "-j", "DOCKER-FORWARD")
	mid, err := snapshotHostDocker(prefix)
	require.NoError(t, err)
	require.NotEmpty(t, before.Diff(mid))

	require.NoError(t, restoreDockerChainsIn(prefix, before))
	after, err := snapshotHostDocker(prefix)
	require.NoError(t, err)
	require.Empty(t, before.Diff(after))
	require.Equal(t, before.Chains["ip4 filter FORWARD"], after.Chains["ip4 filter FORWARD"], "FORWARD in its order")
	require.NotContains(t, after.Chains, "ip4 filter DOCKER-FORWARD")
}
