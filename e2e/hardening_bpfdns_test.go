package e2e

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// resolverPorts reads the ports dockerd's embedded resolver listens on in a
// container's namespace: 127.0.0.11 (0B00007F in /proc's little-endian hex)
// in /proc/net/udp, and in LISTEN state (0A) in /proc/net/tcp.
func resolverPorts(t *testing.T, f *pluginFixture, id string) (udp, tcp []int) {
	t.Helper()
	parse := func(file string, listenOnly bool) []int {
		out, err := f.exec(id, "cat", file)
		require.NoError(t, err, out)
		var ports []int
		for _, line := range strings.Split(out, "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 4 {
				continue
			}
			addr, port, ok := strings.Cut(fs[1], ":")
			if !ok || addr != "0B00007F" || (listenOnly && fs[3] != "0A") {
				continue
			}
			p, err := strconv.ParseUint(port, 16, 16)
			require.NoError(t, err, line)
			ports = append(ports, int(p))
		}
		return ports
	}
	return parse("/proc/net/udp", false), parse("/proc/net/tcp", true)
}

// dnsProbe is a Python client that asks a DNS server one A question over
// udp (unconnected sendto: the sendmsg hook), udp6 (an AF_INET6 socket to
// the IPv4-mapped address) or tcp (connect), and prints "ANSWERED rcode=N"
// or the errno it got.
const dnsProbe = `
import socket, struct, sys
mode, host, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for l in name.split("."):
    q += bytes([len(l)]) + l.encode()
q += b"\x00\x00\x01\x00\x01"
try:
    if mode == "tcp":
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(struct.pack(">H", len(q)) + q)
        r = s.recv(2048)[2:]
    else:
        fam = socket.AF_INET6 if mode == "udp6" else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(q, ("::ffff:" + host if mode == "udp6" else host, port))
        r = s.recvfrom(2048)[0]
    print("ANSWERED rcode=%d" % (r[3] & 15))
except OSError as e:
    print("errno", e.errno, e.strerror)
`

// TestHardeningBpfdnsResolverPorts (issue 11, class 6): dockerd's embedded
// resolver listens on 127.0.0.11 at random UDP and TCP ports in each
// container's namespace; current engines forward from the host's namespace,
// out of the hooks' sight. Every real port is refused from a firewalled
// container (TCP, connected and unconnected UDP, IPv4-mapped), with a
// denial that says why, while 127.0.0.11:53 still answers (steered to the
// firewall's DNS). On a plain network the same ports do answer, so the
// ports read are the live resolver.
func TestHardeningBpfdnsResolverPorts(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-bd-resolver", 171, "clawker.allow="+harness.AllowedHost)
	const name = "cfw-bd-resolver-c"
	id := f.detached(t, "--network", n.Name, "--name", name, f.debian, "sleep", "600")

	udp, tcp := resolverPorts(t, f, id)
	t.Logf("embedded resolver ports in the firewalled container: udp %v tcp %v", udp, tcp)
	require.NotEmpty(t, udp, "no UDP port of 127.0.0.11 in /proc/net/udp")
	require.NotEmpty(t, tcp, "no listening TCP port of 127.0.0.11 in /proc/net/tcp")

	probe := func(cid, mode string, port int, qname string) string {
		out, _ := f.exec(cid, "python3", "-c", dnsProbe, mode, "127.0.0.11", strconv.Itoa(port), qname)
		return strings.TrimSpace(out)
	}
	for _, p := range udp {
		for _, mode := range []string{"udp", "udp6"} {
			out := probe(id, mode, p, harness.DeniedHost)
			t.Logf("%s 127.0.0.11:%d -> %s", mode, p, out)
			require.Equal(t, "errno 1 Operation not permitted", out, "%s to the resolver's real port %d", mode, p)
		}
		out, _ := f.exec(id, "dig", "+time=2", "+tries=1", "-p", strconv.Itoa(p), "@127.0.0.11", harness.DeniedHost)
		t.Logf("dig -p %d (udp): %s", p, tailLines(out, 3))
		require.NotContains(t, out, "status:", "dig got an answer from the resolver's real udp port %d", p)
	}
	for _, p := range tcp {
		out := probe(id, "tcp", p, harness.DeniedHost)
		t.Logf("tcp 127.0.0.11:%d -> %s", p, out)
		require.Equal(t, "errno 1 Operation not permitted", out, "tcp to the resolver's real port %d", p)
		out, _ = f.exec(id, "dig", "+tcp", "+time=2", "+tries=1", "-p", strconv.Itoa(p), "@127.0.0.11", harness.DeniedHost)
		t.Logf("dig +tcp -p %d: %s", p, tailLines(out, 3))
		require.NotContains(t, out, "status:", "dig got an answer from the resolver's real tcp port %d", p)
	}

	// The denials say what happened and what to do instead.
	want := fmt.Sprintf("127.0.0.11:%d", udp[0])
	var lines string
	require.Eventually(t, func() bool {
		lines, _ = f.admin("denials")
		for _, l := range strings.Split(lines, "\n") {
			if strings.Contains(l, name) && strings.Contains(l, want) && strings.Contains(l, "embedded resolver") && strings.Contains(l, "port 53") {
				t.Logf("denial: %s", l)
				return true
			}
		}
		return false
	}, 10*time.Second, 200*time.Millisecond, "no denial for %s naming the resolver:\n%s", want, lines)

	// Control: port 53 of the same address is the firewall's DNS.
	out, err := f.exec(id, "nslookup", harness.AllowedHost, "127.0.0.11")
	require.NoError(t, err, out)
	require.Contains(t, out, allowedIP)
	out, err = f.exec(id, "dig", "+tcp", "+short", "@127.0.0.11", harness.AllowedHost)
	require.NoError(t, err, out)
	require.Equal(t, allowedIP, strings.TrimSpace(out))
	for _, mode := range []string{"udp", "udp6", "tcp"} {
		require.Equal(t, "ANSWERED rcode=0", probe(id, mode, 53, harness.AllowedHost), "%s to 127.0.0.11:53", mode)
		require.Equal(t, "ANSWERED rcode=3", probe(id, mode, 53, harness.DeniedHost), "%s to 127.0.0.11:53", mode)
	}

	// The neighbour that proves the probe: on a plain Docker network the
	// real ports answer (the container's own name, which dockerd answers
	// itself, so nothing is forwarded anywhere).
	_, _, _ = f.e.Docker("network", "rm", "cfw-bd-plain")
	f.e.MustDocker(t, "network", "create", "cfw-bd-plain")
	t.Cleanup(func() { f.removeNet("cfw-bd-plain") })
	plain := f.detached(t, "--network", "cfw-bd-plain", "--name", "cfw-bd-plain-c", f.debian, "sleep", "600")
	pudp, ptcp := resolverPorts(t, f, plain)
	require.NotEmpty(t, pudp)
	require.NotEmpty(t, ptcp)
	require.Equal(t, "ANSWERED rcode=0", probe(plain, "udp", pudp[0], "cfw-bd-plain-c"), "plain network, udp %d", pudp[0])
	require.Equal(t, "ANSWERED rcode=0", probe(plain, "tcp", ptcp[0], "cfw-bd-plain-c"), "plain network, tcp %d", ptcp[0])
	f.requireNoLeaks(t)
}

// TestHardeningBpfdnsNameAlphabet (issue 11, class 7): a query whose name
// holds bytes the rules cannot name (raw UTF-8, a space, a control byte, a
// dot inside a label) under an allowed wildcard is NXDOMAIN and never
// reaches the upstream; an ASCII name under the same wildcard resolves.
func TestHardeningBpfdnsNameAlphabet(t *testing.T) {
	f := pluginEnv(t)
	n := f.createNet(t, "cfw-bd-names", 172, "clawker.allow=."+harness.WildcardSuffix)
	const name = "cfw-bd-names-c"
	id := f.detached(t, "--network", n.Name, "--name", name, f.debian, "sleep", "600")
	f.resetLeaks(t)

	dig := func(args ...string) string {
		out, _ := f.exec(id, append([]string{"dig", "+noidnin", "+noidnout", "+time=3", "+tries=1"}, args...)...)
		return out
	}
	for _, q := range []string{
		"bücher." + harness.WildcardSuffix,   // raw UTF-8 (dig sends the bytes with +noidnin)
		`a\032b.` + harness.WildcardSuffix,   // a space
		`ctl\007.` + harness.WildcardSuffix,  // a control byte
		`x\.y.` + harness.WildcardSuffix,     // a dot inside a label
		`\195\188.` + harness.WildcardSuffix, // escaped UTF-8
	} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			out := dig(proto, q)
			require.Contains(t, out, "status: NXDOMAIN", "%s %s:\n%s", proto, q, out)
		}
	}
	log, err := f.e.FakenetLog()
	require.NoError(t, err)
	for _, en := range log {
		if en.Kind == fakenet.KindDNS {
			require.NotContains(t, en.Name, harness.WildcardSuffix, "the upstream saw a refused name: %+v", en)
		}
	}
	var lines string
	require.Eventually(t, func() bool {
		lines, _ = f.admin("denials")
		for _, l := range strings.Split(lines, "\n") {
			// The denial names the container, the name and the reason,
			// and suggests no rule (none can name it).
			if strings.Contains(l, name) && strings.Contains(l, "bad-name") && strings.Contains(l, `b\195\188cher.`+harness.WildcardSuffix) &&
				strings.Contains(l, "xn--") && !strings.Contains(l, "clawker.allow=") {
				t.Logf("denial: %s", l)
				return true
			}
		}
		return false
	}, 10*time.Second, 200*time.Millisecond, "no bad-name denial:\n%s", lines)

	// Control: the rule alphabet (any case, '-', '_') under the same
	// wildcard resolves, through the upstream.
	for _, q := range []string{"x-1." + harness.WildcardSuffix, "Mixed_Case." + strings.ToUpper(harness.WildcardSuffix)} {
		out := dig("+short", q)
		require.Equal(t, "10.220.0.19", strings.TrimSpace(out), q)
	}
	log, err = f.e.FakenetLog()
	require.NoError(t, err)
	seen := false
	for _, en := range log {
		if en.Kind == fakenet.KindDNS && en.Name == "x-1."+harness.WildcardSuffix {
			seen = true
		}
	}
	require.True(t, seen, "the control query reached the upstream")
	// ... and its answer is learned: the connection goes through.
	out, err := f.exec(id, "curl", "-sS", "--max-time", "10", "https://x-1."+harness.WildcardSuffix+"/alphabet")
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/alphabet")
	f.requireNoLeaks(t)
}

// evictedTotal reads coredns_clawker_learned_evicted_total from the DNS
// sidecar's metrics (the plugin runs in the host's network namespace).
func evictedTotal(t *testing.T) float64 {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "--max-time", "5", "http://"+dns.DefaultMetricsAddr+"/metrics").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "coredns_clawker_learned_evicted_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err, l)
			return f
		}
	}
	return 0
}

// TestHardeningBpfdnsLearnedQuota (issue 11, class 8): container A
// resolving more distinct addresses than its learned-map quota makes room
// among its own entries only: its oldest answer is denied at connect, its
// newest connects, the eviction is counted, and container B's entry,
// learned before, still routes without a new query.
func TestHardeningBpfdnsLearnedQuota(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	spread := fakenet.SpreadLabel + ".example.test"
	n := f.createNet(t, "cfw-bd-quota", 173, "clawker.allow="+harness.AllowedHost+",."+spread)
	b := f.detached(t, "--network", n.Name, "--name", "cfw-bd-quota-b", f.debian, "sleep", "600")
	a := f.detached(t, "--network", n.Name, "--name", "cfw-bd-quota-a", f.debian, "sleep", "600")
	out, err := f.exec(b, "curl", "-sS", "--max-time", "10", "https://"+harness.AllowedHost+"/before")
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/before")

	before := evictedTotal(t)
	total := bpf.LearnedPerEndpoint + 300
	flood := fmt.Sprintf(`
import socket, time
t = time.time()
for k in range(%d):
    socket.gethostbyname("n%%d.%s" %% k)
print("resolved in %%.1fs" %% (time.time() - t))
def connect(ip):
    try:
        socket.create_connection((ip, 443), timeout=3).close(); return "connected"
    except OSError as e:
        return "errno %%d %%s" %% (e.errno, e.strerror)
print("oldest", connect("198.18.0.0"))
print("newest", connect(socket.inet_ntoa(bytes([198, 18, %d >> 8, %d & 255]))))
`, total, spread, total-1, total-1)
	start := time.Now()
	out, err = f.exec(a, "python3", "-c", flood)
	t.Logf("A resolved %d names under .%s (%s):\n%s", total, spread, time.Since(start).Round(time.Millisecond), out)
	require.NoError(t, err, out)
	require.Contains(t, out, "oldest errno 1 Operation not permitted", "A's oldest answer made room")
	require.Contains(t, out, "newest connected", "A's newest answer is learned (steered to the proxy)")
	evicted := evictedTotal(t) - before
	t.Logf("evicted (coredns_clawker_learned_evicted_total): %.0f", evicted)
	require.GreaterOrEqual(t, evicted, float64(bpf.LearnedPerEndpoint/16), "evictions counted")
	if strings.Contains(f.dockerdLog(t), "full: evicted its") {
		t.Log("the DNS sidecar logged the learned map's eviction")
	}

	// B's entry survived A's flood: it connects without asking DNS again.
	out, err = f.exec(b, "curl", "-sS", "--max-time", "10", "--resolve", harness.AllowedHost+":443:"+allowedIP, "https://"+harness.AllowedHost+"/after")
	require.NoError(t, err, out)
	require.Contains(t, out, "path=/after")
	f.requireNoLeaks(t)
}
