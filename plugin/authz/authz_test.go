package authz

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

const (
	fwID   = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
	fw2ID  = "f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2"
	selfID = "5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f5e1f"
	agent  = "c0ffee" + "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
)

// fakeDocker stands in for Docker's container, network and plugin lists
// (the API boundary): it resolves references in Docker's order.
type fakeDocker struct {
	containers []Container
	plugins    map[string]string // id -> name
	fail       error
}

func (d *fakeDocker) container(_ context.Context, ref string) (Container, bool, error) {
	if d.fail != nil {
		return Container{}, false, d.fail
	}
	for _, c := range d.containers {
		if c.ID == ref {
			return c, true, nil
		}
	}
	for _, c := range d.containers {
		if c.Name == ref {
			return c, true, nil
		}
	}
	var found []Container
	for _, c := range d.containers {
		if strings.HasPrefix(c.ID, ref) {
			found = append(found, c)
		}
	}
	if len(found) == 1 {
		return found[0], true, nil
	}
	return Container{}, false, nil
}

func (d *fakeDocker) set(c Container) {
	for i := range d.containers {
		if d.containers[i].ID == c.ID {
			d.containers[i] = c
			return
		}
	}
	d.containers = append(d.containers, c)
}

// plugin resolves as moby's plugin store does: full id, familiar name
// (docker.io/ and library/ dropped, :latest added), unique id prefix.
func (d *fakeDocker) plugin(_ context.Context, ref string) (string, string, bool, error) {
	if d.fail != nil {
		return "", "", false, d.fail
	}
	if name, ok := d.plugins[ref]; ok {
		return ref, name, true, nil
	}
	n := strings.TrimPrefix(strings.TrimPrefix(ref, "docker.io/"), "library/")
	if i := strings.LastIndex(n, "/"); !strings.Contains(n[i+1:], ":") {
		n += ":latest"
	}
	for id, name := range d.plugins {
		if name == n {
			return id, name, true, nil
		}
	}
	var hit []string
	for id := range d.plugins {
		if strings.HasPrefix(id, ref) {
			hit = append(hit, id)
		}
	}
	if len(hit) == 1 {
		return hit[0], d.plugins[hit[0]], true, nil
	}
	return "", "", false, nil
}

func newFakeDocker() *fakeDocker {
	return &fakeDocker{
		containers: []Container{
			{ID: agent, Name: "agent", NetworkMode: "agents", Networks: map[string]string{"agents": fwID}},
			{ID: "ca11" + fwID[4:], Name: "created-agent", NetworkMode: "agents", Networks: map[string]string{"agents": ""}},
			{ID: "91a1" + fwID[4:], Name: "plain", NetworkMode: "bridge", Networks: map[string]string{"bridge": "b0b0"}},
			{ID: "a2a2" + fwID[4:], Name: "agent2", NetworkMode: "agents2", Networks: map[string]string{"agents2": fw2ID}},
			{ID: "5c5c" + fwID[4:], Name: "sidecar", NetworkMode: "container:" + agent, Networks: map[string]string{}},
		},
		plugins: map[string]string{selfID: "clawker-fw:latest", "07e407e4" + selfID[8:]: "other:latest"},
	}
}

func testAuthz(override bool) *Authz {
	a, _ := testAuthzDocker(override)
	return a
}

func testAuthzDocker(override bool) (*Authz, *fakeDocker) {
	snap := (&policy.Snapshot{
		Networks: map[string]*policy.Network{fwID: {ID: fwID}, fw2ID: {ID: fw2ID}},
		Endpoints: map[uint32]*policy.Endpoint{
			1: {Index: 1, NetworkID: fwID, ContainerID: agent, ContainerName: "agent"},
			2: {Index: 2, NetworkID: fw2ID, ContainerID: "a2a2" + fwID[4:], ContainerName: "agent2"},
		},
	}).Index()
	l := logrus.New()
	l.SetOutput(io.Discard)
	d := newFakeDocker()
	recs, _ := OpenRecords("")
	return New(Config{
		Snapshot: func() *policy.Snapshot { return snap },
		Networks: func(context.Context) (map[string]string, error) {
			return map[string]string{"agents": fwID, "agents2": fw2ID, "plainnet": "abcdef", "bridge": "b0b0"}, nil
		},
		Container: d.container,
		Plugin:    d.plugin,
		SelfID:    selfID,
		Records:   recs,
		VolumeOptions: func(_ context.Context, name string) (map[string]string, bool, error) {
			switch name {
			case "sockvol": // docker volume create -o type=none -o o=bind -o device=/var/run
				return map[string]string{"type": "none", "o": "bind", "device": "/var/run"}, true, nil
			case "datavol":
				return map[string]string{}, true, nil
			case "brokenvol":
				return nil, false, errors.New("dockerd timed out")
			}
			return nil, false, nil
		},
		Override: override,
		Log:      logrus.NewEntry(l),
	}), d
}

func call(t *testing.T, a *Authz, method, uri string, body any) authorization.Response {
	t.Helper()
	req := authorization.Request{RequestMethod: method, RequestURI: uri}
	switch b := body.(type) {
	case nil:
	case string:
		req.RequestBody = []byte(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(t, err)
		req.RequestBody = raw
	}
	raw, err := json.Marshal(req)
	require.NoError(t, err)
	return a.AuthZReq(raw).(authorization.Response)
}

func create(network string, mut func(m map[string]any)) map[string]any {
	hc := map[string]any{"NetworkMode": network}
	m := map[string]any{"Image": "busybox", "HostConfig": hc}
	if mut != nil {
		mut(m)
	}
	return m
}

func TestAuthz(t *testing.T) {
	hc := func(k string, v any) func(map[string]any) {
		return func(m map[string]any) { m["HostConfig"].(map[string]any)[k] = v }
	}
	tests := []struct {
		name     string
		method   string
		uri      string
		body     any
		allow    bool
		msg      string
		override bool
	}{
		{"ps untouched", "GET", "/v1.41/containers/json", nil, true, "", false},
		{"plain run untouched", "POST", "/v1.41/containers/create?name=x", create("bridge", nil), true, "", false},
		{"firewalled run ok", "POST", "/v1.41/containers/create", create("agents", nil), true, "", false},
		{"by id ok", "POST", "/v1.41/containers/create", create(fwID, nil), true, "", false},
		{"bad label", "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) { m["Labels"] = map[string]string{"clawker.allow": "exa mple.com"} }), false, "clawker.allow", false},
		{"label over the port budget", "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) {
			m["Labels"] = map[string]string{"clawker.allow": "tcp://db.example.com:1000-1255,tcp://db.example.com:2000-2255"}
		}), false, "clawker.allow=tcp://db.example.com:2000-2255: the rules need 512 listener ports", false},
		{"label at the port budget", "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) {
			m["Labels"] = map[string]string{"clawker.allow": "tcp://db.example.com:1000-1255"}
		}), true, "", false},
		{"bad label on plain network too", "POST", "/v1.41/containers/create", create("bridge", func(m map[string]any) { m["Labels"] = map[string]string{"clawker.bogus": "x"} }), false, "clawker.bogus", false},
		{"privileged", "POST", "/v1.41/containers/create", create("agents", hc("Privileged", true)), false, "--privileged", false},
		{"cap net_admin", "POST", "/v1.41/containers/create", create("agents", hc("CapAdd", []string{"NET_ADMIN"})), false, "NET_ADMIN", false},
		{"cap CAP_SYS_ADMIN", "POST", "/v1.41/containers/create", create("agents", hc("CapAdd", []string{"cap_sys_admin"})), false, "cap_sys_admin", false},
		{"cap bpf", "POST", "/v1.41/containers/create", create("agents", hc("CapAdd", []string{"BPF"})), false, "BPF", false},
		{"harmless cap", "POST", "/v1.41/containers/create", create("agents", hc("CapAdd", []string{"CHOWN"})), true, "", false},
		{"docker socket bind", "POST", "/v1.41/containers/create", create("agents", hc("Binds", []string{"/var/run/docker.sock:/var/run/docker.sock"})), false, "Docker socket", false},
		{"run dir bind", "POST", "/v1.41/containers/create", create("agents", hc("Binds", []string{"/var/run:/host-run"})), false, "Docker socket", false},
		{"docker socket mount", "POST", "/v1.41/containers/create", create("agents", hc("Mounts", []map[string]string{{"Type": "bind", "Source": "/run/docker.sock", "Target": "/s"}})), false, "Docker socket", false},
		{"second network", "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) {
			m["NetworkingConfig"] = map[string]any{"EndpointsConfig": map[string]any{"agents": map[string]any{}, "bridge": map[string]any{}}}
		}), false, "cannot join other networks", false},
		{"connect firewalled container elsewhere", "POST", "/v1.41/networks/bridge/connect", map[string]string{"Container": "agent"}, false, "cannot join another network", false},
		{"connect created firewalled container elsewhere", "POST", "/v1.41/networks/bridge/connect", map[string]string{"Container": "created-agent"}, false, "cannot join another network", false},
		{"connect plain container to plain", "POST", "/v1.41/networks/other/connect", map[string]string{"Container": "plain"}, true, "", false},
		{"connect plain container to firewalled", "POST", "/v1.41/networks/agents/connect", map[string]string{"Container": "plain"}, false, "already on other networks", false},
		{"privileged exec", "POST", "/v1.41/containers/agent/exec", map[string]any{"Privileged": true, "Cmd": []string{"sh"}}, false, "--privileged", false},
		{"normal exec", "POST", "/v1.41/containers/agent/exec", map[string]any{"Cmd": []string{"sh"}}, true, "", false},
		{"disable firewall", "POST", "/v1.41/plugins/clawker-fw:latest/disable", nil, false, "network(s)", false},
		{"remove firewall", "DELETE", "/v1.41/plugins/clawker-fw:latest?force=1", nil, false, "network(s)", false},
		{"disable other plugin", "POST", "/v1.41/plugins/other/disable", nil, true, "", false},
		{"other spelling of create", "POST", "//v1.41/containers/./create/", create("agents", hc("Privileged", true)), false, "--privileged", false},
		{"escaped plugin name", "POST", "/v1.41/plugins/clawker-fw%3Alatest/disable", nil, false, "network(s)", false},
		{"privileged in a firewalled container's netns", "POST", "/v1.41/containers/create", create("container:agent", hc("Privileged", true)), false, "--privileged is not allowed", false},
		{"NET_ADMIN in a firewalled container's netns (id prefix)", "POST", "/v1.41/containers/create", create("container:c0ffeef0", hc("CapAdd", []string{"NET_ADMIN"})), false, "container:c0ffeef0", false},
		{"docker socket in a firewalled container's netns", "POST", "/v1.41/containers/create", create("container:agent", hc("Binds", []string{"/var/run/docker.sock:/s"})), false, "Docker socket", false},
		{"plain container's netns", "POST", "/v1.41/containers/create", create("container:plain", hc("Privileged", true)), true, "", false},
		{"plain container joins a firewalled one's netns", "POST", "/v1.41/containers/create", create("container:agent", nil), true, "", false},
		{"cap DAC_READ_SEARCH", "POST", "/v1.41/containers/create", create("agents", hc("CapAdd", []string{"DAC_READ_SEARCH"})), false, "DAC_READ_SEARCH is not allowed", false},
		{"systempaths unconfined", "POST", "/v1.41/containers/create", create("agents", hc("SecurityOpt", []string{"systempaths=unconfined"})), false, "unmasks /proc", false},
		{"unmasked paths (as the CLI sends systempaths=unconfined)", "POST", "/v1.41/containers/create", create("agents", hc("MaskedPaths", []string{})), false, "unmasks /proc", false},
		{"seccomp profile is fine", "POST", "/v1.41/containers/create", create("agents", hc("SecurityOpt", []string{"no-new-privileges"})), true, "", false},
		{"raw disk device", "POST", "/v1.41/containers/create", create("agents", hc("Devices", []map[string]string{{"PathOnHost": "/dev/vda", "PathInContainer": "/dev/vda", "CgroupPermissions": "rwm"}})), false, "--device /dev/vda is not allowed", false},
		{"fuse device is fine", "POST", "/v1.41/containers/create", create("agents", hc("Devices", []map[string]string{{"PathOnHost": "/dev/fuse"}})), true, "", false},
		{"block device cgroup rule", "POST", "/v1.41/containers/create", create("agents", hc("DeviceCgroupRules", []string{"b 8:* rwm"})), false, "--device-cgroup-rule", false},
		{"missing body", "POST", "/v1.41/containers/create", nil, false, "not forwarded", false},
		{"truncated body", "POST", "/v1.41/containers/create", `{"Image":"busybox","HostConfig":{"Privileged":tr`, false, "not valid JSON", false},
		{"override allows", "POST", "/v1.41/containers/create", create("agents", hc("Privileged", true)), true, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := call(t, testAuthz(tt.override), tt.method, tt.uri, tt.body)
			require.Equal(t, tt.allow, resp.Allow, resp.Msg)
			require.Contains(t, resp.Msg, tt.msg)
		})
	}
}

func TestLearnsNetworkNamesFromResponses(t *testing.T) {
	a := testAuthz(false)
	a.cfg.Networks = nil
	isFW := func(ref string) bool {
		fw, err := a.isFirewalled(ref)
		require.NoError(t, err)
		return fw
	}
	require.False(t, isFW("fresh"))
	learn := func(name, driver, id string) {
		req := authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/networks/create", ResponseStatusCode: 201,
			RequestBody: []byte(`{"Name":"` + name + `","Driver":"` + driver + `"}`), ResponseBody: []byte(`{"Id":"` + id + `"}`)}
		raw, _ := json.Marshal(req)
		require.True(t, a.AuthZRes(raw).(authorization.Response).Allow)
	}
	// Whatever the driver is called, the plugin's store decides: a network
	// whose id it holds is firewalled, one it does not hold is not, even
	// when its driver is named like the plugin.
	learn("fresh", "ho/clawker-fw:1.0", fw2ID)
	require.True(t, isFW("fresh"))
	learn("lookalike", "clawker-fw:latest", "abc123")
	require.False(t, isFW("lookalike"))
}

func TestNetworkReferences(t *testing.T) {
	priv := func(network string) any {
		return create(network, func(m map[string]any) { m["HostConfig"].(map[string]any)["Privileged"] = true })
	}
	a := testAuthz(false)
	for _, ref := range []string{fwID, fwID[:12], fwID[:3], "agents"} {
		resp := call(t, a, "POST", "/v1.41/containers/create", priv(ref))
		require.False(t, resp.Allow, "network reference %q must be recognized as clawker-fw", ref)
		require.Contains(t, resp.Msg, "--privileged")
	}
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", priv("plainnet")).Allow)

	// Docker's network list fails: a name the plugin cannot place is
	// refused (fail closed), a known clawker-fw id is still recognized,
	// and the built-in modes need no list.
	a = testAuthz(false)
	a.cfg.Networks = func(context.Context) (map[string]string, error) { return nil, errors.New("dockerd timed out") }
	resp := call(t, a, "POST", "/v1.41/containers/create", create("plainnet", nil))
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, `cannot tell whether network "plainnet" is a clawker-fw network`)
	require.Contains(t, resp.Msg, "dockerd timed out")
	resp = call(t, a, "POST", "/v1.41/containers/create", priv(fwID[:12]))
	require.Contains(t, resp.Msg, "--privileged")
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", create("none", nil)).Allow)
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", create("bridge", nil)).Allow)
}

func FuzzAuthZReq(f *testing.F) {
	f.Add("POST", "/v1.41/containers/create", `{"HostConfig":{"NetworkMode":"agents","Privileged":true}}`)
	f.Add("POST", "/v1.41/networks/agents/connect", `{"Container":"agent"}`)
	f.Add("DELETE", "/plugins/clawker-fw", ``)
	a := testAuthz(false)
	f.Fuzz(func(t *testing.T, method, uri, body string) {
		req := authorization.Request{RequestMethod: method, RequestURI: uri, RequestBody: []byte(body)}
		raw, _ := json.Marshal(req)
		resp := a.AuthZReq(raw).(authorization.Response)
		if !resp.Allow && resp.Msg == "" {
			t.Fatalf("denial without a message for %s %s", method, uri)
		}
	})
}

func TestStats(t *testing.T) {
	a := testAuthz(false)
	require.Contains(t, a.Stats().Summary(), "no calls yet")
	require.True(t, call(t, a, "GET", "/v1.41/containers/json", nil).Allow)
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", create("bridge", nil)).Allow)
	denied := call(t, a, "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["Privileged"] = true
	}))
	require.False(t, denied.Allow)
	st := a.Stats()
	require.Equal(t, Stats{Calls: 3, Inspected: 2, Denied: 1, LastDenial: denied.Msg}, st)
	require.Equal(t, "3 calls, 2 inspected, 1 denied; last denial: "+denied.Msg, st.Summary())
}

func benchReq(b *testing.B, method, uri string, body any) {
	a := testAuthz(false)
	req := authorization.Request{RequestMethod: method, RequestURI: uri,
		RequestHeaders: map[string]string{"User-Agent": "Docker-Client/20.10.24 (linux)", "Content-Type": "application/json"}}
	if body != nil {
		raw, err := json.Marshal(body)
		require.NoError(b, err)
		req.RequestBody = raw
	}
	raw, err := json.Marshal(req)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if !a.AuthZReq(raw).(authorization.Response).Allow {
			b.Fatal("denied")
		}
	}
}

func BenchmarkAuthZReqPS(b *testing.B) { benchReq(b, "GET", "/v1.41/containers/json", nil) }

func BenchmarkAuthZReqCreate(b *testing.B) {
	benchReq(b, "POST", "/v1.41/containers/create", create("agents", func(m map[string]any) {
		m["Labels"] = map[string]string{"clawker.allow": "https://api.example.com,example.org:443"}
		m["Cmd"] = []string{"sleep", "3600"}
	}))
}

func TestRoute(t *testing.T) {
	for uri, want := range map[string]string{
		"/v1.41/containers/create?name=x":     "/containers/create",
		"/v1/containers/json":                 "/containers/json",
		"/containers/create":                  "/containers/create",
		"/v1.41/plugins/clawker-fw%3Alatest":  "/plugins/clawker-fw:latest",
		"/v1.41":                              "",
		"/vx/containers/json":                 "/vx/containers/json",
		"/v1.41x/containers/json":             "/v1.41x/containers/json",
		"/v1.41/networks/abc/connect?force=1": "/networks/abc/connect",
	} {
		require.Equal(t, want, route(uri), uri)
	}
}

func TestMountChecks(t *testing.T) {
	a := testAuthz(false)
	withHC := func(k string, v any) any {
		return create("agents", func(m map[string]any) { m["HostConfig"].(map[string]any)[k] = v })
	}
	for _, tc := range []struct {
		name string
		body any
		msg  string // "" = allowed
	}{
		{"plain bind", withHC("Binds", []string{"/home/u/src:/src"}), ""},
		{"plain named volume", withHC("Binds", []string{"datavol:/data"}), ""},
		{"new named volume", withHC("Binds", []string{"newvol:/data"}), ""},
		{"plugin sockets", withHC("Binds", []string{"/run/docker/plugins:/p"}), "/run/docker/plugins"},
		{"containerd socket", withHC("Binds", []string{"/run/containerd/containerd.sock:/c.sock"}), "containerd"},
		{"bpf pins", withHC("Binds", []string{"/sys/fs/bpf:/bpf:ro"}), "/sys/fs/bpf"},
		{"firewall state", withHC("Binds", []string{"/var/lib/clawker-fw:/s"}), "/var/lib/clawker-fw"},
		{"docker data root", withHC("Binds", []string{"/var/lib/docker/plugins:/x"}), "/var/lib/docker"},
		{"host root", withHC("Binds", []string{"/:/host"}), "remove the mount"},
		{"unclean path", withHC("Binds", []string{"/var//run/./docker.sock:/d"}), "Docker socket"},
		{"named volume binding /var/run", withHC("Binds", []string{"sockvol:/x"}), "volume sockvol binds /var/run"},
		{"volume that cannot be checked", withHC("Binds", []string{"brokenvol:/x"}), "cannot check volume brokenvol"},
		{"--mount volume binding a control path", withHC("Mounts", []map[string]any{{"Type": "volume", "Target": "/x",
			"VolumeOptions": map[string]any{"DriverConfig": map[string]any{"Name": "local",
				"Options": map[string]string{"type": "none", "o": "bind", "device": "/run/docker"}}}}}), "a volume binding /run/docker"},
		{"--mount existing volume binding /var/run", withHC("Mounts", []map[string]any{{"Type": "volume", "Source": "sockvol", "Target": "/x"}}), "volume sockvol binds"},
		{"--mount plain volume", withHC("Mounts", []map[string]any{{"Type": "volume", "Source": "datavol", "Target": "/x"}}), ""},
		{"--volumes-from", withHC("VolumesFrom", []string{"helper"}), "--volumes-from is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := call(t, a, "POST", "/v1.41/containers/create", tc.body)
			if tc.msg == "" {
				require.True(t, resp.Allow, resp.Msg)
				return
			}
			require.False(t, resp.Allow)
			require.Contains(t, resp.Msg, tc.msg)
		})
	}
	// Off the firewall nothing of this is checked.
	require.True(t, call(t, a, "POST", "/v1.41/containers/create", create("bridge", func(m map[string]any) {
		m["HostConfig"].(map[string]any)["Binds"] = []string{"/var/run/docker.sock:/d", "sockvol:/x"}
	})).Allow)
}

func TestControlPath(t *testing.T) {
	for _, p := range []string{"/", "/var", "/var/run", "/run/docker.sock", "/run/docker/plugins/x/clawker-fw.sock", "/sys", "/sys/fs/bpf/clawker-fw", "/home/u/docker.sock", "run/docker"} {
		require.True(t, controlPath(p), p)
	}
	for _, p := range []string{"/home/u", "/run/user/1000", "/var/lib/postgres", "/sys/class/net", "/tmp"} {
		require.False(t, controlPath(p), p)
	}
}

func TestHead(t *testing.T) {
	raw, err := json.Marshal(authorization.Request{User: "u", RequestMethod: "POST", RequestURI: "/v1.41/containers/create",
		RequestBody: []byte(`{"Image":"x"}`), ResponseBody: []byte(`[]`)})
	require.NoError(t, err)
	m, u, ok := head(raw)
	require.True(t, ok)
	require.Equal(t, "POST", m)
	require.Equal(t, "/v1.41/containers/create", u)

	// Another layout (bodies first) is not read by head; the full decode
	// still decides it, so a create hidden behind it is inspected.
	odd := []byte(`{"RequestBody":"` + base64.StdEncoding.EncodeToString([]byte(`{"HostConfig":{"NetworkMode":"agents","Privileged":true}}`)) +
		`","RequestMethod":"POST","RequestUri":"/v1.41/containers/create"}`)
	_, _, ok = head(odd)
	require.False(t, ok)
	resp := testAuthz(false).AuthZReq(odd).(authorization.Response)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "--privileged")
	_, _, ok = head([]byte(`not json`))
	require.False(t, ok)
	require.False(t, testAuthz(false).AuthZReq([]byte(`not json`)).(authorization.Response).Allow)
}

// BenchmarkAuthZResLargeList: the response phase of `docker ps` with ~1 MB
// of containers must not scan the body.
func BenchmarkAuthZResLargeList(b *testing.B) {
	a := testAuthz(false)
	list := bytes.Repeat([]byte(`{"Id":"0123456789abcdef0123456789abcdef","Names":["/agent"],"Labels":{"clawker.allow":"example.com"}},`), 10000)
	raw, err := json.Marshal(authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json?all=1",
		ResponseStatusCode: 200, ResponseBody: append(append([]byte("["), list[:len(list)-1]...), ']')})
	require.NoError(b, err)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if !a.AuthZRes(raw).(authorization.Response).Allow {
			b.Fatal("denied")
		}
	}
}

func TestDeprecatedHostConfigAndOldStart(t *testing.T) {
	a := testAuthz(false)
	// dockerd applies top-level host config fields when "HostConfig" is
	// absent (the deprecated wrapper), and ignores them when it is there.
	resp := call(t, a, "POST", "/v1.41/containers/create", `{"Image":"busybox","NetworkMode":"agents","Privileged":true}`)
	require.False(t, resp.Allow)
	require.Contains(t, resp.Msg, "--privileged")
	resp = call(t, a, "POST", "/v1.41/containers/create", `{"Image":"busybox","NetworkMode":"agents","Binds":["/var/run/docker.sock:/d"]}`)
	require.False(t, resp.Allow)
	require.True(t, call(t, a, "POST", "/v1.41/containers/create",
		`{"Image":"busybox","Privileged":true,"HostConfig":{"NetworkMode":"agents"}}`).Allow, "the inner HostConfig wins, as in dockerd")
	require.False(t, call(t, a, "POST", "/v1.41/containers/create", `{"Image":"busybox","hostconfig":{"NetworkMode":"agents","privileged":true}}`).Allow,
		"keys match case-insensitively, as in dockerd")

	for _, tc := range []struct {
		uri   string
		allow bool
	}{
		{"/v1.23/containers/agent/start", false},
		{"/v1.12/containers/c0ffee/start", false},
		{"/v1.23/containers/created-agent/start", false}, // not running: its networks come from Docker
		{"/v1.23/containers/plain/start", true},
		{"/v1.24/containers/agent/start", true},
		{"/v1.41/containers/agent/start", true},
		{"/containers/agent/start", true},
	} {
		resp := call(t, a, "POST", tc.uri, nil)
		require.Equal(t, tc.allow, resp.Allow, "%s: %s", tc.uri, resp.Msg)
		if !tc.allow {
			require.Contains(t, resp.Msg, "use a current Docker client")
		}
	}
	require.True(t, versionBelow("1.9", 1, 24))
	require.False(t, versionBelow("2.0", 1, 24))
	require.True(t, versionBelow("x", 1, 24))
}
