package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"testing"

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

func TestRemediationDispatchesOnReason(t *testing.T) {
	for reason, fix := range remediation {
		t.Run(reason, func(t *testing.T) {
			sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadRequest)
				// The message deliberately says nothing useful: the CLI must use the reason.
				_ = json.NewEncoder(w).Encode(api.APIError{Message: "opaque", Reason: reason, Layer: api.LayerRejected, Domain: api.ErrorDomain})
			})
			var out, errb bytes.Buffer
			code := run([]string{"--socket", sock, "rules", "add", "net1", "x.example.test"}, &out, &errb)
			require.Equal(t, 1, code)
			require.Contains(t, errb.String(), fix)
		})
	}
}

func TestNotRunning(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "status"}, &out, &errb)
	require.Equal(t, 1, code)
	require.Contains(t, errb.String(), remediation[api.ReasonNotRunning])
}

func TestRulesAddSendsItems(t *testing.T) {
	var got struct{ Rules []string }
	var path, method string
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		path, method = r.URL.Path, r.Method
		require.NoError(t, json.NewDecoder(r.Body).Decode(&got))
		_ = json.NewEncoder(w).Encode(map[string]any{"rules": got.Rules})
	})
	var out, errb bytes.Buffer
	require.Equal(t, 0, run([]string{"--socket", sock, "rules", "add", "abcd", "a.example.test", "tcp://db.example.test:5432"}, &out, &errb), errb.String())
	require.Equal(t, "/v1/networks/abcd/rules", path)
	require.Equal(t, http.MethodPost, method)
	require.Equal(t, []string{"a.example.test", "tcp://db.example.test:5432"}, got.Rules)
}

func TestStatusRendering(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(api.StatusReport{Running: true, Healthy: false, Engine: "builtin", Generation: 9,
			Components: []api.Component{{Name: "dns", Healthy: false, Detail: "connection refused", Restarts: 2}},
			Networks: []api.NetworkStatus{{ID: "0123456789abcdef", Bridge: "cfw-0123456789a", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1",
				Endpoints: []api.EPInfo{{Index: 1, IP: "10.0.0.2", Container: "agent", LabelError: "clawker.allow: bad"},
					{Index: 2, IP: "10.0.0.3", Container: "big", Failures: []string{"rule label clawker.allow=tcp://db:1-300 (tcp 1-300) has no listener: invalid-range: x"}}}}}})
	})
	var out, errb bytes.Buffer
	require.Equal(t, 0, run([]string{"--socket", sock, "status"}, &out, &errb))
	require.Contains(t, out.String(), "UNHEALTHY")
	require.Contains(t, out.String(), "dns        UNHEALTHY (restarts 2) connection refused")
	require.Contains(t, out.String(), "NO EGRESS: clawker.allow: bad")
	require.Contains(t, out.String(), "    NOT APPLIED: rule label clawker.allow=tcp://db:1-300")
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 2, run([]string{"frobnicate"}, &out, &errb))
	require.Contains(t, errb.String(), "unknown command")
	require.Equal(t, 2, run(nil, &out, &errb))
}

func TestDenialsRendering(t *testing.T) {
	sock := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/denials", r.URL.Path)
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"time":"2026-11-28T12:00:31.770740085Z","source":"dns","index":1,"container":"agent","destination":"denied.example.test","reason":"no-rule (A query answered NXDOMAIN)","fix":"allow it with the container label clawker.allow=denied.example.test"}
{"time":"2026-11-28T12:00:32Z","source":"bpf","index":1,"container":"agent","destination":"10.220.0.11","port":80,"reason":"no rule"}
`))
	})
	var out, errb bytes.Buffer
	require.Equal(t, 0, run([]string{"--socket", sock, "denials"}, &out, &errb), errb.String())
	require.Contains(t, out.String(), "dns   agent -> denied.example.test: no-rule (A query answered NXDOMAIN); allow it with the container label clawker.allow=denied.example.test")
	require.Contains(t, out.String(), "bpf   agent -> 10.220.0.11:80: no rule")
}
