package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// fakeUpstream is an authoritative server for test zones on 127.0.0.1:0
// (UDP and TCP). Tests never reach a real resolver.
type fakeUpstream struct {
	Addr    string
	mu      sync.Mutex
	zone    map[string][]mdns.RR // key "name./TYPE"
	auth    map[string][]mdns.RR // authority records of an answer, same key
	queries []string             // "name/TYPE" seen, in order
	udp     *mdns.Server
	tcp     *mdns.Server
	// catchAll answers every A query without a zone entry with 192.0.2.200.
	catchAll atomic.Bool
}

func zoneKey(name string, t uint16) string {
	return strings.ToLower(mdns.Fqdn(name)) + "/" + mdns.Type(t).String()
}

// newFakeUpstream serves zone: key "name/TYPE" -> answer RRs in
// presentation format ("name/TYPE/NS": authority records of that answer).
func newFakeUpstream(t testing.TB, zone map[string][]string) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{zone: map[string][]mdns.RR{}, auth: map[string][]mdns.RR{}}
	for k, rrs := range zone {
		name, typ, _ := strings.Cut(k, "/")
		typ, section, _ := strings.Cut(typ, "/")
		key := zoneKey(name, mdns.StringToType[typ])
		into := f.zone
		if section == "NS" {
			into = f.auth
		}
		if _, ok := into[key]; !ok {
			into[key] = []mdns.RR{} // the name exists even with no records
		}
		for _, s := range rrs {
			rr, err := mdns.NewRR(s)
			require.NoError(t, err, s)
			into[key] = append(into[key], rr)
		}
	}
	// One port for UDP and TCP: retry until a UDP port is also free for TCP.
	var pc net.PacketConn
	var ln net.Listener
	for range 100 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	require.NotNil(t, pc, "no port free for both UDP and TCP")
	f.Addr = pc.LocalAddr().String()
	f.udp = &mdns.Server{PacketConn: pc, Handler: f}
	f.tcp = &mdns.Server{Listener: ln, Handler: f}
	go f.udp.ActivateAndServe()
	go f.tcp.ActivateAndServe()
	t.Cleanup(func() {
		f.udp.Shutdown()
		f.tcp.Shutdown()
	})
	return f
}

func (f *fakeUpstream) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	q := r.Question[0]
	f.mu.Lock()
	f.queries = append(f.queries, strings.ToLower(q.Name)+"/"+mdns.Type(q.Qtype).String())
	rrs := f.zone[zoneKey(q.Name, q.Qtype)]
	auth := f.auth[zoneKey(q.Name, q.Qtype)]
	exists := false
	for k := range f.zone {
		if strings.HasPrefix(k, strings.ToLower(q.Name)+"/") {
			exists = true
		}
	}
	f.mu.Unlock()
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	for _, rr := range rrs {
		m.Answer = append(m.Answer, mdns.Copy(rr))
	}
	for _, rr := range auth {
		m.Ns = append(m.Ns, mdns.Copy(rr))
	}
	if f.catchAll.Load() && len(rrs) == 0 {
		if q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 200)})
		}
		exists = true
	}
	if !exists {
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{mustRR("example.test. 60 IN SOA ns.example.test. host.example.test. 1 60 60 60 60")}
	}
	w.WriteMsg(m)
}

func (f *fakeUpstream) Queries() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.queries...)
}

func (f *fakeUpstream) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = nil
}

func mustRR(s string) mdns.RR {
	rr, err := mdns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

// learnCall is one write at the map boundary.
type learnCall struct {
	Index uint32
	Addr  netip.Addr
	ID    policy.Identity
	TTL   time.Duration
	seq   int64
}

// fakeLearner records writes; seq orders them against answers written.
type fakeLearner struct {
	mu    sync.Mutex
	calls []learnCall
	seq   *atomic.Int64
	err   error
	// evict is what every Learn reports as evicted (a full quota).
	evict int
}

func (l *fakeLearner) Learn(index uint32, addr netip.Addr, id policy.Identity, ttl time.Duration) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return 0, l.err
	}
	l.calls = append(l.calls, learnCall{Index: index, Addr: addr, ID: id, TTL: ttl, seq: l.seq.Add(1)})
	return l.evict, nil
}

func (l *fakeLearner) Calls() []learnCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]learnCall, len(l.calls))
	for i, c := range l.calls {
		c.seq = 0
		out[i] = c
	}
	return out
}

func (l *fakeLearner) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = nil
}

// seqWriter records the sequence number at which the answer was written.
type seqWriter struct {
	*dnstest.Recorder
	seq     *atomic.Int64
	written int64
}

func (w *seqWriter) WriteMsg(m *mdns.Msg) error {
	w.written = w.seq.Add(1)
	return w.Recorder.WriteMsg(m)
}

// logRecorder captures decision lines.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) add(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+fmt.Sprintf(format, v...))
}
func (l *logRecorder) Info(v ...any)               { l.add("INFO", "%s", fmt.Sprint(v...)) }
func (l *logRecorder) Warning(v ...any)            { l.add("WARNING", "%s", fmt.Sprint(v...)) }
func (l *logRecorder) Error(v ...any)              { l.add("ERROR", "%s", fmt.Sprint(v...)) }
func (l *logRecorder) Debugf(f string, v ...any)   { l.add("DEBUG", f, v...) }
func (l *logRecorder) Infof(f string, v ...any)    { l.add("INFO", f, v...) }
func (l *logRecorder) Warningf(f string, v ...any) { l.add("WARNING", f, v...) }
func (l *logRecorder) Errorf(f string, v ...any)   { l.add("ERROR", f, v...) }

func (l *logRecorder) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Test endpoints: loopback addresses stand in for endpoint IPs.
const (
	ep1IP = "127.0.0.2"  // network n1, container "web"
	ep2IP = "127.0.0.3"  // network n1, container "db"
	ep3IP = "127.0.0.4"  // network n1, pending
	ep4IP = "127.0.0.5"  // network n2 (own upstreams), container "other"
	noIP  = "127.0.0.99" // no endpoint
)

func allow(id policy.Identity, pattern string) policy.Allowed {
	return policy.Allowed{Identity: id, Pattern: pattern, Ports: []policy.PortRange{{Proto: policy.ProtoHTTPS, Lo: 443, Hi: 443}}}
}

func deny(pattern string) policy.Denied { return policy.Denied{Pattern: pattern} }

// testSnapshot builds the fixture; n2Upstream is network n2's override.
func testSnapshot(gen uint64, n2Upstream string) *policy.Snapshot {
	p1 := &policy.Policy{Generation: gen, Allows: []policy.Allowed{
		allow(10, "api.example.test"),
		allow(12, "cname.example.test"),
		allow(13, "host.docker.internal"),
		allow(14, "https.example.test"),
		allow(15, "ttl-long.example.test"),
		allow(16, "ttl-mid.example.test"),
		allow(17, "shared-a.example.test"),
		allow(18, "txt.example.test"),
		allow(19, "missing.example.test"),
		allow(11, ".wild.example.test"),
		allow(22, "ech.example.test"),
		allow(23, "ech-ns.example.test"),
	}, Denies: []policy.Denied{deny("bad.wild.example.test"), {Pattern: "192.0.2.99/32", Prefix: netip.MustParsePrefix("192.0.2.99/32")}}}
	p2 := &policy.Policy{Generation: gen, Allows: []policy.Allowed{allow(20, "shared-b.example.test"), allow(21, "only2.example.test")}}
	p4 := &policy.Policy{Generation: gen, Allows: []policy.Allowed{allow(10, "api.example.test")}}
	return &policy.Snapshot{
		Generation: gen,
		Networks: map[string]*policy.Network{
			"n1": {ID: "n1", Name: "agents", Subnet: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1")},
			"n2": {ID: "n2", Name: "other", Subnet: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1"),
				Settings: policy.NetworkSettings{DNSUpstreams: []string{n2Upstream}}},
		},
		Endpoints: map[uint32]*policy.Endpoint{
			1: {Index: 1, NetworkID: "n1", IP: netip.MustParseAddr(ep1IP), ContainerName: "/web", Aliases: []string{"Frontend"}, Policy: p1},
			2: {Index: 2, NetworkID: "n1", IP: netip.MustParseAddr(ep2IP), ContainerName: "db", Policy: p2},
			3: {Index: 3, NetworkID: "n1", IP: netip.MustParseAddr(ep3IP), Pending: true},
			4: {Index: 4, NetworkID: "n2", IP: netip.MustParseAddr(ep4IP), ContainerName: "other", Policy: p4},
		},
	}
}

var testZone = map[string][]string{
	"api.example.test/A":        {"api.example.test. 60 IN A 192.0.2.1"},
	"api.example.test/AAAA":     {"api.example.test. 60 IN AAAA 2001:db8::1"},
	"api.example.test/TXT":      {`api.example.test. 60 IN TXT "hello"`},
	"txt.example.test/TXT":      {`txt.example.test. 60 IN TXT "v=1"`},
	"wild.example.test/A":       {"wild.example.test. 60 IN A 192.0.2.2"},
	"x.wild.example.test/A":     {"x.wild.example.test. 60 IN A 192.0.2.3"},
	"a.b.wild.example.test/A":   {"a.b.wild.example.test. 60 IN A 192.0.2.8"},
	"cdn.wild.example.test/A":   {"cdn.wild.example.test. 60 IN A 192.0.2.99", "cdn.wild.example.test. 60 IN A 192.0.2.98"},
	"bad.wild.example.test/A":   {"bad.wild.example.test. 60 IN A 192.0.2.66"},
	"x.bad.wild.example.test/A": {"x.bad.wild.example.test. 60 IN A 192.0.2.67"},
	"evil.example.test/A":       {"evil.example.test. 60 IN A 192.0.2.68"},
	"only2.example.test/A":      {"only2.example.test. 60 IN A 192.0.2.21"},
	"ttl-long.example.test/A":   {"ttl-long.example.test. 86400 IN A 192.0.2.6"},
	"ttl-mid.example.test/A":    {"ttl-mid.example.test. 600 IN A 192.0.2.9"},
	"shared-a.example.test/A":   {"shared-a.example.test. 60 IN A 192.0.2.77"},
	"shared-b.example.test/A":   {"shared-b.example.test. 60 IN A 192.0.2.77"},
	"host.docker.internal/A":    {"host.docker.internal. 60 IN A 192.0.2.250"},
	"https.example.test/HTTPS":  {`https.example.test. 300 IN HTTPS 1 . alpn="h2" ipv4hint="192.0.2.10,192.0.2.11" ipv6hint="2001:db8::10"`},
	"https.example.test/A":      {"https.example.test. 300 IN A 192.0.2.10"},
	// Every parameter a server could send: only mandatory (pruned), alpn,
	// port and ipv4hint may reach the client.
	"ech.example.test/HTTPS": {`ech.example.test. 300 IN HTTPS 1 . mandatory=alpn,ech alpn="h2,h3" port=8443 ipv4hint="192.0.2.12" ech="AEX+DQBBpQAgACB/6Pfo" ipv6hint="2001:db8::12" dohpath="/dns-query{?dns}" ohttp key65333="private"`,
		`ech.example.test. 300 IN HTTPS 2 . mandatory=ech ech="AEX+DQBBpQAgACB/6Pfo"`},
	// An upstream that puts an HTTPS record (with ech) and an A record in
	// the authority section of a NODATA answer.
	"ech-ns.example.test/HTTPS": {},
	"ech-ns.example.test/HTTPS/NS": {`ech-ns.example.test. 300 IN HTTPS 1 . ech="AEX+DQBBpQAgACB/6Pfo" ipv4hint="192.0.2.13"`,
		"ech-ns.example.test. 300 IN A 192.0.2.14", "example.test. 60 IN SOA ns.example.test. host.example.test. 1 60 60 60 60"},
	"cname.example.test/A": {
		"cname.example.test. 30 IN CNAME c1.cdn.test.",
		"c1.cdn.test. 30 IN CNAME c2.cdn.test.",
		"c2.cdn.test. 7200 IN A 192.0.2.4",
		"c2.cdn.test. 20 IN A 192.0.2.5",
		"unrelated.test. 60 IN A 192.0.2.99",
	},
	"c2.cdn.test/A": {"c2.cdn.test. 20 IN A 192.0.2.4"},
}

// fixture is a handler wired to fakes at the upstream and map boundaries.
type fixture struct {
	h       *Clawker
	up      *fakeUpstream
	up2     *fakeUpstream
	learner *fakeLearner
	log     *logRecorder
	seq     *atomic.Int64
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{seq: new(atomic.Int64), log: &logRecorder{}}
	f.up = newFakeUpstream(t, testZone)
	f.up2 = newFakeUpstream(t, testZone)
	f.learner = &fakeLearner{seq: f.seq}
	store := NewStore()
	store.Publish(testSnapshot(1, f.up2.Addr))
	f.h = New(store, f.learner)
	f.h.Upstreams = []string{f.up.Addr}
	f.h.Log = f.log
	f.h.PendingTimeout = 2 * time.Second
	t.Cleanup(f.h.Close)
	return f
}

// ask sends one query from src through the handler.
func (f *fixture) ask(t testing.TB, src, name string, qtype uint16) (int, *mdns.Msg, *seqWriter) {
	t.Helper()
	r := new(mdns.Msg)
	r.SetQuestion(mdns.Fqdn(name), qtype)
	w := &seqWriter{Recorder: dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: src}), seq: f.seq}
	rcode, err := f.h.ServeDNS(context.Background(), w, r)
	require.NoError(t, err)
	return rcode, w.Msg, w
}

// addrs lists the A record addresses of m's answer.
func addrs(m *mdns.Msg) []string {
	var out []string
	if m == nil {
		return nil
	}
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
