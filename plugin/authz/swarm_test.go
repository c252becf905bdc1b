package authz

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNetworkCreateSwarmScope: a clawker-fw network of swarm scope with
// clawker.* options is refused (Swarm would drop the options), under every
// reference Docker resolves to this plugin; everything else passes.
func TestNetworkCreateSwarmScope(t *testing.T) {
	netCreate := func(driver, scope string, opts map[string]string) map[string]any {
		m := map[string]any{"Name": "agents", "Driver": driver, "CheckDuplicate": true}
		if scope != "" {
			m["Scope"] = scope
		}
		if opts != nil {
			m["Options"] = opts
		}
		return m
	}
	rules := map[string]string{"clawker.allow": "github.com"}
	tests := []struct {
		name  string
		body  any
		allow bool
		msg   string
	}{
		{"swarm with rules", netCreate("clawker-fw:latest", "swarm", rules), false, "a swarm-scope clawker-fw network (agents) cannot carry network rules (clawker.allow) while the plugin reports local scope"},
		{"swarm with rules names the setting", netCreate("clawker-fw:latest", "swarm", rules), false, "CLAWKER_SCOPE=global"},
		{"swarm with rules, driver without tag", netCreate("clawker-fw", "swarm", rules), false, "--container-label clawker.allow"},
		{"swarm with rules, driver by id prefix", netCreate(selfID[:12], "swarm", rules), false, "cannot carry network rules"},
		{"swarm with rules, driver by id", netCreate(selfID, "swarm", map[string]string{"clawker.deny": "x.com", "com.example": "1"}), false, "(clawker.deny)"},
		{"global scope with rules", netCreate("clawker-fw:latest", "global", rules), false, "a global-scope clawker-fw network"},
		{"swarm without rules", netCreate("clawker-fw:latest", "swarm", map[string]string{"com.example": "1"}), true, ""},
		{"swarm attachable", func() map[string]any {
			m := netCreate("clawker-fw:latest", "swarm", nil)
			m["Attachable"] = true
			return m
		}(), false, "a swarm-scope clawker-fw network (agents) cannot be --attachable"},
		{"swarm attachable with rules", func() map[string]any {
			m := netCreate("clawker-fw", "swarm", rules)
			m["Attachable"] = true
			return m
		}(), false, "cannot carry network rules (clawker.allow)"},
		{"local attachable", func() map[string]any {
			m := netCreate("clawker-fw:latest", "local", nil)
			m["Attachable"] = true
			return m
		}(), true, ""},
		{"overlay attachable", func() map[string]any {
			m := netCreate("overlay", "swarm", nil)
			m["Attachable"] = true
			return m
		}(), true, ""},
		{"swarm, no options", netCreate("clawker-fw:latest", "swarm", nil), true, ""},
		{"local with rules", netCreate("clawker-fw:latest", "local", rules), true, ""},
		{"no scope with rules", netCreate("clawker-fw:latest", "", rules), true, ""},
		{"overlay with clawker options", netCreate("overlay", "swarm", rules), true, ""},
		{"another plugin", netCreate("other:latest", "swarm", rules), true, ""},
		{"default driver", netCreate("", "swarm", rules), true, ""},
		{"unparseable", `{"Name":"agents","Options":[1]}`, false, "cannot parse the network create request"},
		{"missing body", nil, false, "not forwarded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := call(t, testAuthz(false), "POST", "/v1.41/networks/create", tt.body)
			require.Equal(t, tt.allow, resp.Allow, resp.Msg)
			require.Contains(t, resp.Msg, tt.msg)
		})
	}

	t.Run("driver not resolvable", func(t *testing.T) {
		a, d := testAuthzDocker(false)
		d.fail = errors.New("dockerd timed out")
		resp := call(t, a, "POST", "/v1.44/networks/create", netCreate("clawker-fw:latest", "swarm", rules))
		require.False(t, resp.Allow)
		require.Contains(t, resp.Msg, `cannot resolve the network driver "clawker-fw:latest"`)
	})
	t.Run("own id unknown", func(t *testing.T) {
		a := testAuthz(false)
		a.cfg.SelfID = ""
		resp := call(t, a, "POST", "/networks/create", netCreate("whatever", "swarm", rules))
		require.False(t, resp.Allow)
		require.Contains(t, resp.Msg, "cannot carry network rules")
	})
	t.Run("override", func(t *testing.T) {
		resp := call(t, testAuthz(true), "POST", "/networks/create", netCreate("clawker-fw:latest", "swarm", rules))
		require.True(t, resp.Allow)
	})

	// CLAWKER_SCOPE=global: Swarm carries the options, which are checked
	// here because Swarm allocates the network after the create returned.
	global := []struct {
		name  string
		body  any
		allow bool
		msg   string
	}{
		{"swarm with rules", netCreate("clawker-fw:latest", "swarm", rules), true, ""},
		{"no scope with rules (a manager redirects it to swarm)", netCreate("clawker-fw", "", rules), true, ""},
		{"local scope with rules", netCreate(selfID[:12], "local", rules), true, ""},
		{"invalid allow", netCreate("clawker-fw:latest", "swarm", map[string]string{"clawker.allow": "exa mple"}), false, "invalid network option"},
		{"invalid option names it", netCreate("clawker-fw:latest", "swarm", map[string]string{"clawker.allow": "exa mple"}), false, "clawker.allow"},
		{"invalid option in another case", netCreate("clawker-fw:latest", "", map[string]string{"CLAWKER.Deny": "a b"}), false, "invalid network option"},
		{"unknown clawker option", netCreate("clawker-fw:latest", "swarm", map[string]string{"clawker.allowed": "github.com"}), false, "invalid network option"},
		{"too many ports", netCreate("clawker-fw:latest", "swarm", map[string]string{"clawker.allow": "tcp://a.example.test:1000-1255,tcp://b.example.test:2000-2255,tcp://c.example.test:3000-3255"}), false, "Narrow the port ranges"},
		{"attachable", func() map[string]any {
			m := netCreate("clawker-fw:latest", "swarm", rules)
			m["Attachable"] = true
			return m
		}(), false, "cannot be --attachable"},
		{"attachable without scope", func() map[string]any {
			m := netCreate("clawker-fw:latest", "", nil)
			m["Attachable"] = true
			return m
		}(), false, "a swarm-scope clawker-fw network (agents) cannot be --attachable"},
		{"only another option", netCreate("clawker-fw:latest", "swarm", map[string]string{"com.example": "1"}), false, "com.example"},
		{"no options", netCreate("clawker-fw:latest", "swarm", nil), true, ""},
		{"another plugin's invalid options", netCreate("other:latest", "swarm", map[string]string{"clawker.allow": "exa mple"}), true, ""},
		{"overlay", netCreate("overlay", "swarm", map[string]string{"clawker.allow": "exa mple"}), true, ""},
	}
	for _, tt := range global {
		t.Run("global scope install/"+tt.name, func(t *testing.T) {
			a := testAuthz(false)
			a.cfg.GlobalScope = true
			resp := call(t, a, "POST", "/v1.41/networks/create", tt.body)
			require.Equal(t, tt.allow, resp.Allow, resp.Msg)
			require.Contains(t, resp.Msg, tt.msg)
		})
	}
	t.Run("global scope install/own id unknown: options still validated", func(t *testing.T) {
		a := testAuthz(false)
		a.cfg.GlobalScope, a.cfg.SelfID = true, ""
		resp := call(t, a, "POST", "/networks/create", netCreate("whatever", "swarm", map[string]string{"clawker.allow": "exa mple"}))
		require.False(t, resp.Allow)
		require.True(t, call(t, a, "POST", "/networks/create", netCreate("whatever", "swarm", rules)).Allow)
	})
}

// serviceAuthz is testAuthz with Docker's network inspect: "swarm-agents" is
// a swarm network of this plugin that no task ran on here yet (not in the
// store), "swarm-plain" an overlay network, "flaky" one Docker cannot
// answer for.
func serviceAuthz(t *testing.T) *Authz {
	t.Helper()
	a := testAuthz(false)
	a.cfg.NetworkDriver = func(_ context.Context, ref string) (string, bool, error) {
		switch ref {
		case "swarm-agents", "5a5a5a5a":
			return "clawker-fw:latest", true, nil
		case "swarm-plain", "ingress":
			return "overlay", true, nil
		case "host":
			return "host", true, nil
		case "other-plugin-net":
			return "other:latest", true, nil
		case "flaky":
			return "", false, errors.New("dockerd timed out")
		}
		return "", false, nil
	}
	return a
}

// service is a POST /services/create body (the CLI's shape) on networks,
// with mut applied to its ContainerSpec.
func service(networks []string, mut func(cs map[string]any)) map[string]any {
	cs := map[string]any{"Image": "busybox", "Args": []string{"sleep", "300"}}
	if mut != nil {
		mut(cs)
	}
	var nets []map[string]any
	for _, n := range networks {
		nets = append(nets, map[string]any{"Target": n})
	}
	return map[string]any{"Name": "agent", "TaskTemplate": map[string]any{"ContainerSpec": cs, "Networks": nets},
		"Mode": map[string]any{"Replicated": map[string]any{"Replicas": 2}}}
}

// TestServiceChecks: swarm creates service tasks past the container
// checks, so services on a clawker-fw network get them at create and update.
func TestServiceChecks(t *testing.T) {
	set := func(k string, v any) func(map[string]any) { return func(cs map[string]any) { cs[k] = v } }
	tests := []struct {
		name  string
		uri   string
		body  any
		allow bool
		msg   string
	}{
		{"plain service", "/v1.41/services/create", service([]string{"swarm-plain"}, nil), true, ""},
		{"service without networks", "/v1.41/services/create", service(nil, nil), true, ""},
		{"firewalled service", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Labels", map[string]string{"clawker.allow": "github.com"})), true, ""},
		{"store network by name", "/v1.41/services/create", service([]string{"agents"}, nil), true, ""},
		{"cap NET_ADMIN on a swarm network of this plugin", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"CAP_NET_ADMIN"})), false, "--cap-add CAP_NET_ADMIN is not allowed on the clawker-fw network swarm-agents"},
		{"cap ALL by network id prefix", "/v1.44/services/create", service([]string{"5a5a5a5a"}, set("CapabilityAdd", []string{"ALL"})), false, "--cap-add ALL is not allowed"},
		{"cap SYS_ADMIN on a store network", "/v1.44/services/create", service([]string{fwID}, set("CapabilityAdd", []string{"SYS_ADMIN"})), false, "SYS_ADMIN is not allowed"},
		{"harmless cap", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"CAP_CHOWN"})), true, ""},
		{"docker socket bind", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/var/run/docker.sock"}})), false, "mounting the Docker socket"},
		{"bpffs bind", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "bind", "Source": "/sys/fs/bpf", "Target": "/b"}})), false, "/sys/fs/bpf"},
		{"volume binding the run dir", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "volume", "Source": "v", "Target": "/v",
			"VolumeOptions": map[string]any{"DriverConfig": map[string]any{"Name": "local", "Options": map[string]string{"type": "none", "o": "bind", "device": "/run/docker"}}}}})), false, "a volume binding /run/docker"},
		{"existing volume binding /var/run", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "volume", "Source": "sockvol", "Target": "/v"}})), false, "volume sockvol binds /var/run"},
		{"data volume", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "volume", "Source": "datavol", "Target": "/v"}})), true, ""},
		{"second network", "/v1.41/services/create", service([]string{"swarm-agents", "swarm-plain"}, nil), false, "cannot join other networks (swarm-agents, swarm-plain)"},
		{"host network", "/v1.41/services/create", service([]string{"swarm-agents", "host"}, nil), false, "cannot join other networks"},
		{"deprecated top-level networks", "/v1.41/services/create", func() map[string]any {
			m := service([]string{"swarm-agents"}, nil)
			m["Networks"] = []map[string]any{{"Target": "swarm-plain"}}
			return m
		}(), false, "cannot join other networks"},
		{"deprecated top-level networks alone", "/v1.41/services/create", func() map[string]any {
			m := service(nil, set("CapabilityAdd", []string{"NET_ADMIN"}))
			m["Networks"] = []map[string]any{{"Target": "swarm-agents"}}
			return m
		}(), false, "NET_ADMIN is not allowed"},
		{"labels on no clawker-fw network", "/v1.41/services/create", service([]string{"swarm-plain"}, set("Labels", map[string]string{"clawker.allow": "github.com"})), false, "on no clawker-fw network (network swarm-plain)"},
		{"labels on no network", "/v1.41/services/create", service(nil, set("Labels", map[string]string{"clawker.allow": "github.com"})), false, "the default bridge"},
		{"invalid label", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Labels", map[string]string{"clawker.allow": "exa..mple"})), false, "invalid label"},
		{"another plugin's network", "/v1.41/services/create", service([]string{"other-plugin-net"}, set("CapabilityAdd", []string{"NET_ADMIN"})), true, ""},
		{"unknown network", "/v1.41/services/create", service([]string{"nope"}, set("CapabilityAdd", []string{"NET_ADMIN"})), true, ""},
		{"Docker cannot answer", "/v1.41/services/create", service([]string{"flaky"}, nil), false, "cannot tell whether network flaky is a clawker-fw network"},
		{"update adds a capability", "/v1.41/services/agent/update", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"BPF"})), false, "BPF is not allowed"},
		{"update by id with version query", "/v1.41/services/abcdef/update?version=12", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "bind", "Source": "/var/lib/docker", "Target": "/d"}})), false, "mounting the Docker socket"},
		{"other spelling of the path", "//v1.41/services/./create/", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"NET_ADMIN"})), false, "NET_ADMIN"},
		{"cap lower case", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"net_admin"})), false, "--cap-add net_admin is not allowed"},
		{"cap lower case with prefix", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"cap_sys_admin"})), false, "cap_sys_admin is not allowed"},
		{"cap mixed case", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"Cap_Bpf"})), false, "Cap_Bpf is not allowed"},
		{"cap among harmless ones", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"CHOWN", "SYS_PTRACE"})), false, "SYS_PTRACE is not allowed"},
		{"cap PERFMON", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapabilityAdd", []string{"PERFMON"})), false, "PERFMON is not allowed"},
		{"cap key in lower case (encoding/json folds it)", "/v1.44/services/create", service([]string{"swarm-agents"}, set("capabilityadd", []string{"NET_ADMIN"})), false, "NET_ADMIN is not allowed"},
		{"cap in the container create spelling", "/v1.44/services/create", service([]string{"swarm-agents"}, set("CapAdd", []string{"NET_ADMIN"})), false, "NET_ADMIN is not allowed"},
		{"mounts key in lower case", "/v1.41/services/create", service([]string{"swarm-agents"}, set("mounts", []map[string]any{{"type": "bind", "source": "/run/docker.sock", "target": "/s"}})), false, "mounting the Docker socket"},
		{"bind of the state dir", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "bind", "Source": "/var/lib/clawker-fw", "Target": "/s"}})), false, "mounting the Docker socket"},
		{"bind of the root", "/v1.41/services/create", service([]string{"swarm-agents"}, set("Mounts", []map[string]any{{"Type": "bind", "Source": "/", "Target": "/h"}})), false, "mounting the Docker socket"},
		{"host network alone with a cap", "/v1.41/services/create", service([]string{"host"}, set("CapabilityAdd", []string{"NET_ADMIN"})), true, ""},
		{"network listed twice", "/v1.41/services/create", service([]string{"swarm-agents", "swarm-agents"}, nil), true, ""},
		{"ingress published port", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), ""), false, "cannot join other networks (ingress, for the published port 80)"},
		{"ingress spelled out", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), "ingress"), false, "ingress"},
		{"ingress upper case", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), "INGRESS"), false, "ingress"},
		{"unknown mode is ingress", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), "hostt"), false, "ingress"},
		{"update publishing a port", "/v1.41/services/agent/update?version=4", withPorts(service([]string{"swarm-agents"}, nil), ""), false, "ingress"},
		{"host-mode port", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), "host"), true, ""},
		{"host-mode port, mixed case", "/v1.41/services/create", withPorts(service([]string{"swarm-agents"}, nil), "Host"), true, ""},
		{"published port on a plain network", "/v1.41/services/create", withPorts(service([]string{"swarm-plain"}, nil), ""), true, ""},
		{"update fine", "/v1.41/services/agent/update?version=3", service([]string{"swarm-agents"}, nil), true, ""},
		{"missing body", "/v1.41/services/create", nil, false, "not forwarded"},
		{"unparseable", "/v1.41/services/create", `{"TaskTemplate":{"Networks":"x"}}`, false, "cannot parse the service spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := call(t, serviceAuthz(t), "POST", tt.uri, tt.body)
			require.Equal(t, tt.allow, resp.Allow, resp.Msg)
			require.Contains(t, resp.Msg, tt.msg)
		})
	}
	t.Run("own id unknown: every plugin's network counts", func(t *testing.T) {
		a := serviceAuthz(t)
		a.cfg.SelfID = ""
		resp := call(t, a, "POST", "/services/create", service([]string{"other-plugin-net"}, set("CapabilityAdd", []string{"NET_ADMIN"})))
		require.False(t, resp.Allow, resp.Msg)
	})
	t.Run("service list and inspect untouched", func(t *testing.T) {
		require.True(t, call(t, serviceAuthz(t), "GET", "/v1.41/services", nil).Allow)
		require.True(t, call(t, serviceAuthz(t), "GET", "/v1.41/services/agent", nil).Allow)
	})
}

// withPorts publishes port 80 of service m in mode.
func withPorts(m map[string]any, mode string) map[string]any {
	p := map[string]any{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}
	if mode != "" {
		p["PublishMode"] = mode
	}
	m["EndpointSpec"] = map[string]any{"Mode": "vip", "Ports": []map[string]any{p}}
	return m
}
