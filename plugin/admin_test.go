package plugin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

func TestAdminAPI(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := httptest.NewServer(AdminHandler(r.p, AdminHooks{Engine: "builtin",
		Components: func() []Component { return []Component{{Name: "dns", Healthy: false}} },
		CACertPEM:  func() []byte { return []byte("PEM") }}, logrus.NewEntry(l)))
	defer srv.Close()
	do := func(method, path, body string) (int, map[string]any) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	code, out := do("POST", "/v1/networks/"+netA[:8]+"/rules", `{"rules":["exa mple"]}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, ReasonInvalidRule, out["reason"])
	require.Equal(t, ErrorDomain, out["domain"])
	code, out = do("POST", "/v1/networks/nope/rules", `{"rules":["a.example.test"]}`)
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, ReasonNetworkNotFound, out["reason"])
	code, _ = do("POST", "/v1/networks/"+netA[:8]+"/rules", `{"rules":["a.example.test"]}`)
	require.Equal(t, http.StatusOK, code)
	code, out = do("GET", "/v1/networks/"+netA[:8]+"/rules", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, []any{"a.example.test"}, out["rules"])
	code, out = do("DELETE", "/v1/networks/"+netA[:8]+"/rules", `{"rules":["b.example.test"]}`)
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, ReasonRuleNotFound, out["reason"])
	code, out = do("POST", "/v1/bypass", `{"container":"x","for":"forever"}`)
	require.Equal(t, http.StatusBadRequest, code)
	require.Equal(t, ReasonInvalidRequest, out["reason"])
	code, out = do("POST", "/v1/bypass", `{"container":"ghost","for":"5s"}`)
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, ReasonContainerGone, out["reason"])
	code, out = do("POST", "/v1/bypass", `{"container":"x","for":"5s","extra":1}`)
	require.Equal(t, http.StatusBadRequest, code, "unknown fields are rejected")
	code, out = do("GET", "/v1/status", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, false, out["healthy"], "an unhealthy component makes the stack unhealthy")
	require.Len(t, out["networks"], 1)

	r.p.Denials.Add(Denial{Source: "dns", Destination: "d.example.test", Reason: "no-rule"})
	resp, err := http.Get(srv.URL + "/v1/denials")
	require.NoError(t, err)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(raw), "d.example.test")

	r.p.Close()
	code, out = do("POST", "/v1/networks/"+netA[:8]+"/rules", `{"rules":["c.example.test"]}`)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, ReasonNotRunning, out["reason"])
}
