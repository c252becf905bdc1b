package dns

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
)

// askEDNS is ask with an EDNS OPT record (UDP size 1232) in the query.
func (f *fixture) askEDNS(t *testing.T, src, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	r := new(mdns.Msg)
	r.SetQuestion(mdns.Fqdn(name), qtype)
	r.SetEdns0(1232, false)
	w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: src})
	_, err := f.h.ServeDNS(context.Background(), w, r)
	require.NoError(t, err)
	require.NotNil(t, w.Msg)
	return w.Msg
}

func ede(m *mdns.Msg) *mdns.EDNS0_EDE {
	if o := m.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*mdns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

// TestExtendedDNSErrorOnDenial: an NXDOMAIN for a name outside the rules
// carries EDE 15 (Blocked) with what would allow it, for a query with EDNS
// only; allowed answers and queries without EDNS carry none.
func TestExtendedDNSErrorOnDenial(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name, text string
	}{
		{"evil.example.test", "clawker-fw: evil.example.test denied (no-rule); allow it with the container label clawker.allow=evil.example.test,"},
		{"bad.wild.example.test", "clawker-fw: bad.wild.example.test denied (deny-rule); a deny rule"},
		{"b\\195\\188cher.wild.example.test", "clawker-fw: query names may hold only letters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := f.askEDNS(t, ep1IP, c.name, mdns.TypeA)
			require.Equal(t, mdns.RcodeNameError, m.Rcode)
			e := ede(m)
			require.NotNil(t, e, "EDE in %v", m)
			require.Equal(t, mdns.ExtendedErrorCodeBlocked, e.InfoCode)
			require.Contains(t, e.ExtraText, c.text)
			require.Equal(t, uint16(1232), m.IsEdns0().UDPSize())

			_, plain, _ := f.ask(t, ep1IP, c.name, mdns.TypeA)
			require.Equal(t, mdns.RcodeNameError, plain.Rcode)
			require.Nil(t, plain.IsEdns0(), "no OPT for a query without EDNS (RFC 6891)")
		})
	}
	m := f.askEDNS(t, ep1IP, "api.example.test", mdns.TypeA)
	require.Equal(t, mdns.RcodeSuccess, m.Rcode)
	require.Nil(t, ede(m), "allowed answers carry no EDE")
	// Wire round trip: the option survives packing (what a client parses).
	m = f.askEDNS(t, ep1IP, "evil.example.test", mdns.TypeA)
	raw, err := m.Pack()
	require.NoError(t, err)
	back := new(mdns.Msg)
	require.NoError(t, back.Unpack(raw))
	require.Equal(t, mdns.ExtendedErrorCodeBlocked, ede(back).InfoCode)
}

// TestDecisionsReachEventsSocket: with an events socket the decisions leave
// as typed records (a real Sink to a real listener), not as log lines.
func TestDecisionsReachEventsSocket(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(t.TempDir(), "events.sock")
	got := make(chan decisionlog.Record, 16)
	l, err := decisionlog.Listen(path, decisionlog.SourceDNS, func(r decisionlog.Record) { got <- r })
	require.NoError(t, err)
	defer l.Close()
	sink := decisionlog.NewSink(path, 16)
	defer sink.Close()
	f.h.Decisions = func(r decisionlog.Record) { sink.Send(r) }

	f.ask(t, ep1IP, "evil.example.test", mdns.TypeA)
	f.ask(t, ep1IP, "api.example.test", mdns.TypeA)
	var recs []decisionlog.Record
	for len(recs) < 2 {
		select {
		case r := <-got:
			recs = append(recs, r)
		case <-time.After(5 * time.Second):
			t.Fatalf("records: %+v", recs)
		}
	}
	require.Equal(t, decisionlog.Deny, recs[0].Verdict)
	require.Equal(t, "evil.example.test", recs[0].DestName)
	require.Equal(t, "no-rule", recs[0].Reason)
	require.Equal(t, uint32(1), recs[0].Endpoint)
	require.Equal(t, "NXDOMAIN", recs[0].Rcode)
	require.Equal(t, decisionlog.Allow, recs[1].Verdict)
	require.Equal(t, 1, recs[1].Answers)
	require.Empty(t, f.log.Lines(), "no decision lines when records go to the socket")
}
