package wire

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin/learn"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
)

func TestLearnObservation(t *testing.T) {
	now := time.Now()
	dst := netip.MustParseAddr("10.220.0.16")
	for _, tc := range []struct {
		d    builtin.Decision
		want learn.Observation
		ok   bool
	}{
		{builtin.Decision{Time: now, Mode: "passthrough", Name: "a.example.test", Port: 443},
			learn.Observation{Time: now, Proto: "https", Name: "a.example.test", Port: 443}, true},
		{builtin.Decision{Time: now, Mode: "inspect", Name: "a.example.test", Port: 443, Method: "GET", Path: "/v1/x"},
			learn.Observation{Time: now, Proto: "https", Name: "a.example.test", Port: 443, Inspected: true, Method: "GET", Path: "/v1/x"}, true},
		{builtin.Decision{Time: now, Mode: "http", Name: "p.example.test", Port: 80, Method: "POST", Path: "/a/b"},
			learn.Observation{Time: now, Proto: "http", Name: "p.example.test", Port: 80, Inspected: true, Method: "POST", Path: "/a/b"}, true},
		{builtin.Decision{Time: now, Mode: "ip", Stream: "ssh", Dst: dst, Port: 22},
			learn.Observation{Time: now, Proto: "ssh", Addr: dst, Port: 22}, true},
		{builtin.Decision{Time: now, Mode: "ip", Stream: "tcp", Dst: dst, Port: 5432},
			learn.Observation{Time: now, Proto: "tcp", Addr: dst, Port: 5432}, true},
		{builtin.Decision{Time: now, Mode: "", Name: "x"}, learn.Observation{}, false},
	} {
		got, ok := observation(tc.d)
		require.Equal(t, tc.ok, ok)
		if ok {
			require.Equal(t, tc.want, got)
		}
	}
	// The DNS wrapper passes every record on, learning endpoints' or not.
	var l learnSink
	var passed int
	h := l.dns(func(decisionlog.Record) { passed++ })
	h(decisionlog.Record{Verdict: decisionlog.Allow, Endpoint: 2, DestName: "x", Addrs: []string{"10.0.0.1"}})
	h(decisionlog.Record{Verdict: decisionlog.Deny, Endpoint: 2, DestName: "y"})
	require.Equal(t, 2, passed)
}
