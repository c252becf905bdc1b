package e2e

// Class 8 of issue 11 (exhaustion): listener-port exhaustion must fail only
// the rule that asked too much, and never hold back a revocation.
//
//	cd /work/wt/exhaust && make plugin build && flock -o /tmp/clawker-e2e.lock env CLAWKER_E2E=1 \
//	  go test -count=1 -timeout 40m -v -run 'TestHardeningExhaust' ./e2e/

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// TestHardeningExhaustListenerPorts: a label with four 256-port ranges is
// refused at docker run with authz on; with authz off only that container's
// rules over its budget fail (status and denials say why) while its first
// range, its neighbours and the network's rules work; and `rules rm` of an
// allowed rule takes effect while those rules have no ports.
func TestHardeningExhaustListenerPorts(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	netID := f.network(t, "cfw-exh", "10.231.9.0/24", "clawker.allow=http://"+harness.AllowedHost)
	var items []string
	for _, lo := range []int{7000, 8000, 9000, 10000} {
		items = append(items, fmt.Sprintf("tcp://%s:%d-%d", harness.TCPHost, lo, lo+255))
	}
	label := "clawker.allow=" + strings.Join(items, ",")

	f.run(t, "cfw-exh-ok", "cfw-exh", nil, "sleep", "3600")
	f.waitIdentified(t, "cfw-exh-ok")

	t.Run("authz refuses the label at docker run", func(t *testing.T) {
		f.setAuthz(t, true)
		t.Cleanup(func() { f.setAuthz(t, false) })
		before := f.containerCount(t)
		_, errOut, err := e.Docker("run", "-d", "--name", "cfw-exh-refused", "--network", "cfw-exh", "--label", label, f.img, "sleep", "3600")
		require.Error(t, err)
		t.Logf("docker run -> %s", strings.TrimSpace(errOut))
		require.Contains(t, errOut, "authorization denied by plugin "+harness.PluginName)
		require.Contains(t, errOut, "label clawker.allow=tcp://"+harness.TCPHost+":8000-8255")
		require.Contains(t, errOut, "a container may use at most 256")
		require.Equal(t, before, f.containerCount(t), "nothing created")
		f.setAuthz(t, false)
	})

	// Authz off: the container runs; its first range fits its budget, the
	// other three fail alone.
	f.run(t, "cfw-exh-big", "cfw-exh", []string{"--label", label}, "sleep", "3600")
	f.waitIdentified(t, "cfw-exh-big")

	t.Run("without authz only that container's rules over the budget fail", func(t *testing.T) {
		st := f.mustCFW(t, "status")
		t.Logf("status:\n%s", st)
		require.Equal(t, 3, strings.Count(st, "container-port-limit"), "three ranges not applied")
		require.Contains(t, st, "NOT APPLIED: rule label clawker.allow=tcp://"+harness.TCPHost+":8000-8255")
		echo := func(c string, port int) (string, error) {
			out, errOut, err := e.Docker("exec", c, "sh", "-c", fmt.Sprintf("echo hi-%d | nc -w 2 %s %d 2>&1", port, harness.TCPHost, port))
			return out + errOut, err
		}
		out, _ := echo("cfw-exh-big", 7000)
		require.Contains(t, out, "hi-7000", "the range within the budget works")
		out, _ = echo("cfw-exh-big", 8000)
		require.NotContains(t, out, "hi-8000")
		opsEventually(t, 10*time.Second, func() (bool, string) {
			d, _, _ := f.cfw("denials")
			return strings.Contains(d, "container-port-limit"), d
		})
		// Control: the neighbour and the network's rule are untouched.
		ok, why := f.reach("cfw-exh-ok", harness.AllowedHost, "/")
		require.True(t, ok, why)
		ok, why = f.reach("cfw-exh-big", harness.AllowedHost, "/")
		require.True(t, ok, why)
	})

	t.Run("rules rm takes effect while another rule has no ports", func(t *testing.T) {
		f.mustCFW(t, "rules", "add", netID, "http://"+harness.AltHost)
		f.pollReach(t, "cfw-exh-ok", harness.AltHost, "/", true, 5*time.Second)
		f.mustCFW(t, "rules", "rm", netID, "http://"+harness.AltHost)
		f.pollReach(t, "cfw-exh-ok", harness.AltHost, "/", false, 5*time.Second)
		st := f.mustCFW(t, "status")
		require.Equal(t, 3, strings.Count(st, "container-port-limit"), "the failed rules are still failing")
		ok, why := f.reach("cfw-exh-ok", harness.AllowedHost, "/")
		require.True(t, ok, "control: %s", why)
	})

	t.Run("runtime rules over the network budget are refused", func(t *testing.T) {
		_, errOut, err := f.cfw(append([]string{"rules", "add", netID}, items[:3]...)...)
		require.Error(t, err)
		require.Contains(t, errOut, "LISTENER_PORT_LIMIT")
		require.NotContains(t, f.mustCFW(t, "rules", "ls", netID), harness.TCPHost, "nothing was added")
	})

	t.Run("network create over the budget is refused naming the option", func(t *testing.T) {
		_, errOut, err := e.Docker("network", "create", "-d", harness.PluginName, "--subnet", "10.231.10.0/24",
			"-o", "clawker.allow="+strings.Join(items[:3], ","), "cfw-exh-toobig")
		require.Error(t, err)
		require.Contains(t, errOut, "option clawker.allow=tcp://"+harness.TCPHost+":9000-9255")
		_, _, _ = e.Docker("network", "rm", "cfw-exh-toobig")
	})
}

// TestHardeningExhaustListenerGuard: from a firewalled network only that
// network's listener ports are reachable on the gateway — a host service
// elsewhere in the reserved range is not, even for frames no socket hook
// sees — and the plugin's listener ports are reachable from no other
// interface (the fake internet's link here).
func TestHardeningExhaustListenerGuard(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	const gw = "10.231.11.1"
	f.network(t, "cfw-exh-lg", "10.231.11.0/24", "clawker.allow=http://"+harness.AllowedHost+",tcp://"+harness.TCPHost+":5432")
	const c = "cfw-exh-lg-c"
	deb, err := e.ImportDebian()
	require.NoError(t, err)
	id := e.MustDocker(t, "run", "-d", "--name", c, "--network", "cfw-exh-lg", deb, "sleep", "3600")
	t.Cleanup(func() { _, _, _ = e.Docker("rm", "-f", c) })
	f.waitIdentified(t, c)
	ip := e.MustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \"cfw-exh-lg\").IPAddress}}", id)

	// A host service on a port of the reserved range that no rule uses.
	const svcPort = 15777
	ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", svcPort))
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var seen []string
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, conn.RemoteAddr().String())
			mu.Unlock()
			_, _ = conn.Write([]byte("host-service\n"))
			conn.Close()
		}
	}()
	listenerPort := ""
	for _, l := range strings.Split(f.mustCFW(t, "status"), ", ") {
		if k, p, ok := strings.Cut(strings.TrimPrefix(l, "listeners: "), " "); ok && k == "dedicated:tcp:"+harness.TCPHost+":5432" {
			listenerPort = strings.TrimSpace(p)
		}
	}
	require.NotEmpty(t, listenerPort, "the tcp rule's listener is in status")

	// synProbe sends a TCP SYN to gw:port as a raw Ethernet frame (an
	// AF_PACKET socket: no socket hook sees it, as root in a container with
	// Docker's default NET_RAW) and reports what came back.
	synProbe := func(port string) string {
		out, errOut, err := e.Docker("exec", c, "python3", "-c", synProbeScript, ip, gw, port)
		require.NoError(t, err, "%s%s", out, errOut)
		return strings.TrimSpace(out)
	}
	t.Run("a raw SYN reaches the network's own listener but not a host service", func(t *testing.T) {
		require.Equal(t, "SYNACK", synProbe(listenerPort), "control: the network's own listener port is open on the gateway")
		require.Equal(t, "NOTHING", synProbe(strconv.Itoa(svcPort)), "a host service elsewhere in the reserved range is not")
		require.Equal(t, "NOTHING", synProbe("15999"))
		out, errOut, _ := e.Docker("exec", c, "curl", "-sS", "-m", "5", "http://"+harness.AllowedHost+"/lg")
		require.Contains(t, out, "path=/lg", "control: the container's allowed site works: %s", errOut)
		mu.Lock()
		defer mu.Unlock()
		require.Empty(t, seen, "the host service saw nothing")
	})

	t.Run("listener ports are unreachable from another interface", func(t *testing.T) {
		fromInet := func(addr, port string) string {
			out, _ := exec.Command("ip", "netns", "exec", harness.NetnsName, "busybox", "sh", "-c",
				fmt.Sprintf("echo x | busybox nc -w 2 %s %s 2>&1; echo rc=$?", addr, port)).CombinedOutput()
			return string(out)
		}
		out := fromInet(gw, strconv.Itoa(svcPort))
		require.Contains(t, out, "host-service", "control: the fake internet reaches the host's own service in the range")
		for _, dst := range [][2]string{{gw, listenerPort}, {gw, "15053"}, {"10.220.0.1", listenerPort}, {"10.220.0.1", "15053"}} {
			out := fromInet(dst[0], dst[1])
			t.Logf("from %s to %s:%s -> %s", harness.NetnsName, dst[0], dst[1], strings.TrimSpace(out))
			require.NotContains(t, out, "rc=0", "%s:%s reachable from another interface", dst[0], dst[1])
		}
	})
}

// TestHardeningExhaustLogRate: a container that floods denied DNS queries
// gets its lines dropped beyond its rate (counted in status, summarized in
// one line) while another container's lines still reach the log.
func TestHardeningExhaustLogRate(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	f.network(t, "cfw-exh-log", "10.231.12.0/24", "clawker.allow=http://"+harness.AllowedHost)
	f.run(t, "cfw-exh-flood", "cfw-exh-log", nil, "sleep", "3600")
	f.run(t, "cfw-exh-quiet", "cfw-exh-log", nil, "sleep", "3600")
	f.waitIdentified(t, "cfw-exh-flood")
	f.waitIdentified(t, "cfw-exh-quiet")

	start := time.Now()
	_, _, _ = e.Docker("exec", "cfw-exh-flood", "sh", "-c", "i=0; while [ $i -lt 800 ]; do nslookup -type=a f$i.denied.example.test >/dev/null 2>&1; i=$((i+1)); done")
	t.Logf("800 denied lookups in %v", time.Since(start).Round(time.Millisecond))
	_, _, _ = e.Docker("exec", "cfw-exh-quiet", "sh", "-c", "nslookup -type=a quiet.denied.example.test >/dev/null 2>&1")

	var st string
	opsEventually(t, 10*time.Second, func() (bool, string) {
		st = f.mustCFW(t, "status")
		return strings.Contains(st, "log-limit") && !strings.Contains(st, "dns 0,"), st
	})
	t.Logf("status: %s", st[strings.Index(st, "log-limit"):][:strings.Index(st[strings.Index(st, "log-limit"):], "\n")])
	opsEventually(t, 40*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(e.DockerdLog())
		return strings.Contains(string(b), "log lines over the per-endpoint rate limit were dropped"), "no summary line yet"
	})
	b, err := os.ReadFile(e.DockerdLog())
	require.NoError(t, err)
	flood, quiet := 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "CLAWKER-DECISION") || !strings.Contains(l, `source\":\"dns`) {
			continue
		}
		if strings.Contains(l, "denied.example.test") && strings.Contains(l, "cfw-exh-flood") {
			flood++
		}
		if strings.Contains(l, "cfw-exh-quiet") && strings.Contains(l, "quiet.denied.example.test") {
			quiet++
		}
	}
	t.Logf("flood lines relayed: %d of >= 800; quiet lines: %d", flood, quiet)
	require.Less(t, flood, 800, "the flood's lines are limited")
	require.Positive(t, quiet, "control: another container's lines still reach the log")
}

// synProbeScript sends a TCP SYN from eth0 (source argv[1]) to argv[2]:argv[3]
// in a raw Ethernet frame and prints SYNACK, RST or NOTHING.
const synProbeScript = `
import random, socket, struct, sys, time
src, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
socket.getaddrinfo("` + harness.AllowedHost + `", 80)  # DNS goes to the gateway: its MAC is in the ARP cache
gwmac = None
for line in open("/proc/net/arp").read().splitlines()[1:]:
    f = line.split()
    if f[0] == dst:
        gwmac = bytes.fromhex(f[3].replace(":", ""))
mymac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
sport = random.randint(40000, 60000)
tcp = struct.pack("!HHLLBBHHH", sport, dport, random.randint(0, 2**32 - 1), 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randint(0, 65535), 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
p.bind(("eth0", 0))
p.settimeout(0.2)
for _ in range(3):
    p.send(gwmac + mymac + b"\x08\x00" + ip + tcp)
    end = time.time() + 1
    while time.time() < end:
        try:
            fr = p.recv(2048)
        except socket.timeout:
            continue
        h = fr[14:]
        if len(h) < 40 or h[9] != 6 or h[12:16] != socket.inet_aton(dst):
            continue
        t = h[(h[0] & 15) * 4:]
        sp, dp = struct.unpack("!HH", t[:4])
        if sp != dport or dp != sport:
            continue
        print("SYNACK" if t[13] & 0x12 == 0x12 else "RST" if t[13] & 0x04 else "OTHER")
        sys.exit(0)
print("NOTHING")
`
