package wire

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/stretchr/testify/require"
)

// fakeList serves GET /containers/json with the semantics of moby's list
// filters (daemon/list.go): "id" resolves a unique id prefix, "name" is a
// regular expression matched against each name with and without its slash.
func fakeList(t *testing.T, all []container.Summary) (*Docker, *int) {
	calls := new(int)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/containers/json") {
			http.NotFound(w, r)
			return
		}
		*calls++
		f, err := filters.FromJSON(r.URL.Query().Get("filters"))
		require.NoError(t, err)
		var out []container.Summary
		for _, c := range all {
			if ids := f.Get("id"); len(ids) > 0 {
				n := 0
				for _, o := range all {
					if strings.HasPrefix(o.ID, ids[0]) {
						n++
					}
				}
				if n != 1 || !strings.HasPrefix(c.ID, ids[0]) {
					continue
				}
			}
			if names := f.Get("name"); len(names) > 0 {
				re := regexp.MustCompile(names[0])
				ok := false
				for _, n := range c.Names {
					ok = ok || re.MatchString(n) || re.MatchString(strings.TrimPrefix(n, "/"))
				}
				if !ok {
					continue
				}
			}
			out = append(out, c)
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	c, err := client.NewClientWithOpts(client.WithHost("tcp://"+strings.TrimPrefix(srv.URL, "http://")), client.WithVersion("1.41"))
	require.NoError(t, err)
	return &Docker{C: c}, calls
}

func TestResolveContainerInDockersOrder(t *testing.T) {
	id := func(p string) string { return p + strings.Repeat("0", 64-len(p)) }
	mk := func(i, name, mode string) container.Summary {
		c := container.Summary{ID: i, Names: []string{"/" + name}}
		c.HostConfig.NetworkMode = mode
		return c
	}
	all := []container.Summary{
		mk(id("abc1"), "agent", "agents"),
		mk(id("abc2"), "other", "bridge"),
		mk(id("def"), "abc1", "bridge"), // a name that is another container's id prefix
		mk(id("fed"), "side", "container:"+id("abc1")),
		mk(id("0a"), "a.b", "bridge"),
	}
	all[0].NetworkSettings = &container.NetworkSettingsSummary{}
	d, calls := fakeList(t, all)
	for _, tc := range []struct {
		ref, want string
		lists     int
	}{
		{id("abc1"), id("abc1"), 1}, // full id
		{"agent", id("abc1"), 1},    // name
		{"/agent", "", 1},           // (authz strips the slash first)
		{"abc1", id("def"), 1},      // a name wins over an id prefix
		{"abc2", id("abc2"), 2},     // unique prefix
		{"abc", "", 2},              // ambiguous prefix: Docker refuses it
		{"fe", id("fed"), 2},
		{"a.b", id("0a"), 1},
		{"a-b", "", 1}, // "." is quoted: no regexp match of a-b
		{"nothere", "", 1},
	} {
		*calls = 0
		c, found, err := d.ResolveContainer(t.Context(), tc.ref)
		require.NoError(t, err, tc.ref)
		require.Equal(t, tc.want != "", found, tc.ref)
		require.Equal(t, tc.want, c.ID, tc.ref)
		require.Equal(t, tc.lists, *calls, "list calls for %s", tc.ref)
	}
	c, _, _ := d.ResolveContainer(t.Context(), "side")
	require.Equal(t, "container:"+id("abc1"), c.NetworkMode)
	require.Equal(t, "side", c.Name)
}
