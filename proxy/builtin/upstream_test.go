package builtin

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// newWhoAmI serves plain HTTP on ip:port (port 0 picks one) and answers
// every request with the address the request reached, so a test sees which
// upstream the proxy dialled.
func newWhoAmI(t *testing.T, ip string, port uint16) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(ip, strconv.Itoa(int(port))))
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Context().Value(http.LocalAddrContextKey).(net.Addr).String())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestNetworkUpstreams: a network with clawker.dns.upstream has the proxy
// resolve through that network's resolvers only, the ones its containers'
// DNS answers came from; a network without one uses the plugin-wide
// resolver. Two real DNS servers (and the plugin-wide one) answer the same
// name with different addresses; each network's flow must reach the address
// of its own resolver, even right after another network's answer was cached,
// and the host-local and private-range refusals still apply to what a
// network's resolver answers.
func TestNetworkUpstreams(t *testing.T) {
	upA, upB, upWide := "127.0.0.41", "127.0.0.42", "127.0.0.43"
	notLocal := map[netip.Addr]bool{}
	for _, a := range []string{upA, upB, upWide} {
		notLocal[netip.MustParseAddr(a)] = true
	}
	h := newHarness(t, func(c *Config) {
		c.HostLocal = func(a netip.Addr) (bool, error) {
			if notLocal[a] {
				return false, nil
			}
			return testHostLocal(a)
		}
	})
	port := newWhoAmI(t, upA, 0)
	newWhoAmI(t, upB, port)
	newWhoAmI(t, upWide, port)
	h.mapPort(80, port)

	const name = "split.example.test"
	dnsA, dnsB := newFakeDNSAt(t, "127.0.0.31"), newFakeDNSAt(t, "127.0.0.32")
	dnsA.set(name, upA)
	dnsB.set(name, upB)
	h.dns.set(name, upWide)
	dnsA.set("local.example.test", "127.0.0.5") // host-local
	dnsA.set("rebind.example.test", "10.9.9.9")
	h.dns.set("local.example.test", upWide)
	h.dns.set("rebind.example.test", upWide)

	pol := &policy.Policy{Allows: []policy.Allowed{
		allow(name, policy.ProtoHTTP, 80, 80),
		allow("local.example.test", policy.ProtoHTTP, 80, 80),
		allow("rebind.example.test", policy.ProtoHTTP, 80, 80),
	}}
	epA, epB, epWide := endpoint(1, "127.0.0.21", pol), endpoint(2, "127.0.0.22", pol), endpoint(3, "127.0.0.23", pol)
	epA.NetworkID, epB.NetworkID, epWide.NetworkID = "netA", "netB", "netWide"
	snap := snapshot(1, epA, epB, epWide)
	// netA's option is written as a user would (bare IP and ip:port are
	// both accepted); the proxy normalizes it as DNS does.
	snap.Networks["netA"] = &policy.Network{ID: "netA", Settings: policy.NetworkSettings{DNSUpstreams: []string{"127.0.0.39:1", dnsA.addr}}}
	snap.Networks["netB"] = &policy.Network{ID: "netB", Settings: policy.NetworkSettings{DNSUpstreams: []string{dnsB.addr}}}
	snap.Networks["netWide"] = &policy.Network{ID: "netWide"}
	h.apply(snap)

	get := func(src, url string) (int, string) {
		t.Helper()
		resp, err := h.httpClient(src, h.webAddr(80), false).Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		return resp.StatusCode, readAll(t, resp.Body)
	}
	for round := range 2 { // the second round is served from the cache
		for _, tt := range []struct{ src, want string }{
			{"127.0.0.21", upA}, {"127.0.0.22", upB}, {"127.0.0.23", upWide},
		} {
			status, body := get(tt.src, "http://"+name+"/")
			require.Equal(t, http.StatusOK, status, "round %d from %s: %s", round, tt.src, body)
			require.Equal(t, net.JoinHostPort(tt.want, strconv.Itoa(int(port))), body, "round %d from %s", round, tt.src)
		}
	}
	// Each network asked its own resolver only: one question each for A
	// (the ip4 lookup), none crossing over.
	require.Positive(t, dnsA.questions(name))
	require.Positive(t, dnsB.questions(name))
	require.Positive(t, h.dns.questions(name))
	require.Zero(t, dnsA.questions("local.example.test")+dnsB.questions("local.example.test"))

	t.Run("refusals hold on a network's own answers", func(t *testing.T) {
		status, body := get("127.0.0.21", "http://local.example.test/")
		require.Equal(t, http.StatusForbidden, status, body)
		require.Equal(t, ReasonHostLocal, h.waitDecision(func(d Decision) bool {
			return d.Name == "local.example.test" && !d.Allowed
		}).Reason)
		status, body = get("127.0.0.21", "http://rebind.example.test/")
		require.Equal(t, http.StatusForbidden, status, body)
		require.Equal(t, ReasonPrivateUpstream, h.waitDecision(func(d Decision) bool {
			return d.Name == "rebind.example.test" && !d.Allowed
		}).Reason)
		// The plugin-wide answer for the same names is fine: the refusal
		// came from netA's resolver.
		status, body = get("127.0.0.23", "http://rebind.example.test/")
		require.Equal(t, http.StatusOK, status, body)
	})

	t.Run("an endpoint the snapshot no longer knows is not resolved", func(t *testing.T) {
		_, err := h.e.lookup(t.Context(), 99, name)
		require.ErrorContains(t, err, "not in the current snapshot")
	})
}

// TestUpstreamResolver: the upstreams are asked in order until one answers
// (a dead one is skipped), and that first answer is final, as in the DNS
// plugin: a name the first live upstream does not know is not asked of the
// next one.
func TestUpstreamResolver(t *testing.T) {
	first, second := newFakeDNSAt(t, "127.0.0.1"), newFakeDNSAt(t, "127.0.0.1")
	first.set("a.example.test", "192.0.2.1")
	second.set("a.example.test", "192.0.2.2")
	second.set("only-second.example.test", "192.0.2.3")
	r := UpstreamResolver([]string{"127.0.0.39:1", first.addr, second.addr})

	addrs, err := r.LookupNetIP(t.Context(), "ip4", "a.example.test")
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, addrs)

	_, err = r.LookupNetIP(t.Context(), "ip4", "only-second.example.test")
	var de *net.DNSError
	require.ErrorAs(t, err, &de)
	require.True(t, de.IsNotFound, "%v", err)
	require.Zero(t, second.questions("only-second.example.test"))

	_, err = UpstreamResolver([]string{"127.0.0.39:1"}).LookupNetIP(t.Context(), "ip4", "a.example.test")
	require.ErrorContains(t, err, "exchange with 127.0.0.39:1")
}

// TestChainA: only A records reached from the name through its CNAME chain
// count.
func TestChainA(t *testing.T) {
	rr := func(s string) mdns.RR {
		r, err := mdns.NewRR(s)
		require.NoError(t, err)
		return r
	}
	ans := []mdns.RR{
		rr("www.example.test. 40 IN CNAME Edge.example.test."),
		rr("edge.example.test. 60 IN A 192.0.2.10"),
		rr("other.example.test. 5 IN A 192.0.2.66"),
		rr("www.example.test. 50 IN A 192.0.2.11"),
	}
	addrs, ttl := chainA("WWW.example.test.", ans)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")}, addrs)
	require.Equal(t, 40*time.Second, ttl, "the smallest TTL of the chain's records (not of other names')")
	addrs, _ = chainA("nothing.example.test.", ans)
	require.Empty(t, addrs)
}
