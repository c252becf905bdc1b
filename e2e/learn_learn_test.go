package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// learnTraffic is what the agent does: TLS to two siblings under one
// parent and to a single name, plain HTTP with two request shapes, a raw
// TCP stream and a real ssh session. Each step prints a marker when it
// worked.
const learnTraffic = `
curl -sS --max-time 10 -o /dev/null -w 'tls1=%{http_code}\n' https://allowed.example.test/ln-1
curl -sS --max-time 10 -o /dev/null -w 'tls2=%{http_code}\n' https://a.wild.example.test/ln-2
curl -sS --max-time 10 -o /dev/null -w 'tls3=%{http_code}\n' https://b.wild.example.test/ln-3
curl -sS --max-time 10 -o /dev/null -w 'http1=%{http_code}\n' http://path.example.test/public/docs/a.txt
curl -sS --max-time 10 -o /dev/null -w 'http2=%{http_code}\n' -X POST -d x=1 http://path.example.test/api/v1/items/42
echo tcp-ok | timeout 10 bash -c 'exec 3<>/dev/tcp/tcp.example.test/5432; cat >&3; head -c 7 <&3' | sed 's/^/tcp=/'; echo
ssh -i /key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR root@ssh.example.test echo ssh=ok
`

// learnMarkers are what learnTraffic prints when every step worked.
var learnMarkers = []string{"tls1=200", "tls2=200", "tls3=200", "http1=200", "http2=200", "tcp=tcp-ok", "ssh=ok"}

// TestLearnLearnRulesCheckApply: learn → rules → check on a real
// container with real traffic to the fake internet, then the rules applied
// to a new container let the same flows pass with learn off, and nothing
// more (a path outside the learned prefixes, a name never used).
func TestLearnLearnRulesCheckApply(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-learn", 181)
	key := "-v=" + f.e.SSHKeyFile() + ":/key:ro"
	const agent = "cfw-learn-agent"
	f.detached(t, "--name", agent, "--network", n.Name, key, f.debian, "sleep", "600")

	// Enforced before learning: no rule, nothing passes.
	out, _ := f.exec(agent, "bash", "-c", learnTraffic)
	for _, m := range learnMarkers {
		require.NotContains(t, out, m, "reached before learning: %s", out)
	}

	out, err := f.admin("learn", agent, "--for", "5m", "-d")
	require.NoError(t, err, out)
	require.Contains(t, out, "learning "+agent+" until")
	require.Contains(t, out, "lets the agent write its own policy")
	st, err := f.admin("status")
	require.NoError(t, err, st)
	require.Contains(t, st, "LEARNING")

	// Learning: everything passes (as under bypass) and is recorded.
	f.requireTraffic(t, agent, "under learn mode")
	show, err := f.admin("learn", "show", agent)
	require.NoError(t, err, show)
	t.Logf("learn show:\n%s", show)

	file := filepath.Join(t.TempDir(), "agent-rules.json")
	out, err = f.admin("learn", "stop", agent, "-o", file)
	require.NoError(t, err, out)
	t.Logf("learn stop:\n%s", out)
	require.Contains(t, out, "WARNING: learn mode lets the agent write its own policy")
	require.Contains(t, out, "UDP other than DNS")
	require.Contains(t, out, "REVIEW BEFORE APPLYING")

	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var rep api.LearnReport
	require.NoError(t, json.Unmarshal(raw, &rep))
	require.False(t, rep.Active)
	require.ElementsMatch(t, []string{
		harness.AllowedHost, ".wild.example.test", "tcp://tcp.example.test:5432", "ssh://ssh.example.test",
	}, rep.Rules.Allow, "the proposal: %s", raw)
	require.Len(t, rep.Rules.PathRules, 1, "%s", raw)
	require.JSONEq(t, `{"dst":"path.example.test","proto":"http","paths":[{"path":"/api/v1/","methods":["POST"]},{"path":"/public/docs/","methods":["GET"]}]}`,
		string(rep.Rules.PathRules[0]))
	require.Equal(t, []string{"a.wild.example.test", "b.wild.example.test"}, rep.Rules.Wildcards[".wild.example.test"])
	require.Empty(t, rep.Rules.Unruled)

	// Learning ended: enforced again.
	st, err = f.admin("status")
	require.NoError(t, err, st)
	require.NotContains(t, st, "LEARNING")
	require.NotContains(t, st, "BYPASS")
	out, _ = f.exec(agent, "bash", "-c", learnTraffic)
	for _, m := range learnMarkers {
		require.NotContains(t, out, m, "reached after learning: %s", out)
	}

	// Check: the learned rules allow every recorded flow.
	out, err = f.admin("learn", "check", file, agent)
	require.NoError(t, err, out)
	require.Contains(t, out, "recorded flows are allowed")
	// Edited rules (tcp and the wildcard removed): exactly those flows
	// would be denied, exit 1.
	var kept []json.RawMessage
	for _, r := range rep.Rules.Rules {
		if !strings.Contains(string(r), "tcp.example.test") && !strings.Contains(string(r), "wild.example.test") {
			kept = append(kept, r)
		}
	}
	edited := rep
	edited.Rules.Rules = kept
	raw2, _ := json.Marshal(edited)
	file2 := filepath.Join(t.TempDir(), "edited.json")
	require.NoError(t, os.WriteFile(file2, raw2, 0o600))
	out, err = f.admin("learn", "check", file2, agent)
	require.Error(t, err, out)
	require.Contains(t, out, "tcp tcp.example.test:5432")
	require.Contains(t, out, "https a.wild.example.test:443")
	require.Contains(t, out, "https b.wild.example.test:443")
	require.NotContains(t, out, "allowed.example.test")
	require.Contains(t, out, "3 of")

	// Apply: a new container with the proposed labels, learn off, does
	// the same and gets through.
	args := []string{"--name", "cfw-learn-applied", "--network", n.Name, key}
	args = append(args, rep.Rules.Label...)
	args = append(args, f.debian, "sleep", "600")
	applied := f.detached(t, args...)
	f.requireTraffic(t, applied, "under the learned rules")
	// And nothing more: a path outside the learned prefixes, a name never
	// used.
	out, _ = f.exec(applied, "bash", "-c", `curl -sS --max-time 10 -o /dev/null -w 'priv=%{http_code}\n' http://path.example.test/private/x
curl -sS --max-time 5 -o /dev/null -w 'other=%{http_code}\n' https://alt.example.test/ || echo other=refused`)
	require.Contains(t, out, "priv=403", out)
	require.Contains(t, out, "other=refused", out)
	require.Empty(t, fakenetSaw(t, f.e, func(en fakenet.Entry) bool {
		return en.Kind == fakenet.KindHTTP && strings.HasPrefix(en.Path, "/private/")
	}))
	f.requireNoLeaks(t)
}

// TestLearnTLSAccessDenied: a container whose DNS allows a name but whose
// TLS server name the rules refuse gets a TLS access_denied alert, which
// curl and OpenSSL print, instead of a reset.
func TestLearnTLSAccessDenied(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	// allowed.example.test on 443; the ClientHello names denied.example.test.
	n := f.createNet(t, "cfw-learn-alert", 182, "clawker.allow="+harness.AllowedHost)
	// openssl resolves allowed.example.test (so its address is this
	// container's to reach on 443) and sends the denied name; curl then
	// dials that address with the denied name too.
	out, _ := f.run("--network", n.Name, f.debian, "bash", "-c",
		`echo | openssl s_client -connect allowed.example.test:443 -servername denied.example.test 2>&1 | grep -i alert
curl -sS --max-time 10 --resolve denied.example.test:443:`+allowedIP+` https://denied.example.test/ 2>&1; echo rc=$?`)
	t.Logf("%s", out)
	require.Contains(t, out, "alert access denied", out)
	require.Contains(t, out, "rc=35", "curl's SSL connect error, not a reset: %s", out)
	require.Empty(t, fakenetSaw(t, f.e, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindConn && en.Service == "https" }))
	f.requireNoLeaks(t)
}

// requireTraffic runs learnTraffic in container c until every step works
// (30 s at most: a fresh container's first flows may wait for its policy).
func (f *pluginFixture) requireTraffic(t *testing.T, c, when string) {
	t.Helper()
	var out string
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ = f.exec(c, "bash", "-c", learnTraffic)
		missing := 0
		for _, m := range learnMarkers {
			if !strings.Contains(out, m) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			st, _ := f.admin("status")
			den, _ := f.admin("denials")
			t.Fatalf("traffic %s: %d steps failed:\n%s\nstatus:\n%s\ndenials:\n%s", when, missing, out, st, den)
		}
		time.Sleep(time.Second)
	}
}

// TestLearnInspectedPaths: on a network that inspects TLS, learn mode
// terminates the container's TLS too, so HTTPS requests are recorded with
// their method and path prefix, and the proposal carries path rules that
// check and the proxy enforce.
func TestLearnInspectedPaths(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	n := f.createNet(t, "cfw-learn-insp", 183, "clawker.tls.inspect=all")
	const agent = "cfw-learn-insp-agent"
	f.detached(t, "--name", agent, "--network", n.Name, f.debian, "sleep", "600")
	// The plugin's CA, fetched before learning (the gateway serves it).
	out, err := f.exec(agent, "curl", "-sS", "--max-time", "10", "-o", "/tmp/pca.crt", "http://"+n.Gateway+"/ca.crt")
	require.NoError(t, err, out)
	traffic := `curl -sS --max-time 10 --cacert /tmp/pca.crt -o /dev/null -w 'get=%{http_code}\n' https://allowed.example.test/v1/users/7
curl -sS --max-time 10 --cacert /tmp/pca.crt -o /dev/null -w 'post=%{http_code}\n' -X POST -d x=1 https://allowed.example.test/v1/items/9`

	out, err = f.admin("learn", agent, "--for", "5m", "-d")
	require.NoError(t, err, out)
	var got string
	require.Eventually(t, func() bool {
		got, _ = f.exec(agent, "bash", "-c", traffic)
		return strings.Contains(got, "get=200") && strings.Contains(got, "post=200")
	}, 30*time.Second, time.Second)
	file := filepath.Join(t.TempDir(), "insp.json")
	out, err = f.admin("learn", "stop", agent, "-o", file)
	require.NoError(t, err, out)
	t.Logf("learn stop:\n%s", out)
	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var rep api.LearnReport
	require.NoError(t, json.Unmarshal(raw, &rep))
	require.Len(t, rep.Rules.Rules, 1, "%s", raw)
	require.JSONEq(t, `{"dst":"allowed.example.test","paths":[{"path":"/v1/items/","methods":["POST"]},{"path":"/v1/users/","methods":["GET"]}]}`,
		string(rep.Rules.Rules[0]))
	out, err = f.admin("learn", "check", file, agent)
	require.NoError(t, err, out)

	// Applied: the learned paths pass, another path is refused by the
	// proxy (403), with learn off.
	args := append([]string{"--name", "cfw-learn-insp-applied", "--network", n.Name}, rep.Rules.Label...)
	applied := f.detached(t, append(args, f.debian, "sleep", "600")...)
	out, err = f.exec(applied, "curl", "-sS", "--max-time", "10", "-o", "/tmp/pca.crt", "http://"+n.Gateway+"/ca.crt")
	require.NoError(t, err, out)
	require.Eventually(t, func() bool {
		got, _ = f.exec(applied, "bash", "-c", traffic+`
curl -sS --max-time 10 --cacert /tmp/pca.crt -o /dev/null -w 'other=%{http_code}\n' https://allowed.example.test/admin/x`)
		return strings.Contains(got, "get=200") && strings.Contains(got, "post=200") && strings.Contains(got, "other=403")
	}, 30*time.Second, time.Second)
	f.requireNoLeaks(t)
}
