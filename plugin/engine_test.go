package plugin

import (
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

func TestEngineGate(t *testing.T) {
	g := newEngineGate()
	waited, ok := g.wait(0)
	require.True(t, ok)
	require.Zero(t, waited, "EngineWait 0 does not wait")

	waited, ok = g.wait(100 * time.Millisecond)
	require.False(t, ok, "no registration seen")
	require.GreaterOrEqual(t, waited, 100*time.Millisecond)

	go func() {
		time.Sleep(150 * time.Millisecond)
		g.registered(time.Now())
	}()
	waited, ok = g.wait(5 * time.Second)
	require.True(t, ok)
	require.GreaterOrEqual(t, waited, 150*time.Millisecond+engineSettle, "held until registration and settle")
	require.Less(t, waited, 2*time.Second)

	g.registered(time.Now().Add(time.Hour)) // only the first call counts
	waited, ok = g.wait(5 * time.Second)
	require.True(t, ok)
	require.Less(t, waited, engineSettle+50*time.Millisecond, "open once registered")
}

// Through the driver socket: CreateEndpoint answers only after the engine's
// GetCapabilities (the call that precedes dockerd's driver registration).
func TestDriverHTTPWaitsForEngine(t *testing.T) {
	r := newRig(t)
	r.p.cfg.EngineWait = 5 * time.Second
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := httptest.NewServer(Handler(r.p, nil, logrus.NewEntry(l)))
	defer srv.Close()
	post := func(path, body string) map[string]any { return postJSON(t, srv.URL+path, []byte(body)) }
	ok := post("/NetworkDriver.CreateNetwork", `{"NetworkID":"`+netA+`","Options":{"com.docker.network.generic":{"clawker.allow":"x.example.test"}},"IPv4Data":[{"Pool":"10.230.0.0/24","Gateway":"10.230.0.1/24"}]}`)
	require.Empty(t, ok["Err"])

	answered := make(chan time.Time, 1)
	go func() {
		post("/NetworkDriver.CreateEndpoint", `{"NetworkID":"`+netA+`","EndpointID":"e1","Interface":{"Address":"10.230.0.2/24"}}`)
		answered <- time.Now()
	}()
	select {
	case <-answered:
		t.Fatal("CreateEndpoint answered before the engine registered the driver")
	case <-time.After(300 * time.Millisecond):
	}
	capsAt := time.Now()
	require.Equal(t, "local", post("/NetworkDriver.GetCapabilities", "")["Scope"])
	at := <-answered
	require.GreaterOrEqual(t, at.Sub(capsAt), engineSettle, "answered after the registration settled")
	eps, _, err := r.p.Networks()
	require.NoError(t, err)
	require.Len(t, eps[0].Endpoints, 1)
}
