package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// fakeNames stands in for Docker's answers at the API boundary: networks
// and containers resolved by dockerd's rules (a full id, then an exact name,
// then a unique id prefix; ambiguity is an error).
type fakeNames struct {
	mu         sync.Mutex
	networks   [][2]string // id, name
	containers [][2]string
	down       bool
	lists      int
}

func (f *fakeNames) find(list [][2]string, ref, what string) (id, name string, found bool, err error) {
	var byName, byPrefix [][2]string
	for _, e := range list {
		if e[0] == ref {
			return e[0], e[1], true, nil
		}
		if e[1] == ref {
			byName = append(byName, e)
		}
		if strings.HasPrefix(e[0], ref) {
			byPrefix = append(byPrefix, e)
		}
	}
	switch {
	case len(byName) == 1:
		return byName[0][0], byName[0][1], true, nil
	case len(byName) > 1:
		return "", "", false, fmt.Errorf("%s %s is ambiguous (%d matches found on name)", what, ref, len(byName))
	case len(byPrefix) == 1:
		return byPrefix[0][0], byPrefix[0][1], true, nil
	case len(byPrefix) > 1:
		return "", "", false, fmt.Errorf("%s %s is ambiguous (%d matches found based on ID prefix)", what, ref, len(byPrefix))
	}
	return "", "", false, nil
}

func (f *fakeNames) Network(_ context.Context, ref string) (string, string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return "", "", false, Unavailable(errors.New("Cannot connect to the Docker daemon"))
	}
	return f.find(f.networks, ref, "network")
}

func (f *fakeNames) Container(_ context.Context, ref string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return "", false, Unavailable(errors.New("Cannot connect to the Docker daemon"))
	}
	id, _, found, err := f.find(f.containers, ref, "container")
	return id, found, err
}

func (f *fakeNames) NetworkNames(context.Context) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.down {
		return nil, errors.New("Cannot connect to the Docker daemon")
	}
	out := map[string]string{}
	for _, e := range f.networks {
		out[e[0]] = e[1]
	}
	return out, nil
}

// otherNet is a network of another driver whose id shares netA's first
// four characters.
const otherNet = "aaaa1111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func namesRig(t *testing.T) (*rig, *fakeNames) {
	r := newRig(t)
	r.p.Close()
	f := &fakeNames{networks: [][2]string{{netA, "agents"}, {otherNet, "plain"}, {"cccc" + netA[4:], "dup"}, {"dddd" + netA[4:], "dup"}},
		containers: [][2]string{{cid(1), "agent"}, {"ff" + cid(2)[2:], "other"}, {"00ff" + cid(3)[4:], "third"}}}
	r.names = f
	r.start(t)
	r.network(t, map[string]string{"clawker.allow": "net.example.test"})
	return r, f
}

func TestResolveNetworkAsDocker(t *testing.T) {
	r, f := namesRig(t)
	ctx := context.Background()
	for _, tc := range []struct {
		ref, want, err string
	}{
		{netA, netA, ""},
		{"agents", netA, ""},
		{netA[:9], netA, ""},           // unique among all of Docker's networks
		{"aaaa", "", "ambiguous"},      // netA and otherNet: Docker refuses, so do we
		{"a", "", "ambiguous"},         //
		{"plain", "", "not a clawker"}, // Docker's, not ours
		{otherNet[:6], "", "not a clawker"},
		{"dup", "", "ambiguous"},       // two networks of that name
		{"cfw-" + netA[:11], netA, ""}, // the bridge name, as before
		{"nope", "", "not a clawker-fw network"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			id, err := r.p.ResolveNetwork(ctx, tc.ref)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				_, reason := ReasonOf(err)
				require.Equal(t, ReasonNetworkNotFound, reason)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, id)
		})
	}
	require.Equal(t, "agents", r.p.NetworkName(netA), "learned while resolving")

	// Docker unreachable: the plugin's store answers with what it knows.
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
	for _, ref := range []string{"agents", netA[:4], "cfw-" + netA[:11]} {
		id, err := r.p.ResolveNetwork(ctx, ref)
		require.NoError(t, err, ref)
		require.Equal(t, netA, id)
	}
	_, err := r.p.ResolveNetwork(ctx, "plain")
	require.ErrorContains(t, err, "not a clawker-fw network")
}

func TestResolveContainerAsDocker(t *testing.T) {
	r, f := namesRig(t)
	ctx := context.Background()
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 101, Container{ID: cid(1), Name: "agent", Networks: map[string]string{"agents": netA}})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	for _, ref := range []string{"agent", cid(1), cid(1)[:5]} {
		id, found := r.p.ResolveContainer(ctx, ref)
		require.True(t, found, ref)
		require.Equal(t, cid(1), id)
	}
	_, found := r.p.ResolveContainer(ctx, "00") // agent's and third's: ambiguous
	require.False(t, found)
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
	id, found := r.p.ResolveContainer(ctx, "agent")
	require.True(t, found, "the plugin's endpoints answer while Docker is down")
	require.Equal(t, cid(1), id)
}

// TestAdminNamesAndDenials: the admin API takes networks by name, answers
// with names, names the network in denials and their fix, and filters
// denials by container, network and time.
func TestAdminNamesAndDenials(t *testing.T) {
	r, f := namesRig(t)
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 101, Container{ID: cid(1), Name: "agent"})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := httptest.NewServer(AdminHandler(r.p, AdminHooks{Engine: "builtin"}, logrus.NewEntry(l)))
	defer srv.Close()
	get := func(path string, out any) int {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		if out != nil {
			require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
		}
		return resp.StatusCode
	}

	var st api.StatusReport
	require.Equal(t, http.StatusOK, get("/v1/status", &st))
	require.Equal(t, "agents", st.Networks[0].Name, "status names the network (asked from Docker)")
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/networks/agents/rules", strings.NewReader(`{"rules":["alt.example.test"]}`))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var rules api.RulesResponse
	require.Equal(t, http.StatusOK, get("/v1/networks/agents/rules", &rules))
	require.Equal(t, api.RulesResponse{Network: netA, Name: "agents", Rules: []string{"alt.example.test"}}, rules)
	var ae api.APIError
	require.Equal(t, http.StatusNotFound, get("/v1/networks/plain/rules", &ae))
	require.Equal(t, ReasonNetworkNotFound, ae.Reason)

	var v api.Version
	require.Equal(t, http.StatusOK, get("/v1/version", &v))
	require.Equal(t, "builtin", v.Engine)
	require.NotEmpty(t, v.GoVersion)

	// A denial recorded by index is completed: the container, the network
	// and its name in the fix's command (fix texts made without the network
	// say NETWORK).
	idx := r.policyOf(t, "10.230.0.2").Index
	t0 := time.Now()
	r.p.Denials.Add(Denial{Time: t0.Add(-time.Minute), Source: "dns", Index: idx, Destination: "old.example.test", Reason: "no-rule"})
	r.p.Denials.Add(Denial{Time: t0, Source: "proxy", Index: idx, Destination: "d.example.test", Port: 443, Reason: "no-rule",
		Fix: verdict.Fix(verdict.Denial{Dest: "d.example.test", Port: 443})})
	r.p.Denials.Add(Denial{Time: t0, Source: "bpf", Index: 999, Destination: "10.1.2.3", Reason: "no rule"})
	denials := func(q url.Values) []api.Denial {
		resp, err := http.Get(srv.URL + "/v1/denials?" + q.Encode())
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var out []api.Denial
		dec := json.NewDecoder(resp.Body)
		for dec.More() {
			var d api.Denial
			require.NoError(t, dec.Decode(&d))
			out = append(out, d)
		}
		return out
	}
	all := denials(nil)
	require.Len(t, all, 3)
	d := all[1]
	require.Equal(t, "agent", d.Container)
	require.Equal(t, cid(1), d.ContainerID)
	require.Equal(t, netA, d.Network)
	require.Equal(t, "agents", d.NetworkName)
	require.Contains(t, d.Fix, "`clawker-fw rules add agents d.example.test`")
	require.NotContains(t, d.Fix, "NETWORK")

	require.Len(t, denials(url.Values{api.DenialsContainer: {"agent"}}), 2)
	require.Len(t, denials(url.Values{api.DenialsContainer: {cid(1)[:6]}}), 2)
	require.Len(t, denials(url.Values{api.DenialsContainer: {"other"}}), 0, "a container with no denials")
	require.Len(t, denials(url.Values{api.DenialsNetwork: {"agents"}}), 2)
	since := denials(url.Values{api.DenialsSince: {t0.Add(-time.Second).UTC().Format(time.RFC3339Nano)}, api.DenialsContainer: {"agent"}})
	require.Len(t, since, 1)
	require.Equal(t, "d.example.test", since[0].Destination)
	require.Equal(t, http.StatusNotFound, get("/v1/denials?container=ghost", &ae))
	require.Equal(t, ReasonContainerGone, ae.Reason)
	require.Equal(t, http.StatusNotFound, get("/v1/denials?network=plain", &ae))
	require.Equal(t, http.StatusBadRequest, get("/v1/denials?since=yesterday", &ae))
	require.Equal(t, ReasonInvalidRequest, ae.Reason)

	// Following keeps the filter: only the container's new denials come.
	fctx, stop := context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(fctx, http.MethodGet,
		srv.URL+"/v1/denials?follow=1&container=agent&since="+url.QueryEscape(t0.Add(time.Second).UTC().Format(time.RFC3339Nano)), nil)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer stop() // ends the follow before the server closes
	lines := make(chan string, 4)
	go func() {
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var d api.Denial
			if dec.Decode(&d) != nil {
				close(lines)
				return
			}
			lines <- d.Destination
		}
	}()
	require.Eventually(t, func() bool {
		r.p.Denials.Add(Denial{Time: time.Now().Add(2 * time.Second), Source: "bpf", Index: 999, Destination: "10.9.9.9", Reason: "no rule"})
		r.p.Denials.Add(Denial{Time: time.Now().Add(2 * time.Second), Source: "dns", Index: idx, Destination: "new.example.test", Reason: "no-rule"})
		select {
		case got, ok := <-lines:
			require.True(t, ok, "the follow ended")
			require.Equal(t, "new.example.test", got, "neither old nor other containers' denials")
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}, 5*time.Second, 10*time.Millisecond)

	// Bypass takes a container as Docker names it (an id prefix here).
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/v1/bypass", strings.NewReader(`{"container":"`+cid(1)[:6]+`","for":"1s"}`))
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Positive(t, f.lists, "names were listed")
}

// TestNetworkNamesBounded: a network Docker no longer lists stays nameless,
// and asking again and again (status in a loop) lists Docker's networks at
// most once per namesAdminEvery.
func TestNetworkNamesBounded(t *testing.T) {
	r, f := namesRig(t)
	f.mu.Lock()
	f.networks = f.networks[1:] // netA gone from Docker
	before := f.lists
	f.mu.Unlock()
	for range 20 {
		r.p.ensureNetworkNames(context.Background())
		nets, _, err := r.p.Networks()
		require.NoError(t, err)
		require.Empty(t, nets[0].Name)
	}
	f.mu.Lock()
	lists := f.lists - before
	f.mu.Unlock()
	require.LessOrEqual(t, lists, 2, "one admin list and at most one background list")
	require.Equal(t, short(netA), r.p.networkRef(netA), "texts fall back to the short id")
}
