package e2e

// Hardening tests of helper "engines": the suite leaves the host's Docker as
// it found it (issue 11, class 10), and the behaviours that differ between
// Debian's Docker 20.10 and the current engine (issue 16). Every test here
// runs on the engine CLAWKER_E2E_ENGINE selects (make test-e2e ENGINE=...).

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dockerapi "github.com/docker/docker/api"
	"github.com/docker/docker/api/types/versions"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/stretchr/testify/require"
)

// Class 10. The attempt: a test dockerd in the host's namespace that deletes
// the host's docker0 (--bridge=none does) or leaves rules in the host
// dockerd's chains. The test runs a whole environment's life (start, a
// container on the test dockerd's default bridge, a dockerd restart, close)
// next to a docker0: the host's if it has one (never touched), else a bridge
// of this test's own named docker0 (removed at the end only if it is still
// the one created here). The control: the test dockerd works on its own
// bridge.
func TestHardeningEnginesHostDockerUntouched(t *testing.T) {
	requireE2E(t)
	closeShared(t)
	d0, err := net.InterfaceByName("docker0")
	if err != nil {
		hostRun(t, "ip", "link", "add", "docker0", "type", "bridge")
		d0, err = net.InterfaceByName("docker0")
		require.NoError(t, err)
		own := d0.Index
		t.Cleanup(func() {
			if cur, err := net.InterfaceByName("docker0"); err == nil && cur.Index == own {
				hostRun(t, "ip", "link", "del", "docker0")
			}
		})
		t.Logf("no docker0 on this host: created one (index %d) for the test", own)
	} else {
		t.Logf("the host's docker0 (index %d) is there: it must survive", d0.Index)
	}
	before, err := harness.SnapshotHostDocker()
	require.NoError(t, err)

	e, err := harness.Start(harness.Options{NoSSH: true})
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = e.Close()
		}
	})
	// The control: the test dockerd's default bridge is its own, and works.
	require.Equal(t, harness.DockerBridge,
		e.MustDocker(t, "network", "inspect", "-f", `{{index .Options "com.docker.network.bridge.name"}}`, "bridge"))
	img, err := e.ImportBusybox()
	require.NoError(t, err)
	out := e.MustDocker(t, "run", "--rm", img, "ip", "-4", "-o", "addr", "show", "eth0")
	require.Contains(t, out, "10.222.0.", "a container on the default bridge gets the test bridge's subnet")
	cur, err := net.InterfaceByName("docker0")
	require.NoError(t, err, "docker0 is gone after the test dockerd started")
	require.Equal(t, d0.Index, cur.Index, "docker0 was replaced")
	if !e.Engine().Current() {
		// 20.10's identity key goes to the Env, not /etc/docker/key.json.
		_, err := os.Stat(filepath.Join(e.Dir(), "key.json"))
		require.NoError(t, err, "20.10 keeps its key.json in the Env")
	}
	require.NoError(t, e.RestartDockerd())

	// Close checks the host itself (Env.checkHostDocker); check again here.
	closed = true
	require.NoError(t, e.Close())
	after, err := harness.SnapshotHostDocker()
	require.NoError(t, err)
	require.Empty(t, before.Diff(after), "the environment changed the host's Docker")
	cur, err = net.InterfaceByName("docker0")
	require.NoError(t, err, "docker0 is gone after the environment closed")
	require.Equal(t, d0.Index, cur.Index, "docker0 was replaced")
	_, err = net.InterfaceByName(harness.DockerBridge)
	require.Error(t, err, "the test dockerd's bridge is removed with it")
	for _, r := range after.Chains {
		for _, rule := range r {
			require.False(t, strings.Contains(rule, harness.DockerBridge), "rule left for the test bridge: %s", rule)
		}
	}
}

// Issue 16, "where the embedded resolver forwards from". A nameserver that
// dockerd read from the host's resolv.conf (not a --dns override) is asked
// from the container's namespace by Docker 20.10 (unless it is on loopback),
// and always from the host's namespace by the current engine: there the
// forward of a query that reached 127.0.0.11 escapes every hook keyed on the
// container's namespace. The firewall therefore steers 127.0.0.11:53 to its
// own DNS and refuses the resolver's other ports on every engine (class 6);
// this test pins the engine behaviour that makes it necessary, on a plain
// bridge network without masquerade (the source stays visible).
func TestHardeningEnginesResolverForwardSource(t *testing.T) {
	e := ownEnv(t, harness.Options{HostNameserver: harness.FakenetIP, NoSSH: true})
	img, err := e.ImportBusybox()
	require.NoError(t, err)
	e.MustDocker(t, "network", "create", "--subnet", "10.221.1.0/24",
		"-o", "com.docker.network.bridge.enable_ip_masquerade=false", "cfw-eng-dns")
	require.NoError(t, e.ResetFakenetLog())
	out := e.MustDocker(t, "run", "--rm", "--network", "cfw-eng-dns", "--ip", "10.221.1.50", img,
		"sh", "-c", "cat /etc/resolv.conf; nslookup "+harness.AllowedHost)
	require.Contains(t, out, "nameserver 127.0.0.11")
	require.Contains(t, out, "10.220.0.10")
	log, err := e.FakenetLog()
	require.NoError(t, err)
	q, ok := findEntry(log, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindDNS && en.Name == harness.AllowedHost })
	require.True(t, ok, "the fake DNS saw the forwarded query: %+v", log)
	want := "10.221.1.50" // 20.10: from the container's namespace
	if e.Engine().Current() {
		want = harness.HostIP // current moby: from dockerd's (the host's) namespace
	}
	require.Equal(t, want, q.Src, "engine %s forwards from", e.Engine().Name)
	t.Logf("engine %s: the embedded resolver forwarded %s from %s", e.Engine().Name, harness.AllowedHost, q.Src)
}

// Issue 16, "the plugin's Docker client" and "Join and netns timing". The
// plugin's client negotiates min(engine API, its library's maximum): 1.41
// on 20.10, the library's 1.51 on the current engine (1.56), and the engine
// serves it (dockerd's --debug log names the URI of every call; the
// CLI's is 1.50 there, so the plugin's calls are told apart). Docker 20.10
// calls Join before the container's netns exists, the current engine after:
// there the plugin enrolls the netns at Join; on 20.10 when the veth moves
// into it. Every first connection works on both (the delay from Join to the
// veth-driven enrollment is recorded as a TIMING line).
func TestHardeningEnginesPluginClientAndEnrollment(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-eng-enroll", 140)
	offset := len(f.dockerdLog(t))
	const runs = 5
	for i := range runs {
		out, err := f.run("--network", n.Name, "--label", "clawker.allow=http://"+harness.AllowedHost, f.busybox,
			"sh", "-c", httpGet(harness.AllowedHost, fmt.Sprintf("/eng-%d", i)))
		require.NoError(t, err, out)
		require.Contains(t, out, "fakenet host=allowed.example.test path=/eng-", "first connection of run %d", i)
	}
	f.requireNoLeaks(t)
	log := f.logTail(t, offset)

	want := dockerapi.DefaultVersion
	if versions.LessThan(f.e.Engine().APIVersion, want) {
		want = f.e.Engine().APIVersion
	}
	// 20.10 logs `Calling GET <uri>`, the current engine `request-url=<uri>`.
	require.Contains(t, log, "/v"+want+"/containers/json?all=1&filters=",
		"the plugin lists containers with API %s on engine %s", want, f.e.Engine().Name)

	afterRe := regexp.MustCompile(`after\\?":\\?"([^"\\]+)`)
	var delays []time.Duration
	for _, line := range strings.Split(log, "\n") {
		// "endpoint enrolled" (the veth-driven enrollment), not "... at join".
		if !strings.Contains(line, `endpoint enrolled\"`) {
			continue
		}
		m := afterRe.FindStringSubmatch(line)
		require.NotNil(t, m, "enrollment line without delay: %s", line)
		d, err := time.ParseDuration(m[1])
		require.NoError(t, err)
		delays = append(delays, d)
	}
	require.Len(t, delays, runs, "one enrollment per container")
	// Where the netns exists at Join (current engine) the plugin enrolls it
	// there, before the container's first instruction; 20.10 has none yet.
	atJoin := strings.Count(log, "endpoint enrolled at join")
	if f.e.Engine().Current() {
		require.Equal(t, runs, atJoin, "every container enrolled at Join")
	} else {
		require.Zero(t, atJoin, "no netns at Join on 20.10")
	}
	slices.Sort(delays)
	t.Logf("engine %s: Join -> enrolled p50 %v, max %v", f.e.Engine().Name, delays[len(delays)/2], delays[len(delays)-1])
	recordTiming(t, "enroll_after_join_p50_"+f.e.Engine().Name, delays[len(delays)/2])
}
