package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

// scopedNames is fakeNames that also answers a network's scope as Docker
// does (network inspect), by network id, counting the questions.
type scopedNames struct {
	*fakeNames
	mu     sync.Mutex
	scopes map[string]string
	err    error
	asked  int
}

func (s *scopedNames) NetworkScope(_ context.Context, id string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked++
	return s.scopes[id], s.err
}

// TestSwarmGlobalScope: a CLAWKER_SCOPE=global install reports global
// scope, validates and echoes a swarm network's clawker.* options at
// AllocateNetwork (what Swarm hands every node's CreateNetwork), and
// refuses runtime rules on the networks it created, also after a restart.
func TestSwarmGlobalScope(t *testing.T) {
	r := newRig(t)
	r.p.Close()
	r.scope = ScopeGlobal
	r.start(t)
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := httptest.NewServer(Handler(r.p, nil, logrus.NewEntry(l)))
	defer srv.Close()
	post := func(path, body string) map[string]any { return postJSON(t, srv.URL+path, []byte(body)) }

	caps := post("/NetworkDriver.GetCapabilities", "")
	require.Equal(t, "global", caps["Scope"])
	require.Equal(t, "local", caps["ConnectivityScope"], "each node's bridge is its own")

	// The manager's allocator passes the -o map flat; it is validated as
	// a local network's options are, and echoed.
	alloc := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`","Options":{"clawker.allow":"x.example.test","clawker.deny":"bad.example.test"},"IPv4Data":[{"Pool":"10.0.1.0/24","Gateway":"10.0.1.1/24"}]}`)
	require.Empty(t, alloc["Err"])
	require.Equal(t, map[string]any{"clawker.allow": "x.example.test", "clawker.deny": "bad.example.test"}, alloc["Options"])
	empty := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`"}`)
	require.Empty(t, empty["Err"])
	other := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`","Options":{"com.example":"1"}}`)
	require.Contains(t, other["Err"], "com.example", "as CreateNetwork refuses it")
	bad := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`","Options":{"clawker.allow":"exa mple"}}`)
	require.Contains(t, bad["Err"], "clawker.allow")
	unknown := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`","Options":{"clawker.allowed":"x.example.test"}}`)
	require.Contains(t, unknown["Err"], "clawker.allowed")
	v6 := post("/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+netA+`","IPv6Data":[{"Pool":"fd00::/64"}]}`)
	require.Contains(t, v6["Err"], "IPv6")
	require.Empty(t, post("/NetworkDriver.FreeNetwork", `{"NetworkID":"`+netA+`"}`)["Err"])
	require.Empty(t, r.p.Snapshot().Networks, "allocation stores nothing")

	// Each node creates the network with the echoed options.
	ok := post("/NetworkDriver.CreateNetwork", `{"NetworkID":"`+netA+`","Options":{"com.docker.network.generic":{"clawker.allow":"x.example.test"}},"IPv4Data":[{"Pool":"10.0.1.0/24","Gateway":"10.0.1.1/24"}]}`)
	require.Empty(t, ok["Err"])
	nets, _, err := r.p.Networks()
	require.NoError(t, err)
	require.Len(t, nets, 1)
	require.Equal(t, 1, nets[0].Rules)

	_, err = r.p.AddRules(netA[:12], []string{"y.example.test"})
	require.ErrorContains(t, err, "is a swarm network")
	require.ErrorContains(t, err, "docker service update --container-label-add clawker.allow=")
	_, rules, err := r.p.RuntimeRules(netA)
	require.NoError(t, err)
	require.Empty(t, rules, "nothing changed")

	// The network's scope is persisted: a restart (even with the setting
	// gone) still refuses.
	r.p.Close()
	r.scope = ""
	r.start(t)
	_, err = r.p.AddRules(netA, []string{"y.example.test"})
	require.ErrorContains(t, err, "is a swarm network")
	require.NoError(t, r.p.RemoveRules(netA, nil), "removing is not refused")
}

// TestSwarmRulesLocalInstall: on a local-scope install, runtime rules are
// refused on a network Docker calls swarm-scoped (created with --scope
// swarm and no options), allowed on a local one, and refused when Docker
// cannot say (fail closed); Docker is asked once per network.
func TestSwarmRulesLocalInstall(t *testing.T) {
	netB, netC := "bbbb"+netA[4:], "cccc"+netA[4:]
	r := newRig(t)
	r.p.Close()
	names := &scopedNames{fakeNames: &fakeNames{networks: [][2]string{{netA, "agents"}, {netB, "local"}, {netC, "flaky"}}},
		scopes: map[string]string{netA: "swarm", netB: "local", netC: "local"}, err: nil}
	r.names = names
	r.start(t)
	srv := httptest.NewServer(Handler(r.p, nil, logrus.NewEntry(logrus.New())))
	defer srv.Close()
	require.Equal(t, "local", postJSON(t, srv.URL+"/NetworkDriver.GetCapabilities", nil)["Scope"])
	for i, id := range []string{netA, netB, netC} {
		require.NoError(t, r.p.CreateNetwork(NetworkRequest{ID: id, Pool: fmt.Sprintf("10.230.%d.0/24", i), Gateway: fmt.Sprintf("10.230.%d.1/24", i)}))
	}

	_, err := r.p.AddRules(netA, []string{"y.example.test"})
	require.ErrorContains(t, err, "is a swarm network")
	_, err = r.p.AddRules(netA, []string{"y.example.test"})
	require.ErrorContains(t, err, "is a swarm network")

	added, err := r.p.AddRules(netB, []string{"y.example.test"})
	require.NoError(t, err)
	require.Len(t, added, 1)
	_, err = r.p.AddRules(netB, []string{"z.example.test"})
	require.NoError(t, err)
	require.Equal(t, 2, names.asked, "one question per network")

	names.mu.Lock()
	names.err = errors.New("dockerd timed out")
	names.mu.Unlock()
	_, err = r.p.AddRules(netC, []string{"z.example.test"})
	require.ErrorContains(t, err, "cannot tell whether network")
	_, rules, err := r.p.RuntimeRules(netC)
	require.NoError(t, err)
	require.Empty(t, rules)
	names.mu.Lock()
	names.err = nil
	names.mu.Unlock()
	_, err = r.p.AddRules(netC, []string{"z.example.test"})
	require.NoError(t, err, "a failed question is asked again")

	_, err = r.p.AddRules("nope", []string{"z.example.test"})
	require.ErrorContains(t, err, "not a clawker-fw network")
}
