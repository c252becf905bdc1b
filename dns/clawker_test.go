package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

func lc(index uint32, addr string, id policy.Identity, ttl time.Duration) learnCall {
	return learnCall{Index: index, Addr: netip.MustParseAddr(addr), ID: id, TTL: ttl}
}

func TestServeDNSDecisions(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name      string
		src       string
		qname     string
		qtype     uint16
		rcode     int
		answers   []string // A addresses
		nAnswer   int      // total answer RRs, -1 = don't check
		learned   []learnCall
		upstream  []string // queries the fake upstream saw
		upstream2 []string
	}{
		{name: "exact allowed", src: ep1IP, qname: "api.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.1"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.1", 10, 5*time.Minute)},
			upstream: []string{"api.example.test./A"}},
		{name: "exact allows only that name", src: ep1IP, qname: "x.api.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "exact case and trailing dot", src: ep1IP, qname: "API.Example.TEST.", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.1"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.1", 10, 5*time.Minute)},
			upstream: []string{"api.example.test./A"}},
		{name: "wildcard apex", src: ep1IP, qname: "wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.2"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.2", 11, 5*time.Minute)},
			upstream: []string{"wild.example.test./A"}},
		{name: "wildcard subdomain", src: ep1IP, qname: "x.wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.3"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.3", 11, 5*time.Minute)},
			upstream: []string{"x.wild.example.test./A"}},
		{name: "wildcard deep subdomain", src: ep1IP, qname: "a.b.wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.8"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.8", 11, 5*time.Minute)},
			upstream: []string{"a.b.wild.example.test./A"}},
		{name: "answer inside a denied CIDR is not learned", src: ep1IP, qname: "cdn.wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.99", "192.0.2.98"}, nAnswer: 2, learned: []learnCall{lc(1, "192.0.2.98", 11, 5*time.Minute)},
			upstream: []string{"cdn.wild.example.test./A"}},
		{name: "wildcard does not cover lookalike", src: ep1IP, qname: "xwild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "deny beats wildcard", src: ep1IP, qname: "bad.wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "deny covers subtree", src: ep1IP, qname: "x.bad.wild.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "no rule", src: ep1IP, qname: "evil.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "denied TXT never leaves", src: ep1IP, qname: "tunnel.evil.example.test", qtype: mdns.TypeTXT, rcode: mdns.RcodeNameError},
		{name: "CNAME chain learned under the queried name's identity", src: ep1IP, qname: "cname.example.test", qtype: mdns.TypeA,
			rcode: mdns.RcodeSuccess, answers: []string{"192.0.2.4", "192.0.2.5"}, nAnswer: 4,
			learned:  []learnCall{lc(1, "192.0.2.4", 12, time.Hour), lc(1, "192.0.2.5", 12, 5*time.Minute)},
			upstream: []string{"cname.example.test./A"}},
		{name: "TTL ceiling", src: ep1IP, qname: "ttl-long.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.6"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.6", 15, time.Hour)},
			upstream: []string{"ttl-long.example.test./A"}},
		{name: "TTL between floor and ceiling", src: ep1IP, qname: "ttl-mid.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.9"}, nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.9", 16, 10*time.Minute)},
			upstream: []string{"ttl-mid.example.test./A"}},
		{name: "AAAA emptied without asking upstream", src: ep1IP, qname: "api.example.test", qtype: mdns.TypeAAAA, rcode: mdns.RcodeSuccess, nAnswer: 0},
		{name: "other types pass through", src: ep1IP, qname: "txt.example.test", qtype: mdns.TypeTXT, rcode: mdns.RcodeSuccess, nAnswer: 1,
			upstream: []string{"txt.example.test./TXT"}},
		{name: "allowed but nonexistent", src: ep1IP, qname: "missing.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError, nAnswer: 0,
			upstream: []string{"missing.example.test./A"}},
		{name: "HTTPS ipv4hint learned, ipv6hint stripped", src: ep1IP, qname: "https.example.test", qtype: mdns.TypeHTTPS, rcode: mdns.RcodeSuccess,
			nAnswer: 1, learned: []learnCall{lc(1, "192.0.2.10", 14, 5*time.Minute), lc(1, "192.0.2.11", 14, 5*time.Minute)},
			upstream: []string{"https.example.test./HTTPS"}},
		{name: "per endpoint: allowed for 1 is NXDOMAIN for 2", src: ep2IP, qname: "api.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "per endpoint: allowed for 2 is NXDOMAIN for 1", src: ep1IP, qname: "only2.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "per endpoint: allowed for 2", src: ep2IP, qname: "only2.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.21"}, nAnswer: 1, learned: []learnCall{lc(2, "192.0.2.21", 21, 5*time.Minute)},
			upstream: []string{"only2.example.test./A"}},
		{name: "network upstream override", src: ep4IP, qname: "api.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"192.0.2.1"}, nAnswer: 1, learned: []learnCall{lc(4, "192.0.2.1", 10, 5*time.Minute)},
			upstream2: []string{"api.example.test./A"}},
		{name: "container name", src: ep1IP, qname: "db", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess, answers: []string{ep2IP}, nAnswer: 1},
		{name: "container name case and dot", src: ep2IP, qname: "WEB.", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess, answers: []string{ep1IP}, nAnswer: 1},
		{name: "container alias", src: ep2IP, qname: "frontend", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess, answers: []string{ep1IP}, nAnswer: 1},
		{name: "container name AAAA empty", src: ep2IP, qname: "web", qtype: mdns.TypeAAAA, rcode: mdns.RcodeSuccess, nAnswer: 0},
		{name: "container of another network is not visible", src: ep1IP, qname: "other", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "PTR of a network endpoint", src: ep1IP, qname: "3.0.0.127.in-addr.arpa", qtype: mdns.TypePTR, rcode: mdns.RcodeSuccess, nAnswer: 1},
		{name: "PTR of another network's endpoint", src: ep1IP, qname: "5.0.0.127.in-addr.arpa", qtype: mdns.TypePTR, rcode: mdns.RcodeNameError},
		{name: "PTR of a foreign address", src: ep1IP, qname: "1.2.0.192.in-addr.arpa", qtype: mdns.TypePTR, rcode: mdns.RcodeNameError},
		{name: "host.docker.internal allowed is the gateway", src: ep1IP, qname: "host.docker.internal", qtype: mdns.TypeA, rcode: mdns.RcodeSuccess,
			answers: []string{"127.0.0.1"}, nAnswer: 1, learned: []learnCall{lc(1, "127.0.0.1", 13, 5*time.Minute)}},
		{name: "host.docker.internal not allowed", src: ep2IP, qname: "host.docker.internal", qtype: mdns.TypeA, rcode: mdns.RcodeNameError},
		{name: "unknown source refused", src: noIP, qname: "api.example.test", qtype: mdns.TypeA, rcode: mdns.RcodeRefused, nAnswer: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.up.Reset()
			f.up2.Reset()
			f.learner.Reset()
			rcode, m, _ := f.ask(t, tc.src, tc.qname, tc.qtype)
			require.Equal(t, mdns.RcodeToString[tc.rcode], mdns.RcodeToString[rcode])
			if tc.nAnswer >= 0 {
				require.NotNil(t, m)
				require.Equal(t, tc.rcode, m.Rcode)
				require.ElementsMatch(t, tc.answers, addrs(m))
				require.Len(t, m.Answer, tc.nAnswer, "%v", m.Answer)
				for _, rr := range m.Answer {
					require.NotEqual(t, mdns.TypeAAAA, rr.Header().Rrtype)
					require.LessOrEqual(t, rr.Header().Ttl, uint32(3600))
				}
			}
			require.ElementsMatch(t, tc.learned, f.learner.Calls())
			require.Equal(t, tc.upstream, f.up.Queries())
			require.Equal(t, tc.upstream2, f.up2.Queries())
		})
	}
}

func TestHTTPSHints(t *testing.T) {
	f := newFixture(t)
	_, m, _ := f.ask(t, ep1IP, "https.example.test", mdns.TypeHTTPS)
	require.Len(t, m.Answer, 1)
	h := m.Answer[0].(*mdns.HTTPS)
	var v4 []string
	for _, kv := range h.Value {
		require.NotEqual(t, mdns.SVCB_IPV6HINT, kv.Key(), "ipv6hint must be stripped")
		if hint, ok := kv.(*mdns.SVCBIPv4Hint); ok {
			for _, ip := range hint.Hint {
				v4 = append(v4, ip.String())
			}
		}
	}
	require.Equal(t, []string{"192.0.2.10", "192.0.2.11"}, v4)
}

func TestCNAMEChainFiltersUnrelated(t *testing.T) {
	f := newFixture(t)
	_, m, _ := f.ask(t, ep1IP, "cname.example.test", mdns.TypeA)
	for _, rr := range m.Answer {
		require.NotEqual(t, "unrelated.test.", rr.Header().Name)
	}
	// The 7200 s record is capped at the ceiling in the answer.
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok && a.A.String() == "192.0.2.4" {
			require.Equal(t, uint32(3600), a.Hdr.Ttl)
		}
	}
}

func TestSharedAddressPerEndpointKeys(t *testing.T) {
	f := newFixture(t)
	rcode, _, _ := f.ask(t, ep1IP, "shared-a.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	rcode, _, _ = f.ask(t, ep2IP, "shared-b.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []learnCall{
		lc(1, "192.0.2.77", 17, 5*time.Minute),
		lc(2, "192.0.2.77", 20, 5*time.Minute),
	}, f.learner.Calls())
}

func TestLearnedBeforeAnswer(t *testing.T) {
	f := newFixture(t)
	_, m, w := f.ask(t, ep1IP, "cname.example.test", mdns.TypeA)
	require.NotNil(t, m)
	f.learner.mu.Lock()
	defer f.learner.mu.Unlock()
	require.Len(t, f.learner.calls, 2)
	for _, c := range f.learner.calls {
		require.Less(t, c.seq, w.written, "learned entry %s written after the answer", c.Addr)
	}
}

func TestLearnFailureIsServfail(t *testing.T) {
	f := newFixture(t)
	f.learner.err = errors.New("map full")
	rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeServerFailure, rcode)
	require.Nil(t, m, "no answer may leave without its learned entry")
}

func TestPendingEndpoint(t *testing.T) {
	t.Run("answered once its policy arrives", func(t *testing.T) {
		f := newFixture(t)
		f.h.PendingTimeout = 3 * time.Second
		type result struct {
			rcode   int
			m       *mdns.Msg
			elapsed time.Duration
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			r := new(mdns.Msg)
			r.SetQuestion("api.example.test.", mdns.TypeA)
			w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: ep3IP})
			rcode, _ := f.h.ServeDNS(context.Background(), w, r)
			done <- result{rcode, w.Msg, time.Since(start)}
		}()
		time.Sleep(300 * time.Millisecond)
		select {
		case <-done:
			t.Fatal("pending endpoint answered before its policy arrived")
		default:
		}
		snap := testSnapshot(2, f.up2.Addr)
		ep := snap.Endpoints[3]
		ep.Pending = false
		ep.ContainerName = "late"
		ep.Policy = &policy.Policy{Generation: 2, Allows: []policy.Allowed{allow(10, "api.example.test")}}
		f.h.Store.Publish(snap)
		res := <-done
		require.Equal(t, mdns.RcodeSuccess, res.rcode)
		require.Equal(t, []string{"192.0.2.1"}, addrs(res.m))
		require.Less(t, res.elapsed, time.Second, "answered after the policy arrived, well before the timeout")
		require.Equal(t, []learnCall{lc(3, "192.0.2.1", 10, 5*time.Minute)}, f.learner.Calls())
	})
	t.Run("SERVFAIL after the timeout", func(t *testing.T) {
		f := newFixture(t)
		f.h.PendingTimeout = 200 * time.Millisecond
		start := time.Now()
		rcode, m, _ := f.ask(t, ep3IP, "api.example.test", mdns.TypeA)
		require.Equal(t, mdns.RcodeServerFailure, rcode)
		require.Nil(t, m)
		require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
		require.Empty(t, f.up.Queries())
		require.True(t, hasLine(f.log.Lines(), "ERROR", `"reason":"pending-timeout"`, `"endpoint":3`), "%v", f.log.Lines())
	})
	t.Run("no snapshot yet waits too", func(t *testing.T) {
		f := newFixture(t)
		f.h.Store = NewStore()
		f.h.PendingTimeout = 3 * time.Second
		go func() {
			time.Sleep(100 * time.Millisecond)
			f.h.Store.Publish(testSnapshot(1, f.up2.Addr))
		}()
		rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
		require.Equal(t, mdns.RcodeSuccess, rcode)
		require.Equal(t, []string{"192.0.2.1"}, addrs(m))
	})
}

func TestBypassAllowsWithoutLearning(t *testing.T) {
	f := newFixture(t)
	snap := testSnapshot(2, f.up2.Addr)
	snap.Endpoints[2].BypassUntil = time.Now().Add(time.Hour)
	f.h.Store.Publish(snap)
	rcode, m, _ := f.ask(t, ep2IP, "evil.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.68"}, addrs(m))
	require.Empty(t, f.learner.Calls())
}

func TestLabelErrorDeniesEverything(t *testing.T) {
	f := newFixture(t)
	snap := testSnapshot(2, f.up2.Addr)
	snap.Endpoints[1].LabelError = "clawker.allow: bad"
	f.h.Store.Publish(snap)
	rcode, _, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeNameError, rcode)
	require.Empty(t, f.up.Queries())
	require.True(t, hasLine(f.log.Lines(), "WARNING", `"reason":"bad-label"`, `"detail":"clawker.allow: bad"`), "%v", f.log.Lines())
	// Container names of its network still resolve.
	rcode, m, _ := f.ask(t, ep1IP, "db", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{ep2IP}, addrs(m))
}

func hasLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func TestDecisionLogLines(t *testing.T) {
	f := newFixture(t)
	f.ask(t, ep1IP, "evil.example.test", mdns.TypeA)
	f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	f.ask(t, noIP, "api.example.test", mdns.TypeA)
	lines := f.log.Lines()
	require.True(t, hasLine(lines, "WARNING", "CLAWKER-DECISION {", `"source":"dns"`, `"verdict":"deny"`, `"endpoint":1`, `"container":"/web"`, `"dest_name":"evil.example.test"`, `"query_type":"A"`, `"reason":"no-rule"`, `"rcode":"NXDOMAIN"`, `"protocol":"dns"`), "%v", lines)
	require.True(t, hasLine(lines, "INFO", `"verdict":"allow"`, `"endpoint":1`, `"dest_name":"api.example.test"`, `"identity":10`, `"answers":1`), "%v", lines)
	require.True(t, hasLine(lines, "WARNING", `"verdict":"deny"`, `"src_addr":"127.0.0.99"`, `"reason":"unknown-endpoint"`, `"rcode":"REFUSED"`), "%v", lines)
}

func TestTCPClient(t *testing.T) {
	f := newFixture(t)
	r := new(mdns.Msg)
	r.SetQuestion("api.example.test.", mdns.TypeA)
	w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: ep1IP, TCP: true})
	rcode, err := f.h.ServeDNS(context.Background(), w, r)
	require.NoError(t, err)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.1"}, addrs(w.Msg))
}

func TestConcurrentQueries(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
			require.Equal(t, mdns.RcodeSuccess, rcode)
			require.Equal(t, []string{"192.0.2.1"}, addrs(m))
		}()
		if i == 25 {
			f.h.Store.Publish(testSnapshot(3, f.up2.Addr))
		}
	}
	wg.Wait()
	require.Len(t, f.learner.Calls(), 50)
}

func TestUpstreamNext(t *testing.T) {
	f := newFixture(t)
	f.h.UseNext = true
	var nextCalls int
	f.h.Next = plugin.HandlerFunc(func(ctx context.Context, w mdns.ResponseWriter, r *mdns.Msg) (int, error) {
		nextCalls++
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Answer = []mdns.RR{mustRR(r.Question[0].Name + " 60 IN A 192.0.2.42"), mustRR("elsewhere.test. 60 IN A 192.0.2.43")}
		return mdns.RcodeSuccess, w.WriteMsg(m)
	})
	rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.42"}, addrs(m))
	require.Equal(t, 1, nextCalls)
	require.Empty(t, f.up.Queries())
	require.Equal(t, []learnCall{lc(1, "192.0.2.42", 10, 5*time.Minute)}, f.learner.Calls())

	// Denied names never reach the next plugin; networks with their own
	// upstreams keep using them.
	rcode, _, _ = f.ask(t, ep1IP, "evil.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeNameError, rcode)
	rcode, _, _ = f.ask(t, ep4IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, 1, nextCalls)
	require.Equal(t, []string{"api.example.test./A"}, f.up2.Queries())

	// A next plugin that fails gives SERVFAIL and nothing learned.
	f.learner.Reset()
	f.h.Next = plugin.HandlerFunc(func(context.Context, mdns.ResponseWriter, *mdns.Msg) (int, error) {
		return mdns.RcodeServerFailure, errors.New("upstream down")
	})
	rcode, m, _ = f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeServerFailure, rcode)
	require.Nil(t, m)
	require.Empty(t, f.learner.Calls())
}

func TestUpstreamFailover(t *testing.T) {
	f := newFixture(t)
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.LocalAddr().String()
	dead.Close() // nothing listens: ICMP port unreachable, fast error
	f.h.Upstreams = []string{deadAddr, f.up.Addr}
	rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.1"}, addrs(m))

	f.h.Upstreams = []string{deadAddr}
	rcode, _, _ = f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeServerFailure, rcode)
	require.True(t, hasLine(f.log.Lines(), "ERROR", `"reason":"upstream"`), "%v", f.log.Lines())
}

// TestHTTPSParamsStripped: an upstream answering HTTPS records with ech (and
// every other parameter) gives the client only mandatory, alpn, port and
// ipv4hint; the ipv4hint is learned; a mandatory list loses stripped keys.
func TestHTTPSParamsStripped(t *testing.T) {
	f := newFixture(t)
	rcode, m, _ := f.ask(t, ep1IP, "ech.example.test", mdns.TypeHTTPS)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"ech.example.test./HTTPS"}, f.up.Queries(), "the upstream really answered")
	require.Len(t, m.Answer, 2)
	for _, rr := range m.Answer {
		h := rr.(*mdns.HTTPS)
		for _, kv := range h.Value {
			require.Contains(t, []mdns.SVCBKey{mdns.SVCB_MANDATORY, mdns.SVCB_ALPN, mdns.SVCB_PORT, mdns.SVCB_IPV4HINT}, kv.Key(), "%s kept in %s", kv.Key(), h)
			if mand, ok := kv.(*mdns.SVCBMandatory); ok {
				require.Equal(t, []mdns.SVCBKey{mdns.SVCB_ALPN}, mand.Code)
			}
		}
		require.NotContains(t, h.String(), "ech=")
	}
	first := m.Answer[0].(*mdns.HTTPS)
	require.Equal(t, `ech.example.test.	300	IN	HTTPS	1 . mandatory="alpn" alpn="h2,h3" port="8443" ipv4hint="192.0.2.12"`, first.String())
	second := m.Answer[1].(*mdns.HTTPS)
	require.Empty(t, second.Value, "a mandatory list of stripped keys goes with them")
	require.Equal(t, []learnCall{lc(1, "192.0.2.12", 22, 5*time.Minute)}, f.learner.Calls())

	// The reply survives the wire (a client parses it).
	wire, err := m.Pack()
	require.NoError(t, err)
	back := new(mdns.Msg)
	require.NoError(t, back.Unpack(wire))
	require.Len(t, back.Answer, 2)
}

// wireQuestion is what the server hands the handler for name sent on the
// wire: miekg's presentation form after unpacking (bytes outside printable
// ASCII and dots inside a label escaped).
func wireQuestion(t *testing.T, labels []string, qtype uint16) *mdns.Msg {
	t.Helper()
	// Build the wire name by hand: label bytes exactly as given.
	var b []byte
	for _, l := range labels {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	b = append(b, 0)
	q := new(mdns.Msg)
	q.SetQuestion("x.", qtype)
	wire, err := q.Pack()
	require.NoError(t, err)
	// Header (12) + "x." (3 bytes) + type/class (4).
	wire = append(append(append([]byte{}, wire[:12]...), b...), wire[15:]...)
	r := new(mdns.Msg)
	require.NoError(t, r.Unpack(wire))
	return r
}

// askWire sends an A query for the wire name made of labels from ep1.
func (f *fixture) askWire(t *testing.T, labels []string) (*mdns.Msg, int, *dnstest.Recorder) {
	t.Helper()
	r := wireQuestion(t, labels, mdns.TypeA)
	w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: ep1IP})
	rcode, err := f.h.ServeDNS(context.Background(), w, r)
	require.NoError(t, err)
	return r, rcode, w
}

// TestNameAlphabet: a query whose name holds anything the rules cannot
// name is NXDOMAIN, logged and never forwarded, even under an allowed
// wildcard; letters in any case, digits, '-' and '_' still resolve.
func TestNameAlphabet(t *testing.T) {
	f := newFixture(t)
	f.up.catchAll.Store(true)
	wild := []string{"wild", "example", "test"}
	refused := map[string][]string{
		"raw utf-8":           append([]string{"b\xc3\xbccher"}, wild...),
		"invalid utf-8":       append([]string{"x\xff"}, wild...),
		"space":               append([]string{"a b"}, wild...),
		"control byte":        append([]string{"a\x00b"}, wild...),
		"newline":             append([]string{"a\nb"}, wild...),
		"dot inside a label":  append([]string{"x.bad"}, wild...),
		"backslash":           append([]string{`x\y`}, wild...),
		"star label":          append([]string{"*"}, wild...),
		"slash":               append([]string{"a/b"}, wild...),
		"punycode lookalike":  append([]string{"xn--bcher-kva\xc3"}, wild...),
		"utf-8 in the suffix": {"x", "wild", "ex\xc3\xa4mple", "test"},
	}
	for name, labels := range refused {
		t.Run(name, func(t *testing.T) {
			f.up.Reset()
			f.learner.Reset()
			r, rcode, w := f.askWire(t, labels)
			require.Equal(t, "NXDOMAIN", mdns.RcodeToString[rcode], "%q", r.Question[0].Name)
			require.Equal(t, mdns.RcodeNameError, w.Msg.Rcode)
			require.Empty(t, w.Msg.Answer)
			require.Empty(t, f.up.Queries(), "never forwarded")
			require.Empty(t, f.learner.Calls())
			require.True(t, hasLine(f.log.Lines(), "WARNING", `"verdict":"deny"`, `"reason":"bad-name"`, `"rcode":"NXDOMAIN"`), "%v", f.log.Lines())
		})
	}
	// Names that never come off the wire but may reach the handler.
	for _, name := range []string{"a..wild.example.test.", "bücher.wild.example.test.", ".wild.example.test.", "x.wild.example.test.."} {
		f.up.Reset()
		rcode, _, _ := f.ask(t, ep1IP, name, mdns.TypeA)
		require.Equal(t, mdns.RcodeNameError, rcode, name)
		require.Empty(t, f.up.Queries(), name)
	}
	// Controls: the rule alphabet, any case, resolves.
	for _, labels := range [][]string{
		append([]string{"X-1"}, wild...),
		append([]string{"_dmarc"}, wild...),
		{"API", "Example", "TEST"},
		append([]string{"a_b-c", "D9"}, wild...),
	} {
		f.up.Reset()
		r, rcode, w := f.askWire(t, labels)
		require.Equal(t, "NOERROR", mdns.RcodeToString[rcode], "%q", r.Question[0].Name)
		require.NotEmpty(t, w.Msg.Answer)
		require.Len(t, f.up.Queries(), 1)
	}
}

func TestRuleName(t *testing.T) {
	for name, want := range map[string]bool{
		"": true, ".": true, "a": true, "a.": true, "A-b_c.d9.": true, "_dmarc.example.com": true,
		strings.Repeat("a", 63) + ".com": true, strings.Repeat("a", 64) + ".com": false,
		strings.Repeat("a.", 125) + "abc": true, strings.Repeat("a.", 125) + "abcd": false,
		"a..b": false, ".a": false, "a..": false, `a\.b`: false, `a\032b`: false, "a b": false,
		"ü": false, "a*": false, "*.a": false, "a/b": false, "a@b": false, "a:b": false,
	} {
		require.Equal(t, want, ruleName(name), "%q", name)
	}
}

// TestQuotaEvictionLogged: when the writer reports that the endpoint's full
// quota evicted its own oldest entries, the answer still goes out (it was
// learned) and the eviction is logged and counted.
func TestQuotaEvictionLogged(t *testing.T) {
	f := newFixture(t)
	f.learner.evict = 256
	rcode, m, _ := f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"192.0.2.1"}, addrs(m))
	require.True(t, hasLine(f.log.Lines(), "WARNING", "learned map of endpoint 1 full: evicted its 256 oldest"), "%v", f.log.Lines())
}

// TestAuthorityHTTPSDropped: HTTPS/SVCB (and A) records an upstream puts in
// the authority section never reach the client, nor are they learned.
func TestAuthorityHTTPSDropped(t *testing.T) {
	f := newFixture(t)
	rcode, m, _ := f.ask(t, ep1IP, "ech-ns.example.test", mdns.TypeHTTPS)
	require.Equal(t, mdns.RcodeSuccess, rcode)
	require.Equal(t, []string{"ech-ns.example.test./HTTPS"}, f.up.Queries())
	require.Empty(t, m.Answer)
	require.Len(t, m.Ns, 1, "%v", m.Ns)
	require.Equal(t, mdns.TypeSOA, m.Ns[0].Header().Rrtype)
	require.Empty(t, f.learner.Calls())
}
