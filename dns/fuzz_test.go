package dns

import (
	"context"
	"strings"
	"testing"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"
)

// FuzzServeDNS sends random names and types from the fixture's endpoints.
// Invariants: no panic; an answer with records is only ever given for a
// name the asking endpoint's policy allows (or a local container name / PTR
// of its network); a name the policy does not allow never reaches the
// upstream; learned entries only for allowed names; a name outside the
// rules' alphabet (as the handler sees it) is NXDOMAIN and never forwarded.
func FuzzServeDNS(f *testing.F) {
	for _, s := range []string{"api.example.test", "x.wild.example.test", "bad.wild.example.test", "evil.example.test",
		"cname.example.test", "db", "WEB.", "3.0.0.127.in-addr.arpa", "host.docker.internal", "", ".", "a..b",
		"API.EXAMPLE.TEST.", "api.example.test.evil.test", "wild.example.test\\000", "x\\.wild.example.test",
		"b\xc3\xbccher.wild.example.test", "b\\195\\188cher.wild.example.test", "a b.wild.example.test", "_srv._tcp.wild.example.test"} {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeTXT, mdns.TypePTR, mdns.TypeHTTPS, mdns.TypeANY, 0, 65535} {
			f.Add(s, qt, uint8(0))
			f.Add(s, qt, uint8(1))
		}
	}
	fx := newFixture(f)
	fx.up.catchAll.Store(true)
	srcs := []string{ep1IP, ep2IP, ep4IP}
	f.Fuzz(func(t *testing.T, name string, qtype uint16, srcIdx uint8) {
		src := srcs[int(srcIdx)%len(srcs)]
		fx.up.Reset()
		fx.up2.Reset()
		fx.learner.Reset()
		r := new(mdns.Msg)
		r.SetQuestion(mdns.Fqdn(name), qtype)
		w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: src})
		rcode, _ := fx.h.ServeDNS(context.Background(), w, r)

		snap, _ := fx.h.Store.Load()
		ep, _ := snap.EndpointByIP(mustAddr(src))
		lname := strings.ToLower(strings.TrimSuffix(mdns.Fqdn(name), "."))
		allowed := ep.Policy.MatchName(lname, 0, 0).Allowed
		st := fx.h.Store.view()
		_, local := st.names[nameKey{ep.NetworkID, lname}]
		if ip, ok := reverseAddr(lname); ok && qtype == mdns.TypePTR {
			if peer, ok := snap.EndpointByIP(ip); ok && peer.NetworkID == ep.NetworkID && st.ptr[ip] != "" {
				local = true
			}
		}
		if w.Msg != nil && len(w.Msg.Answer) > 0 && !allowed && !local {
			t.Fatalf("answer for %q (type %d) from %s outside its policy: rcode %d %v", name, qtype, src, rcode, w.Msg.Answer)
		}
		if !allowed && (len(fx.up.Queries()) > 0 || len(fx.up2.Queries()) > 0) {
			t.Fatalf("denied name %q reached the upstream: %v %v", name, fx.up.Queries(), fx.up2.Queries())
		}
		if !allowed && len(fx.learner.Calls()) > 0 {
			t.Fatalf("denied name %q learned %v", name, fx.learner.Calls())
		}
		if !ruleName(r.Question[0].Name) {
			if rcode != mdns.RcodeNameError || len(fx.up.Queries()) > 0 || len(fx.up2.Queries()) > 0 {
				t.Fatalf("name %q outside the alphabet: rcode %d, upstream saw %v %v", r.Question[0].Name, rcode, fx.up.Queries(), fx.up2.Queries())
			}
		}
		if w.Msg != nil {
			for _, rr := range w.Msg.Answer {
				if rr.Header().Rrtype == mdns.TypeAAAA {
					t.Fatalf("AAAA answered for %q", name)
				}
			}
		}
	})
}
