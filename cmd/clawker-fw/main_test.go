package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// fakeAdmin serves canned admin API answers on a unix socket: the CLI's
// behaviour (requests, output, remediation by reason) is what is tested.
func fakeAdmin(t *testing.T, h http.HandlerFunc) string {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// cliRun runs the CLI and returns its exit code and outputs.
func cliRun(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRemediationDispatchesOnReason(t *testing.T) {
	for reason, fix := range remediation {
		t.Run(reason, func(t *testing.T) {
			sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadRequest)
				// The message deliberately says nothing useful: the CLI must use the reason.
				_ = json.NewEncoder(w).Encode(api.APIError{Message: "opaque", Reason: reason, Layer: api.LayerRejected, Domain: api.ErrorDomain})
			})
			code, _, errOut := cliRun("--socket", sock, "rules", "add", "net1", "x.example.test")
			require.Equal(t, exitError, code)
			require.Contains(t, errOut, fix)
		})
	}
}

func TestNotRunning(t *testing.T) {
	code, _, errOut := cliRun("--socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	require.Equal(t, exitError, code)
	require.Contains(t, errOut, remediation[api.ReasonNotRunning])
}

func TestRulesAddSendsItems(t *testing.T) {
	var got struct{ Rules []string }
	var path, method string
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		path, method = r.URL.Path, r.Method
		require.NoError(t, json.NewDecoder(r.Body).Decode(&got))
		_ = json.NewEncoder(w).Encode(map[string]any{"rules": got.Rules})
	})
	code, out, errOut := cliRun("--socket", sock, "rules", "add", "agents", "a.example.test", "tcp://db.example.test:5432")
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, "/v1/networks/agents/rules", path, "the network reference is sent as given: the plugin resolves names")
	require.Equal(t, http.MethodPost, method)
	require.Equal(t, []string{"a.example.test", "tcp://db.example.test:5432"}, got.Rules)
	require.Equal(t, "added: a.example.test, tcp://db.example.test:5432\n", out)

	code, out, errOut = cliRun("rules", "remove", "agents", "a.example.test", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, http.MethodDelete, method)
	require.Equal(t, "removed: a.example.test\n", out)
}

// TestFlagsAfterTheCommand: a global flag after the command and a
// command's flags anywhere among its arguments are read, never ignored.
func TestFlagsAfterTheCommand(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(api.StatusReport{Running: true, Healthy: true, Engine: "builtin", Generation: 3})
	})
	code, out, errOut := cliRun("status", "--socket", sock, "--json")
	require.Equal(t, exitOK, code, errOut)
	var st api.StatusReport
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.EqualValues(t, 3, st.Generation)

	code, out, errOut = cliRun("status", "--format", "json", "--socket="+sock)
	require.Equal(t, exitOK, code, errOut)
	require.True(t, json.Valid([]byte(out)), out)

	// The socket comes from the environment when no flag names it.
	t.Setenv("CLAWKER_ADMIN_SOCKET", sock)
	code, out, _ = cliRun("status", "--format", "{{.Engine}} {{.Generation}}")
	require.Equal(t, exitOK, code)
	require.Equal(t, "builtin 3\n", out)
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"}, {"status", "--help"}, {"rules", "--help"}, {"rules", "add", "--help"},
		{"denials", "-h"}, {"explain", "--help"}, {"bypass", "--help"}, {"help", "denials"}, {"version", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := cliRun(args...)
			require.Equal(t, exitOK, code, errOut)
			require.Contains(t, out, "Usage:")
			require.Empty(t, errOut)
		})
	}
	// Help is per command.
	_, out, _ := cliRun("denials", "--help")
	require.Contains(t, out, "--since")
	require.Contains(t, out, "--container")
	require.NotContains(t, out, "--method")
	_, out, _ = cliRun("explain", "--help")
	require.Contains(t, out, "explain CONTAINER DESTINATION")
	require.Contains(t, out, "tcp://db:5432")
}

// TestUsageErrors: a wrong command line exits 2 with the error, the
// command's usage and where its help is; nothing is called.
func TestUsageErrors(t *testing.T) {
	called := false
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) { called = true })
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate"`, "See 'clawker-fw --help'."}},
		{[]string{"status", "--frob"}, []string{"unknown flag: --frob", "Usage:  clawker-fw status [flags]", "See 'clawker-fw status --help'."}},
		{[]string{"status", "extra"}, []string{`unknown command "extra"`}},
		{[]string{"denials", "-x"}, []string{"unknown shorthand flag: 'x'", "See 'clawker-fw denials --help'."}},
		{[]string{"rules"}, []string{"rules needs a subcommand"}},
		{[]string{"rules", "frob", "n"}, []string{`unknown rules subcommand "frob"`}},
		{[]string{"rules", "add", "n"}, []string{"requires at least 2 arg(s)", "Usage:  clawker-fw rules add NETWORK RULE..."}},
		{[]string{"rules", "ls"}, []string{"accepts 1 arg(s)"}},
		{[]string{"explain", "c"}, []string{"accepts 2 arg(s)", "explain CONTAINER DESTINATION"}},
		{[]string{"bypass"}, []string{"accepts 1 arg(s)"}},
		{[]string{"status", "--json", "--format", "{{.Engine}}"}, []string{"contradict"}},
		{[]string{"status", "--format", "{{.Engine"}, []string{"--format"}},
		{[]string{"denials", "--since", "yesterday"}, []string{"--since"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := cliRun(append(tc.args, "--socket", sock)...)
			want := exitUsage
			if tc.args[0] == "denials" && tc.args[1] == "--since" {
				want = exitError // read when the command runs
			}
			require.Equal(t, want, code, errOut)
			require.Empty(t, out)
			for _, w := range tc.want {
				require.Contains(t, errOut, w)
			}
		})
	}
	require.False(t, called, "no call for a wrong command line")
	code, _, errOut := cliRun()
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "Usage:")
}

func TestCompletion(t *testing.T) {
	code, out, errOut := cliRun("completion", "bash")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "__start_clawker-fw")
	// Dynamic completion of networks and containers asks the plugin.
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(api.StatusReport{Networks: []api.NetworkStatus{
			{ID: "0123456789abcdef", Name: "agents", Endpoints: []api.EPInfo{{Index: 1, Container: "agent-1"}, {Index: 2, Container: "web"}}},
			{ID: "fedcba9876543210"}}})
	})
	_, out, _ = cliRun("__complete", "--socket", sock, "rules", "ls", "")
	require.Contains(t, out, "agents\n")
	require.Contains(t, out, "fedcba9876543210\n")
	_, out, _ = cliRun("__complete", "--socket", sock, "explain", "ag")
	require.Contains(t, out, "agent-1\n")
	require.NotContains(t, out, "web")
}

func TestStatusRendering(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(api.StatusReport{Running: true, Healthy: false, Engine: "builtin", Generation: 9,
			Components: []api.Component{{Name: "dns", Healthy: false, Detail: "connection refused", Restarts: 2},
				{Name: "host-guard", Healthy: true, Detail: "intact"}},
			Networks: []api.NetworkStatus{{ID: "0123456789abcdef", Name: "agents", Bridge: "cfw-0123456789a", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1",
				Endpoints: []api.EPInfo{{Index: 1, IP: "10.0.0.2", Container: "agent", LabelError: "clawker.allow: bad"},
					{Index: 12, IP: "10.0.0.13", Container: "big", Enrolled: true, Failures: []string{"rule label clawker.allow=tcp://db:1-300 (tcp 1-300) has no listener: invalid-range: x"}},
					{Index: 3, IP: "10.0.0.4", Container: "c3", Enrolled: true, IgnoredLabels: []string{"clawker.allow=x (image)"}}}}},
			Listeners: []string{"web:443 15100", "dedicated:tcp:db:5432 15101"}})
	})
	code, out, errOut := cliRun("--socket", sock, "status")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "clawker-fw: running, UNHEALTHY, engine builtin, generation 9\n")
	// Components are aligned; what the e2e suite reads stays readable.
	require.Contains(t, out, "  dns          UNHEALTHY (restarts 2) connection refused\n")
	require.Contains(t, out, "  host-guard   healthy intact\n")
	require.Regexp(t, `(?m)^network 0123456789ab \(agents\) .* gateway 10\.0\.0\.1: 0 rules, 0 runtime rules$`, out)
	require.Contains(t, out, "NO EGRESS: clawker.allow: bad")
	require.Contains(t, out, "\n    NOT APPLIED: rule label clawker.allow=tcp://db:1-300")
	require.Contains(t, out, "\n    ignored label clawker.allow=x (image)\n")
	require.Contains(t, out, "  endpoint 1    10.0.0.2    agent:   0 label rules, NO EGRESS: clawker.allow: bad\n")
	require.Contains(t, out, "  endpoint 12   10.0.0.13   big:     0 label rules, enrolled\n    NOT APPLIED: rule")
	require.Contains(t, out, "  endpoint 3    10.0.0.4    c3:      0 label rules, enrolled\n    ignored label")
	require.Contains(t, out, "listeners: web:443 15100, dedicated:tcp:db:5432 15101\n")
}

func TestRulesLs(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/networks/agents/rules", r.URL.Path)
		_ = json.NewEncoder(w).Encode(api.RulesResponse{Network: "0123456789abcdef", Name: "agents",
			Rules: []string{"alt.example.test", "tcp://db.example.test:5432"}})
	})
	code, out, errOut := cliRun("rules", "ls", "agents", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, "RULE                         NETWORK\nalt.example.test             agents\ntcp://db.example.test:5432   agents\n", out)

	_, out, _ = cliRun("rules", "list", "agents", "--socket", sock, "--json")
	var body api.RulesResponse
	require.NoError(t, json.Unmarshal([]byte(out), &body))
	require.Equal(t, "agents", body.Name)
	require.Len(t, body.Rules, 2)

	_, out, _ = cliRun("rules", "ls", "agents", "--socket", sock, "--format", "{{.Name}}/{{.Rule}}")
	require.Equal(t, "agents/alt.example.test\nagents/tcp://db.example.test:5432\n", out)
}

const denialsBody = `{"time":"2026-11-28T12:00:31.770740085Z","source":"dns","index":1,"container":"agent","container_id":"aaaa","network":"0123456789abcdef","network_name":"agents","destination":"denied.example.test","reason":"no-rule (A query answered NXDOMAIN)","fix":"allow it with the container label clawker.allow=denied.example.test, the network option -o clawker.allow=denied.example.test, or ` + "`clawker-fw rules add agents denied.example.test`" + `"}
{"time":"2026-11-28T12:00:32Z","source":"bpf","index":1,"container":"agent","network":"0123456789abcdef","destination":"10.220.0.11","port":80,"reason":"no rule"}
not json
`

func TestDenialsRendering(t *testing.T) {
	// Times are shown in full, in local time.
	t1 := regexp.QuoteMeta(time.Date(2026, 11, 28, 12, 0, 31, 770740085, time.UTC).Local().Format(timeFormat))
	t2 := regexp.QuoteMeta(time.Date(2026, 11, 28, 12, 0, 32, 0, time.UTC).Local().Format(timeFormat))
	var query string
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/denials", r.URL.Path)
		query = r.URL.RawQuery
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(denialsBody))
	})
	code, out, errOut := cliRun("--socket", sock, "denials")
	require.Equal(t, exitOK, code, errOut)
	require.Empty(t, query)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 3, out)
	require.Regexp(t, `^TIME +SOURCE +CONTAINER +NETWORK +DESTINATION +REASON +FIX$`, lines[0])
	// Full timestamps, the network's name, aligned columns.
	require.Regexp(t, `^`+t1+` +dns +agent +agents +denied\.example\.test +no-rule \(A query answered NXDOMAIN\) +allow it with .*clawker-fw rules add agents denied\.example\.test`+"`$", lines[1])
	require.Regexp(t, `^`+t2+` +bpf +agent +0123456789ab +10\.220\.0\.11:80 +no rule +-$`, lines[2])
	col := func(l, s string) int { return strings.Index(l, s) }
	require.Equal(t, col(lines[0], "DESTINATION"), col(lines[1], "denied.example.test"))
	require.Equal(t, col(lines[0], "DESTINATION"), col(lines[2], "10.220.0.11"))

	// Filters go to the plugin, which resolves the references.
	code, out, errOut = cliRun("denials", "--container", "agent", "--network", "agents", "--since", "2026-11-28T12:00:32Z", "--json", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, "container=agent&network=agents&since=2026-11-28T12%3A00%3A32Z", query)
	jl := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, jl, 2, "one JSON denial per line")
	var d api.Denial
	require.NoError(t, json.Unmarshal([]byte(jl[0]), &d))
	require.Equal(t, "agents", d.NetworkName)

	_, out, _ = cliRun("denials", "-f", "--socket", sock, "--format", "{{.Source}} {{.Destination}}")
	require.Contains(t, query, "follow=1")
	require.Equal(t, "dns denied.example.test\nbpf 10.220.0.11\n", out)

	// Followed rows are printed as they come, in fixed columns.
	_, out, _ = cliRun("denials", "--follow", "--socket", sock)
	lines = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 3, out)
	require.Equal(t, col(lines[0], "DESTINATION"), col(lines[1], "denied.example.test"))
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"10m", now.Add(-10 * time.Minute)},
		{"1h30m", now.Add(-90 * time.Minute)},
		{"2026-12-06T09:00:00Z", time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)},
		{"2026-12-06T09:00:00.5+01:00", time.Date(2026, 12, 6, 8, 0, 0, 5e8, time.UTC)},
		{"1733475600", time.Unix(1733475600, 0)},
		{"1733475600.25", time.Unix(1733475600, 25e7)},
	} {
		got, err := parseSince(tc.in, now)
		require.NoError(t, err, tc.in)
		require.True(t, tc.want.Equal(got), "%s: %v, want %v", tc.in, got, tc.want)
	}
	got, err := parseSince("2026-12-06", now)
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 12, 6, 0, 0, 0, 0, time.Local), got, "a date without zone is local, as in Docker")
	for _, bad := range []string{"", "yesterday", "-5m", "10 minutes", "2026-13-01"} {
		_, err := parseSince(bad, now)
		require.Error(t, err, bad)
	}
}

func TestExplain(t *testing.T) {
	var got api.ExplainRequest
	answer := api.ExplainResponse{}
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/explain", r.URL.Path)
		require.Equal(t, http.MethodPost, r.Method)
		require.NoError(t, json.NewDecoder(r.Body).Decode(&got))
		_ = json.NewEncoder(w).Encode(answer)
	})
	answer = api.ExplainResponse{Container: "agent", ContainerID: "3f2a1b4c5d6e7f80", Network: "0123456789abcdef", NetworkName: "agents", Generation: 7,
		Flow:    api.ExplainFlow{Name: "api.example.test", Port: 443, Proto: "https", L4: "tcp", Path: "/v1/x", Method: "POST"},
		Allowed: false, Reason: "no-rule", Detail: "no rule allows api.example.test",
		Fix: &api.ExplainFix{Rule: "api.example.test", Label: "--label clawker.allow=api.example.test", Option: "-o clawker.allow=api.example.test",
			Command: "clawker-fw rules add agents api.example.test"}}
	code, out, errOut := cliRun("explain", "agent", "https://api.example.test/v1/x", "-X", "POST", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, api.ExplainRequest{Container: "agent", Destination: "https://api.example.test/v1/x", Method: "POST"}, got)
	want := `container     agent (3f2a1b4c5d6e) on network agents (0123456789ab), generation 7
destination   https api.example.test port 443/tcp, POST /v1/x
verdict       DENIED (no-rule)
why           no rule allows api.example.test
rule          none
to allow it   --label clawker.allow=api.example.test         (this container, at docker run)
              -o clawker.allow=api.example.test              (every container of the network, at docker network create)
              clawker-fw rules add agents api.example.test   (every container of the network, now)
`
	require.Equal(t, want, out)

	answer = api.ExplainResponse{Container: "agent", ContainerID: "3f2a1b4c5d6e7f80", Network: "0123456789abcdef", Generation: 8,
		Flow:    api.ExplainFlow{Name: "db.example.test", Port: 5432, Proto: "tcp", L4: "tcp"},
		Allowed: true, Reason: "allowed", Mode: "tcp", Detail: "allowed by tcp://db.example.test:5432",
		Rule:  &api.ExplainRule{Rule: "tcp://db.example.test:5432", Origin: api.OriginLabel, Key: "clawker.allow", Item: "tcp://db.example.test:5432"},
		Notes: []string{"the proxy refuses a name that resolves to a private address"}}
	code, out, errOut = cliRun("explain", "agent", "tcp://db.example.test:5432", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "verdict       ALLOWED (tcp)\n")
	require.Contains(t, out, `rule          tcp://db.example.test:5432 (label clawker.allow="tcp://db.example.test:5432")`)
	require.Contains(t, out, "on network 0123456789ab, generation 8")
	require.Contains(t, out, "note          the proxy refuses")

	_, out, _ = cliRun("explain", "agent", "tcp://db.example.test:5432", "--socket", sock, "--json")
	var ex api.ExplainResponse
	require.NoError(t, json.Unmarshal([]byte(out), &ex))
	require.Equal(t, answer, ex)
	_, out, _ = cliRun("explain", "agent", "x", "--socket", sock, "--format", "{{.Allowed}} {{.Rule.Origin}}")
	require.Equal(t, "true label\n", out)
}

func TestVersion(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/version", r.URL.Path)
		_ = json.NewEncoder(w).Encode(api.Version{Version: "v1.2.3", Commit: "abc", GoVersion: "go1.26", OS: "linux", Arch: "amd64", Engine: "builtin"})
	})
	code, out, errOut := cliRun("version", "--socket", sock)
	require.Equal(t, exitOK, code, errOut)
	require.Regexp(t, regexp.MustCompile(`(?s)^Client:\n Version: +\S+\n.* Go version: +go.*\nServer \(plugin\):\n Version: +v1\.2\.3\n Git commit: +abc\n.* Proxy engine: +builtin\n$`), out)

	// No plugin: the client's part, then the error (exit 1), like docker version.
	code, out, errOut = cliRun("version", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	require.Equal(t, exitError, code)
	require.Contains(t, out, "Client:")
	require.NotContains(t, out, "Server")
	require.Contains(t, errOut, remediation[api.ReasonNotRunning])
}

func TestBypass(t *testing.T) {
	var got api.BypassRequest
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.NoError(t, json.NewDecoder(r.Body).Decode(&got))
		_ = json.NewEncoder(w).Encode(api.BypassResponse{Container: got.Container, Until: time.Now().Add(time.Minute)})
	})
	for _, args := range [][]string{{"bypass", "agent", "--for", "5s"}, {"bypass", "--for", "5s", "agent"}, {"bypass", "--for=5s", "agent"}} {
		code, out, errOut := cliRun(append(args, "--socket", sock)...)
		require.Equal(t, exitOK, code, errOut)
		require.Equal(t, api.BypassRequest{Container: "agent", For: "5s"}, got)
		require.Contains(t, out, "bypass for agent until")
	}
}
