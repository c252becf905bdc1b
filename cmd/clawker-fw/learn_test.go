package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

func learnReport(active bool) api.LearnReport {
	now := time.Now()
	return api.LearnReport{Container: "agent", ContainerID: strings.Repeat("ab", 32), Network: strings.Repeat("cd", 32),
		Started: now, Until: now.Add(time.Minute), Active: active,
		Flows: []api.LearnFlow{
			{Proto: "https", Name: "a.wild.example.test", Port: 443, Count: 3},
			{Proto: "http", Name: "path.example.test", Port: 80, Inspected: true, Method: "GET", PathPrefix: "/public/", Path: "/public/x", Count: 1},
		},
		Rules: api.LearnRules{
			Rules:     []json.RawMessage{json.RawMessage(`{"dst":"a.wild.example.test"}`), json.RawMessage(`{"dst":"path.example.test","proto":"http","paths":[{"path":"/public/","methods":["GET"]}]}`)},
			Allow:     []string{"a.wild.example.test"},
			PathRules: []json.RawMessage{json.RawMessage(`{"dst":"path.example.test","proto":"http","paths":[{"path":"/public/","methods":["GET"]}]}`)},
			Label:     []string{"--label", "clawker.allow=a.wild.example.test", "--label", `clawker.rules=[{"dst":"path.example.test","proto":"http","paths":[{"path":"/public/","methods":["GET"]}]}]`},
			Option:    []string{"-o", "clawker.allow=a.wild.example.test"},
		},
		Warnings: []string{"learn mode lets the agent write its own policy: review", "not seen while learning: UDP other than DNS"},
	}
}

// TestLearn: learn starts, waits for the end and prints and writes the
// proposal with its warnings; check replays the file and exits 1 when
// flows would be denied.
func TestLearn(t *testing.T) {
	var started api.LearnRequest
	var checked api.LearnCheckRequest
	var paths []string
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.RequestURI())
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/learn":
			require.NoError(t, json.NewDecoder(r.Body).Decode(&started))
			_ = json.NewEncoder(w).Encode(learnReport(true))
		case r.Method == http.MethodGet && r.URL.Path == "/v1/learn/agent":
			_ = json.NewEncoder(w).Encode(learnReport(false))
		case r.URL.Path == "/v1/learn/check":
			require.NoError(t, json.NewDecoder(r.Body).Decode(&checked))
			resp := api.LearnCheckResponse{Container: checked.Container, Checked: len(checked.Flows)}
			if len(checked.Rules) < 2 {
				resp.Denied = []api.LearnDenied{{Flow: checked.Flows[1], Reason: "no-rule"}}
			}
			_ = json.NewEncoder(w).Encode(resp)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	file := filepath.Join(t.TempDir(), "rules.json")
	code, out, errOut := cliRun("--socket", sock, "learn", "agent", "--for", "1m", "-o", file)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, api.LearnRequest{Container: "agent", For: "1m"}, started)
	require.Equal(t, []string{"POST /v1/learn", "GET /v1/learn/agent?wait=1"}, paths)
	for _, want := range []string{
		"learning agent until", "WARNING: learn mode lets the agent write its own policy",
		"https   a.wild.example.test:443", "GET /public/", "WARNING: not seen while learning: UDP other than DNS",
		"REVIEW BEFORE APPLYING",
		`docker run --label clawker.allow=a.wild.example.test --label 'clawker.rules=[{"dst":"path.example.test"`,
		"docker network create -d clawker-fw:latest -o clawker.allow=a.wild.example.test NETWORK",
		"learn check " + file + " agent",
	} {
		require.Contains(t, out, want)
	}
	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var saved api.LearnReport
	require.NoError(t, json.Unmarshal(raw, &saved))
	require.Len(t, saved.Flows, 2)

	code, out, errOut = cliRun("--socket", sock, "learn", "check", file, "agent")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "all 2 recorded flows are allowed")
	require.Equal(t, "agent", checked.Container)
	require.Len(t, checked.Rules, 2)

	// An edited file whose rules lost one: that flow is denied, exit 1.
	saved.Rules.Rules = saved.Rules.Rules[:1]
	raw, _ = json.Marshal(saved)
	require.NoError(t, os.WriteFile(file, raw, 0o600))
	code, out, errOut = cliRun("--socket", sock, "learn", "check", file, "agent")
	require.Equal(t, exitError, code)
	require.Contains(t, out, "http path.example.test:80 GET /public/x")
	require.Contains(t, errOut, "1 of 2 recorded flows would be denied")

	code, _, _ = cliRun("--socket", sock, "learn", "--help")
	require.Equal(t, exitOK, code)
	code, _, _ = cliRun("--socket", sock, "learn")
	require.Equal(t, exitUsage, code)
}

func TestShellJoin(t *testing.T) {
	require.Equal(t, `-o clawker.allow=a.example.com,tcp://db:5432 'clawker.rules=[{"dst":"x"}]' 'it'\''s'`,
		shellJoin([]string{"-o", "clawker.allow=a.example.com,tcp://db:5432", `clawker.rules=[{"dst":"x"}]`, "it's"}))
}
