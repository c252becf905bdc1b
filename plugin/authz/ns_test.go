package authz

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// createAndRecord sends a container create through AuthZReq and, when it is
// allowed, its 201 response through AuthZRes (which records it) and adds the
// container to the fake Docker, as dockerd would.
func createAndRecord(t *testing.T, a *Authz, d *fakeDocker, c Container, body map[string]any) authorization.Response {
	t.Helper()
	resp := call(t, a, "POST", "/v1.41/containers/create?name="+c.Name, body)
	if !resp.Allow {
		return resp
	}
	d.set(c)
	reqBody, err := json.Marshal(body)
	require.NoError(t, err)
	raw, err := json.Marshal(authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/containers/create?name=" + c.Name,
		RequestBody: reqBody, ResponseStatusCode: 201, ResponseBody: []byte(`{"Id":"` + c.ID + `","Warnings":[]}`)})
	require.NoError(t, err)
	out := a.AuthZRes(raw).(authorization.Response)
	require.True(t, out.Allow, out.Msg)
	return resp
}

func id(prefix string) string { return prefix + fwID[len(prefix):] }

func TestSharedNamespacesAtCreate(t *testing.T) {
	hc := func(network string, kv ...any) map[string]any {
		return create(network, func(m map[string]any) {
			for i := 0; i < len(kv); i += 2 {
				m["HostConfig"].(map[string]any)[kv[i].(string)] = kv[i+1]
			}
		})
	}
	for _, tc := range []struct {
		name string
		body map[string]any
		msg  string // "" = allowed
	}{
		{"escape caps in a created (not running) agent's netns", hc("container:created-agent", "CapAdd", []string{"NET_ADMIN"}), "NET_ADMIN is not allowed"},
		{"near-all caps by id prefix of a created agent", hc("container:ca11f0", "CapAdd", []string{"ALL"}), "--cap-add ALL is not allowed"},
		{"privileged by full id", hc("container:"+agent, "Privileged", true), "--privileged is not allowed"},
		{"through a sidecar of the agent", hc("container:sidecar", "Privileged", true), "--privileged is not allowed"},
		{"plain sidecar of a created agent", hc("container:created-agent"), ""},
		{"pid of the agent from a normal network", hc("bridge", "PidMode", "container:agent"), "is firewalled (on the clawker-fw network"},
		{"pid of the agent by id prefix", hc("plainnet", "PidMode", "container:c0ffeef0"), "--pid container:c0ffeef0 is not allowed"},
		{"pid of a created agent", hc("bridge", "PidMode", "container:created-agent"), "is not allowed"},
		{"pid of the agent's sidecar", hc("bridge", "PidMode", "container:sidecar"), "is not allowed"},
		{"firewalled container joins a plain one's pid", hc("agents", "PidMode", "container:plain"), "plain is not firewalled"},
		{"two firewalls", hc("agents", "PidMode", "container:agent2"), "different network namespaces"},
		{"same network, own netns", hc("agents", "PidMode", "container:agent"), "different network namespaces"},
		{"pid and netns of the agent", hc("container:agent", "PidMode", "container:agent"), ""},
		{"pid of the sidecar within the agent's netns", hc("container:agent", "PidMode", "container:sidecar"), ""},
		{"neither firewalled", hc("bridge", "PidMode", "container:plain"), ""},
		{"pid of a container that does not exist", hc("bridge", "PidMode", "container:nothere"), ""},
		{"pid host off the firewall", hc("bridge", "PidMode", "host"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := call(t, testAuthz(false), "POST", "/v1.41/containers/create", tc.body)
			if tc.msg == "" {
				require.True(t, resp.Allow, resp.Msg)
				return
			}
			require.False(t, resp.Allow)
			require.Contains(t, resp.Msg, tc.msg)
		})
	}

	// Docker cannot be asked: fail closed.
	a, d := testAuthzDocker(false)
	d.fail = errors.New("dockerd timed out")
	resp := call(t, a, "POST", "/v1.41/containers/create", hc("container:x"))
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "cannot resolve container")
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", hc("bridge")).Allow, "nothing to resolve")
}

func TestSharedNamespacesAtStart(t *testing.T) {
	a, d := testAuthzDocker(false)
	start := func(ref string) authorization.Response {
		return call(t, a, "POST", "/v1.41/containers/"+ref+"/start", nil)
	}

	// X is on a plain network when the sidecar is created: admitted.
	x := Container{ID: id("00aa"), Name: "x", NetworkMode: "bridge", Networks: map[string]string{"bridge": "b0b0"}}
	d.set(x)
	side := Container{ID: id("00bb"), Name: "side", NetworkMode: "container:x", Networks: map[string]string{}}
	require.True(t, createAndRecord(t, a, d, side, create("container:x", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["CapAdd"] = []string{"NET_ADMIN"}
	})).Allow)
	rec, ok := a.cfg.Records.Get(side.ID)
	require.True(t, ok)
	require.Equal(t, "container:"+x.ID, rec.HostConfig.NetworkMode, "recorded by id, as dockerd stores it")
	require.True(t, start("side").Allow)
	// X moves to the firewalled network (and is renamed): the sidecar's
	// start is refused.
	x.Name, x.NetworkMode, x.Networks = "renamed", "agents", map[string]string{"agents": ""}
	d.set(x)
	side.NetworkMode = "container:" + x.ID
	d.set(side)
	resp := start("side")
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "NET_ADMIN is not allowed")
	resp = start(side.ID[:6])
	require.False(t, resp.Allow, "by id prefix too")

	// A sidecar of a firewalled netns that authz never saw created.
	d.set(Container{ID: id("00cc"), Name: "unseen", NetworkMode: "container:" + agent})
	resp = start("unseen")
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "never checked")

	// PID: created while its target was elsewhere (or did not exist).
	dbg := Container{ID: id("00dd"), Name: "dbg", NetworkMode: "bridge", Networks: map[string]string{"bridge": "b0b0"}}
	require.True(t, createAndRecord(t, a, d, dbg, create("bridge", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["PidMode"] = "container:later"
	})).Allow)
	require.True(t, start("dbg").Allow, "the target does not exist: Docker refuses the start")
	d.set(Container{ID: id("00ee"), Name: "later", NetworkMode: "agents", Networks: map[string]string{"agents": fwID}})
	resp = start("dbg")
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "--pid container:later is not allowed")
	// Recorded by id when the target existed at create (as dockerd stores
	// it): the message shows the id short, with the name.
	dbg3 := Container{ID: id("00d3"), Name: "dbg3", NetworkMode: "bridge", Networks: map[string]string{"bridge": "b0b0"}}
	require.True(t, createAndRecord(t, a, d, dbg3, create("bridge", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["PidMode"] = "container:plain"
	})).Allow)
	resp = start("dbg3")
	require.True(t, resp.Allow, resp.Msg)
	pl, _, _ := d.container(nil, "plain")
	pl.Networks = map[string]string{"agents": ""}
	d.set(pl)
	resp = start("dbg3")
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "--pid container:"+pl.ID[:12]+" is not allowed: "+pl.ID[:12]+" (plain) is firewalled")
	pl.Networks = map[string]string{"bridge": "b0b0"}
	d.set(pl)

	// Control: a plain sidecar of the agent starts.
	ok2 := Container{ID: id("00ff"), Name: "ok", NetworkMode: "container:" + agent}
	require.True(t, createAndRecord(t, a, d, ok2, create("container:agent", nil)).Allow)
	require.True(t, start("ok").Allow)
	require.True(t, start("nothere").Allow, "Docker answers no such container")

	// Old API: refused for a firewalled container, whatever its record.
	resp = call(t, a, "POST", "/v1.23/containers/ok/start", nil)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "use a current Docker client")

	// exec --privileged in a sidecar of the agent's netns.
	resp = call(t, a, "POST", "/v1.41/containers/sidecar/exec", map[string]any{"Privileged": true})
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "exec --privileged is not allowed in container sidecar")
	require.True(t, call(t, a, "POST", "/v1.41/containers/plain/exec", map[string]any{"Privileged": true}).Allow)
}

func TestFirewalledForLife(t *testing.T) {
	a, d := testAuthzDocker(false)
	connect := func(network, ref string) authorization.Response {
		return call(t, a, "POST", "/v1.41/networks/"+network+"/connect", map[string]string{"Container": ref})
	}
	life := Container{ID: id("11aa"), Name: "life", NetworkMode: "agents", Networks: map[string]string{"agents": ""}}
	require.True(t, createAndRecord(t, a, d, life, create("agents", nil)).Allow)
	rec, _ := a.cfg.Records.Get(life.ID)
	require.Contains(t, rec.Firewalled, "agents")

	// Disconnected (stopped), then connected elsewhere: refused under every
	// spelling of the container.
	life.Networks = map[string]string{}
	d.set(life)
	for _, ref := range []string{"life", life.ID, life.ID[:12], life.ID[:5]} {
		for _, network := range []string{"bridge", "plainnet", "abcdef"} {
			resp := connect(network, ref)
			require.False(t, resp.Allow, "%s to %s", ref, network)
			require.Contains(t, resp.Msg, "cannot join another network")
			require.Contains(t, resp.Msg, "for its life")
		}
	}
	// Attached elsewhere while authz was off: its start is refused.
	life.Networks = map[string]string{"bridge": "b0b0"}
	d.set(life)
	resp := call(t, a, "POST", "/v1.41/containers/life/start", nil)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "firewalled for its life")
	// A container on a clawker-fw network and another one (connected while
	// authz was off), with no record at all: its start is refused too.
	d.set(Container{ID: id("11ee"), Name: "twonets", NetworkMode: "agents", Networks: map[string]string{"agents": fwID, "bridge": "b0b0"}})
	resp = call(t, a, "POST", "/v1.41/containers/twonets/start", nil)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "cannot start attached to the network bridge")
	// It may rejoin a clawker-fw network once it is on no other.
	life.Networks = map[string]string{}
	d.set(life)
	require.True(t, connect("agents", "life").Allow)
	require.True(t, call(t, a, "POST", "/v1.41/containers/life/start", nil).Allow)

	// The plugin marks containers it identifies.
	runner := Container{ID: id("11bb"), Name: "runner", NetworkMode: "bridge", Networks: map[string]string{}}
	d.set(runner)
	require.True(t, connect("plainnet", "runner").Allow)
	require.NoError(t, a.cfg.Records.MarkFirewalled(runner.ID, "identified"))
	require.False(t, connect("plainnet", "runner").Allow)

	// A container that shares a PID namespace with another network
	// namespace cannot join a firewall.
	target := Container{ID: id("11cc"), Name: "target", NetworkMode: "none", Networks: map[string]string{}}
	d.set(target)
	dbg := Container{ID: id("11dd"), Name: "dbg2", NetworkMode: "bridge", Networks: map[string]string{"bridge": "b0b0"}}
	require.True(t, createAndRecord(t, a, d, dbg, create("bridge", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["PidMode"] = "container:target"
	})).Allow)
	resp = connect("agents", "target")
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "shares a PID namespace")

	// Control: never firewalled, free to move.
	require.True(t, connect("plainnet", "plain").Allow)
	// The admin override lets it through.
	a.cfg.Override = true
	require.True(t, connect("bridge", "life").Allow)
}

func TestPluginIdentity(t *testing.T) {
	a, d := testAuthzDocker(false)
	d.plugins = map[string]string{selfID: "ho/clawker-fw:1.0", "07e407e4" + selfID[8:]: "other:latest", "5e1f0000" + selfID[8:]: "lib:latest"}
	for _, tc := range []struct {
		method, uri string
		allow       bool
	}{
		{"POST", "/v1.41/plugins/" + selfID + "/disable", false},
		{"POST", "/v1.41/plugins/" + selfID[:12] + "/disable?force=1", false},
		{"POST", "/v1.41/plugins/5e1f5/disable", false},
		{"POST", "/v1.41/plugins/ho/clawker-fw:1.0/disable", false},
		{"POST", "/v1.41/plugins/ho%2Fclawker-fw:1.0/disable", false},
		{"POST", "/v1.41/plugins/docker.io/ho/clawker-fw:1.0/disable", false},
		{"DELETE", "/v1.41/plugins/ho/clawker-fw:1.0?force=1", false},
		{"DELETE", "/v1.41/plugins/" + selfID[:7], false},
		{"POST", "/v1.41/plugins/" + selfID[:12] + "/set", false},
		{"POST", "/v1.41/plugins/ho/clawker-fw:1.0/upgrade?remote=x", false},
		{"POST", "/plugins/ho/clawker-fw:1.0/disable", false},
		// Another plugin, an ambiguous prefix, one that does not exist, and
		// harmless operations.
		{"POST", "/v1.41/plugins/other/disable", true},
		{"POST", "/v1.41/plugins/5e1f/disable", true},
		{"POST", "/v1.41/plugins/ho/clawker-fw/disable", true}, // ho/clawker-fw:latest: no such plugin
		{"POST", "/v1.41/plugins/clawker-fw:latest/disable", true},
		{"POST", "/v1.41/plugins/ho/clawker-fw:1.0/enable", true},
		{"POST", "/v1.41/plugins/ho/clawker-fw:1.0/push", true},
	} {
		resp := call(t, a, tc.method, tc.uri, nil)
		require.Equal(t, tc.allow, resp.Allow, "%s %s: %s", tc.method, tc.uri, resp.Msg)
		if !tc.allow {
			require.Contains(t, resp.Msg, "ho/clawker-fw:1.0")
			require.Contains(t, resp.Msg, "still has 2 network(s)")
		}
	}
	// Docker cannot be asked, or the plugin does not know its own id: fail
	// closed while networks exist.
	d.fail = errors.New("dockerd timed out")
	require.False(t, call(t, a, "POST", "/v1.41/plugins/other/disable", nil).Allow)
	d.fail = nil
	a.cfg.SelfID = ""
	resp := call(t, a, "POST", "/v1.41/plugins/other/disable", nil)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "cannot tell its own plugin id")
	// With no networks, anything goes.
	a.cfg.SelfID = selfID
	a.cfg.Snapshot = func() *policy.Snapshot { return nil }
	require.True(t, call(t, a, "POST", "/v1.41/plugins/"+selfID+"/disable", nil).Allow)
}

func TestRecordsDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authz-records.jsonl")
	r, err := OpenRecords(path)
	require.NoError(t, err)
	require.NoError(t, r.Created("aa", HostConfigBody{PidMode: "container:bb"}, nil, ""))
	require.NoError(t, r.MarkFirewalled("aa", "identified"))
	require.NoError(t, r.MarkFirewalled("cc", "identified"))
	// Appended, one line per change, readable at once by a new process.
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, 3, strings.Count(string(raw), "\n"))
	// A crash mid-append leaves a torn last line: it is skipped.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, _ = f.WriteString(`{"id":"dd","record":{"firew`)
	f.Close()
	r2, err := OpenRecords(path)
	require.NoError(t, err)
	rec, ok := r2.Get("aa")
	require.True(t, ok)
	require.Equal(t, "identified", rec.Firewalled)
	require.Equal(t, "container:bb", rec.HostConfig.PidMode)
	_, ok = r2.Get("dd")
	require.False(t, ok)
	require.Equal(t, 2, r2.Len())
	// Opening compacted the journal; pruning compacts it again.
	raw, _ = os.ReadFile(path)
	require.Equal(t, 2, strings.Count(string(raw), "\n"))
	n, err := r2.Prune(func(id string) bool { return id == "aa" }, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, r2.MarkFirewalled("ee", "x"))
	r3, err := OpenRecords(path)
	require.NoError(t, err)
	require.Equal(t, 2, r3.Len())
	_, ok = r3.Get("cc")
	require.False(t, ok, "pruned")
}
