package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// spliceMaps returns the ids of the splice_socks maps that process pid
// holds (the plugin's kernel splice, bpf/splice.c: not pinned). bpftool
// lists the maps by name; the process's map ids come from the fdinfo of its
// bpf-map descriptors.
func spliceMaps(t *testing.T, pid int) []int {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", "map", "show", "name", "splice_socks").CombinedOutput()
	if err != nil && len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("bpftool map show name splice_socks: %v: %s", err, out)
	}
	var maps []struct {
		ID int `json:"id"`
	}
	switch b := strings.TrimSpace(string(out)); {
	case strings.HasPrefix(b, "["):
		require.NoError(t, json.Unmarshal(out, &maps), "%s", out)
	case strings.HasPrefix(b, "{"): // one map: bpftool prints the object alone
		maps = append(maps, struct {
			ID int `json:"id"`
		}{})
		require.NoError(t, json.Unmarshal(out, &maps[0]), "%s", out)
	}
	held := map[int]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l != "anon_inode:bpf-map" {
			continue
		}
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "map_id:"); ok {
				id, _ := strconv.Atoi(strings.TrimSpace(v))
				held[id] = true
			}
		}
	}
	var ids []int
	for _, m := range maps {
		if held[m.ID] {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// spliceEntries counts the sockets in the maps ids (-1: a map is gone).
func spliceEntries(t *testing.T, ids []int) int {
	t.Helper()
	n := 0
	for _, id := range ids {
		out, err := exec.Command("bpftool", "-j", "map", "dump", "id", strconv.Itoa(id)).CombinedOutput()
		if err != nil {
			return -1
		}
		n += strings.Count(string(out), `"key"`)
	}
	return n
}

// TestFastpathKernelSpliceInPlugin: in the real plugin with its default
// settings, an allowed tcp flow from a container that moves less than
// CLAWKER_PROXY_KERNEL_SPLICE_AFTER stays with the proxy, and one that moves
// more is handed to the kernel splice (its two sockets enter the plugin's
// socket map) and keeps echoing correctly; when the plugin is killed with a
// flow in the kernel path, the containers see their connections end, no
// socket stays in any splice map, and the restarted plugin relays new flows
// again.
func TestFastpathKernelSpliceInPlugin(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-pt-fastpath", 121, "clawker.allow=tcp://"+harness.TCPHost+":5432")
	pid := pidOf(t, f.e, pluginArgv0)
	require.NotZero(t, pid)
	ids := spliceMaps(t, pid)
	require.Len(t, ids, 1, "the plugin holds one splice socket map (the kernel path is on by default)")
	require.Zero(t, spliceEntries(t, ids), "the splice map holds sockets before any flow")

	logsOf := func(id string) string {
		o, e, _ := f.e.Docker("logs", id)
		return o + e
	}
	ping := `while true; do echo ping; sleep 0.2; done`
	// A short flow: pings only, far below the default hand-over size.
	short := f.detached(t, "--network", n.Name, f.busybox, "sh", "-c", "("+ping+") | nc "+harness.TCPHost+" 5432; echo NC-EXIT")
	require.Eventually(t, func() bool { return strings.Count(logsOf(short), "ping") >= 3 }, 30*time.Second, 100*time.Millisecond,
		"the short echo flow never worked: %s", logsOf(short))
	require.Zero(t, spliceEntries(t, ids), "a flow below the hand-over size entered the kernel path")

	// A bulk flow: 4 MiB of zeros (echoed back, dropped by tr), then pings.
	bulk := f.detached(t, "--network", n.Name, f.busybox, "sh", "-c",
		"(head -c 4194304 /dev/zero; "+ping+") | nc "+harness.TCPHost+" 5432 | tr -d '\\000'; echo NC-EXIT")
	require.Eventually(t, func() bool { return strings.Count(logsOf(bulk), "ping") >= 3 }, 60*time.Second, 100*time.Millisecond,
		"the bulk echo flow never echoed its pings: %s", logsOf(bulk))
	require.Eventually(t, func() bool { return spliceEntries(t, ids) == 2 }, 10*time.Second, 100*time.Millisecond,
		"the bulk flow's two sockets are not in the kernel splice map")
	before := strings.Count(logsOf(bulk), "ping")
	time.Sleep(time.Second)
	require.Greater(t, strings.Count(logsOf(bulk), "ping"), before, "the spliced flow stopped echoing")

	require.NoError(t, exec.Command("kill", "-9", strconv.Itoa(pid)).Run())
	for _, id := range []string{short, bulk} {
		require.Eventually(t, func() bool { return strings.Contains(logsOf(id), "NC-EXIT") }, 15*time.Second, 100*time.Millisecond,
			"a container never saw its connection end after the plugin was killed")
	}
	require.Eventually(t, func() bool { return spliceEntries(t, ids) == -1 }, 15*time.Second, 100*time.Millisecond,
		"the killed plugin's splice map (and its sockets) outlived it")

	f.waitPluginRestart(t, pid)
	var out string
	require.Eventually(t, func() bool {
		out, _ = f.run("--network", n.Name, f.busybox, "sh", "-c", "echo after-restart | nc -w 5 "+harness.TCPHost+" 5432")
		return strings.Contains(out, "after-restart")
	}, 60*time.Second, time.Second, "no tcp flow after the plugin restarted: %s", out)
	f.requireNoLeaks(t)
}
