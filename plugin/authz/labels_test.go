package authz

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/stretchr/testify/require"
)

// Clawker labels on a container that joins no clawker-fw network protect
// nothing: refused, with the admin override still letting admins through.
func TestClawkerLabelsOffFirewallRefused(t *testing.T) {
	labels := func(network string, l map[string]string) any {
		return create(network, func(m map[string]any) { m["Labels"] = l })
	}
	allow := map[string]string{"clawker.allow": "x.example.test"}
	for _, tc := range []struct {
		name  string
		body  any
		allow bool
		msg   []string
	}{
		{"host", labels("host", allow), false, []string{"clawker.allow", "no clawker-fw network (network host)", "protect nothing", "--network <a clawker-fw network>"}},
		{"default bridge (no network mode)", labels("", allow), false, []string{"the default bridge", "protect nothing"}},
		{"default bridge (default)", labels("default", allow), false, []string{"the default bridge"}},
		{"default bridge (bridge)", labels("bridge", allow), false, []string{"the default bridge"}},
		{"none", labels("none", allow), false, []string{"network none"}},
		{"default bridge in EndpointsConfig (as the CLI sends it)", create("default", func(m map[string]any) {
			m["Labels"] = allow
			m["NetworkingConfig"] = map[string]any{"EndpointsConfig": map[string]any{"default": map[string]any{}}}
		}), false, []string{"(the default bridge)"}},
		{"plain user network", labels("plainnet", allow), false, []string{"network plainnet"}},
		{"plain network in EndpointsConfig", create("", func(m map[string]any) {
			m["Labels"] = allow
			m["NetworkingConfig"] = map[string]any{"EndpointsConfig": map[string]any{"plainnet": map[string]any{}}}
		}), false, []string{"network plainnet"}},
		{"deny label", labels("host", map[string]string{"clawker.deny": ".example.test"}), false, []string{"clawker.deny"}},
		{"rules label", labels("host", map[string]string{"clawker.rules": `[{"dst":"x.example.test"}]`}), false, []string{"clawker.rules"}},
		// A key in another case is refused as invalid wherever it is.
		{"key in another case", labels("host", map[string]string{"Clawker.Allow": "x.example.test"}), false, []string{"clawker keys are lowercase"}},
		{"deprecated top-level network mode", `{"Image":"busybox","Labels":{"clawker.allow":"x.example.test"},"NetworkMode":"host"}`, false, []string{"network host"}},
		{"another container's plain netns", labels("container:plain", allow), false, []string{"container:plain"}},
		// Controls.
		{"firewalled network", labels("agents", allow), true, nil},
		{"firewalled network by id prefix", labels(fwID[:12], allow), true, nil},
		{"firewalled container's netns", labels("container:agent", allow), true, nil},
		{"netns of a firewalled container not started yet (Compose)", labels("container:created-agent", allow), true, nil},
		{"no clawker labels on a plain network", labels("plainnet", map[string]string{"com.example.team": "x"}), true, nil},
		{"no labels on host", labels("host", nil), true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := call(t, testAuthz(false), "POST", "/v1.41/containers/create", tc.body)
			require.Equal(t, tc.allow, resp.Allow, resp.Msg)
			for _, m := range tc.msg {
				require.Contains(t, resp.Msg, m)
			}
		})
	}
	t.Run("override", func(t *testing.T) {
		require.True(t, call(t, testAuthz(true), "POST", "/v1.41/containers/create", labels("host", allow)).Allow)
	})
}

// The response phase of a container create records the clawker labels the
// request gave, by the id in the response, decoded as dockerd decodes the
// request.
func TestRecordsGivenLabels(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name     string
		uri      string
		status   int
		req      string
		resp     string
		recorded bool
		want     map[string]string
	}{
		{"create", "/v1.41/containers/create?name=a", 201, `{"Image":"x","Labels":{"clawker.allow":"a.test","other":"1"}}`, `{"Id":"` + id + `","Warnings":[]}`,
			true, map[string]string{"clawker.allow": "a.test"}},
		{"lowercase key (encoding/json folds case like dockerd)", "/containers/create", 201, `{"Image":"x","labels":{"clawker.allow":"b.test"}}`, `{"Id":"` + id + `"}`,
			true, map[string]string{"clawker.allow": "b.test"}},
		{"duplicate key: the last wins, as in dockerd", "/v1.41/containers/create", 201, `{"Labels":{"clawker.allow":"a.test"},"labels":{"clawker.allow":"c.test"}}`, `{"Id":"` + id + `"}`,
			true, map[string]string{"clawker.allow": "c.test"}},
		{"no labels: recorded as none given", "/v1.41/containers/create", 201, `{"Image":"x"}`, `{"Id":"` + id + `"}`,
			true, map[string]string{}},
		{"failed create", "/v1.41/containers/create", 409, `{"Labels":{"clawker.allow":"a.test"}}`, `{"message":"conflict"}`, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAuthz(false)
			req := authorization.Request{RequestMethod: "POST", RequestURI: tc.uri, ResponseStatusCode: tc.status,
				RequestBody: []byte(tc.req), ResponseBody: []byte(tc.resp)}
			raw, err := json.Marshal(req)
			require.NoError(t, err)
			require.True(t, a.AuthZRes(raw).(authorization.Response).Allow)
			got, recorded := a.cfg.Records.GivenLabels(id)
			require.Equal(t, tc.recorded, recorded)
			require.Equal(t, tc.want, got)
		})
	}
	t.Run("a record made without the create (firewalled at identification) says nothing of labels", func(t *testing.T) {
		r, err := OpenRecords(filepath.Join(t.TempDir(), "r.json"))
		require.NoError(t, err)
		require.NoError(t, r.MarkFirewalled(id, "identified"))
		_, recorded := r.GivenLabels(id)
		require.False(t, recorded)
		require.NoError(t, r.Created(id, HostConfigBody{}, nil, ""))
		got, recorded := r.GivenLabels(id)
		require.True(t, recorded)
		require.Equal(t, map[string]string{}, got, "created with none: an empty set, not unknown")
		// Durable: a new process reads the same.
		r2, err := OpenRecords(r.path)
		require.NoError(t, err)
		got, recorded = r2.GivenLabels(id)
		require.True(t, recorded)
		require.Equal(t, map[string]string{}, got)
	})
}
