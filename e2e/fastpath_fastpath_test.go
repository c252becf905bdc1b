package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// spliceEntries counts the sockets in every splice_socks map on the host
// (the plugin's kernel splice, bpf/splice.c; its maps are not pinned, so
// they are found by name). bpftool fails with no output when none exists.
func spliceEntries(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", "map", "dump", "name", "splice_socks").CombinedOutput()
	if err != nil && len(strings.TrimSpace(string(out))) > 0 {
		t.Logf("bpftool map dump name splice_socks: %v: %s", err, out)
		return -1
	}
	return strings.Count(string(out), `"key"`)
}

// TestFastpathKernelSpliceInPlugin: in the real plugin, an allowed tcp flow
// from a container is carried by the kernel splice (its two sockets are in
// the plugin's socket map) and echoes correctly; when the plugin is killed
// with the flow in the kernel path, the container sees its connection end,
// no socket stays in any splice map, and the restarted plugin splices new
// flows again.
func TestFastpathKernelSpliceInPlugin(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-fastpath", 121, "clawker.allow=tcp://"+harness.TCPHost+":5432")
	require.Zero(t, spliceEntries(t), "splice maps hold sockets before any flow")

	loop := `(while true; do echo ping; sleep 0.2; done) | nc ` + harness.TCPHost + ` 5432; echo NC-EXIT`
	id := f.detached(t, "--network", n.Name, f.busybox, "sh", "-c", loop)
	logs := func() string {
		o, e, _ := f.e.Docker("logs", id)
		return o + e
	}
	require.Eventually(t, func() bool { return strings.Count(logs(), "ping") >= 3 }, 30*time.Second, 100*time.Millisecond,
		"the echo flow never worked: %s", logs())
	require.Eventually(t, func() bool { return spliceEntries(t) == 2 }, 10*time.Second, 100*time.Millisecond,
		"the flow's two sockets are not in the kernel splice map")
	before := strings.Count(logs(), "ping")
	time.Sleep(time.Second)
	require.Greater(t, strings.Count(logs(), "ping"), before, "the spliced flow stopped echoing")

	pid := pidOf(t, f.e, pluginArgv0)
	require.NotZero(t, pid)
	require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pid)).Run())
	require.Eventually(t, func() bool { return strings.Contains(logs(), "NC-EXIT") }, 15*time.Second, 100*time.Millisecond,
		"the container never saw its spliced connection end after the plugin was killed")
	require.Eventually(t, func() bool { return spliceEntries(t) == 0 }, 15*time.Second, 100*time.Millisecond,
		"sockets of the killed plugin stay in a splice map")

	f.waitPluginRestart(t, pid)
	var out string
	require.Eventually(t, func() bool {
		out, _ = f.run("--network", n.Name, f.busybox, "sh", "-c", "echo after-restart | nc -w 5 "+harness.TCPHost+" 5432")
		return strings.Contains(out, "after-restart")
	}, 60*time.Second, time.Second, "no tcp flow after the plugin restarted: %s", out)
	f.requireNoLeaks(t)
}
