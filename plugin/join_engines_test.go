package plugin

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Docker >= 28 calls Join once the container's netns exists at SandboxKey:
// Join enrolls it before answering, found through the plugin's netns mount
// whatever the daemon's exec-root. On Docker 20.10 (no netns yet at Join)
// nothing is enrolled until the veth moves into the netns.
func TestJoinEnrollsASandboxThatExists(t *testing.T) {
	r := newRig(t)
	r.network(t, nil)
	for _, id := range []string{"ep-current", "ep-2010"} {
		_, err := r.p.CreateEndpoint(EndpointRequest{NetworkID: netA, EndpointID: id, Address: map[string]string{"ep-current": "10.230.0.2/24", "ep-2010": "10.230.0.3/24"}[id]})
		require.NoError(t, err)
	}

	_, err := r.p.Join(netA, "ep-current", "/tmp/cfw-e2e-1/exec/netns/ready-4242")
	require.NoError(t, err)
	e, ok := r.k.get(4242)
	require.True(t, ok, "enrolled before Join answered")
	require.Equal(t, r.p.st.Endpoints["ep-current"].Index, e.Index)
	require.EqualValues(t, 4242, r.p.st.Endpoints["ep-current"].NetnsCookie, "persisted: Leave and restarts unenroll it")

	r.k.mu.Lock()
	before := len(r.k.enrolled)
	r.k.mu.Unlock()
	_, err = r.p.Join(netA, "ep-2010", "/var/run/docker/netns/0123456789ab")
	require.NoError(t, err)
	r.k.mu.Lock()
	require.Equal(t, before, len(r.k.enrolled), "no netns at Join: nothing enrolled yet")
	r.k.mu.Unlock()

	require.NoError(t, r.p.Leave(netA, "ep-current"))
	_, ok = r.k.get(4242)
	require.False(t, ok, "Leave unenrolls the namespace enrolled at Join")
}
