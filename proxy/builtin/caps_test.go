package builtin

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/ratelimit"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// TestConnCapPerEndpoint: one endpoint at its cap gets new connections
// refused (reset, counted, logged with the reason) while another endpoint on
// the same listener is served; a slot comes back when a connection closes.
func TestConnCapPerEndpoint(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxConns = 3 })
	echo := newTCPEcho(t, "127.0.0.1")
	h.mapPort(5432, echo)
	h.dns.set("db.example.test", "127.0.0.1")
	pol := func() *policy.Policy {
		return &policy.Policy{Allows: []policy.Allowed{allow("db.example.test", policy.ProtoTCP, 5432, 5432)}}
	}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol()), endpoint(2, "127.0.0.3", pol())))
	addr := h.dedicatedAddr(policy.ProtoTCP, "db.example.test", 5432)

	roundTrip := func(c *net.TCPConn) error {
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ping\n" {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	var held []*net.TCPConn
	for range 3 {
		c := dialFrom(t, "127.0.0.2", addr)
		require.NoError(t, roundTrip(c))
		held = append(held, c)
	}
	// The reset may even beat connect's return on loopback.
	if over, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp4", addr); err == nil {
		require.Error(t, roundTrip(over.(*net.TCPConn)), "the fourth connection of endpoint 1 is refused")
		over.Close()
	}
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonConnLimit })
	require.Equal(t, uint32(1), d.Endpoint)
	require.False(t, d.Allowed)
	require.Equal(t, 1.0, counterValue(h.e.metrics.capped.WithLabelValues(string(ReasonConnLimit))))
	require.Eventually(t, func() bool {
		for _, en := range h.hook.AllEntries() {
			if en.Message == logMessage && en.Data[fieldReason] == string(ReasonConnLimit) {
				return true
			}
		}
		return false
	}, 3*time.Second, 20*time.Millisecond, "logged with its reason")

	other := dialFrom(t, "127.0.0.3", addr)
	require.NoError(t, roundTrip(other), "another endpoint is not starved")
	other.Close()

	held[0].Close()
	var last error
	require.Eventually(t, func() bool {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: time.Second}
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			last = err
			return false
		}
		defer c.Close()
		last = roundTrip(c.(*net.TCPConn))
		return last == nil
	}, 5*time.Second, 50*time.Millisecond, "a closed connection gives its slot back: %v", &last)
	for _, c := range held[1:] {
		c.Close()
	}
}

// TestUDPSessionCapPerEndpoint: over its cap an endpoint's new UDP sessions
// are dropped (counted) while its existing session and another endpoint's
// keep working.
func TestUDPSessionCapPerEndpoint(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxUDPSessions = 2; c.UDPIdle = 5 * time.Second })
	h.mapPort(5353, newUDPEcho(t))
	h.dns.set("udp.example.test", "127.0.0.1")
	pol := func() *policy.Policy {
		return &policy.Policy{Allows: []policy.Allowed{allow("udp.example.test", policy.ProtoUDP, 5353, 5353)}}
	}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol()), endpoint(2, "127.0.0.3", pol())))
	l, ok := h.listenerByKey("dedicated:udp:udp.example.test:5353")
	require.True(t, ok)
	addr := h.e.Addr(l.Port, policy.L4UDP).(*net.UDPAddr)

	open := func(src string) *net.UDPConn {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	exchange := func(c *net.UDPConn) error {
		buf := make([]byte, 100)
		var rerr error
		for range 3 {
			if _, err := c.Write([]byte("q")); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
			if _, rerr = c.Read(buf); rerr == nil {
				return nil
			}
		}
		return rerr
	}
	s1, s2 := open("127.0.0.2"), open("127.0.0.2")
	require.NoError(t, exchange(s1))
	require.NoError(t, exchange(s2))
	s3 := open("127.0.0.2")
	require.Error(t, exchange(s3), "a third session of endpoint 1 is refused")
	require.GreaterOrEqual(t, counterValue(h.e.metrics.capped.WithLabelValues(string(ReasonUDPLimit))), 1.0)
	d := h.waitDecision(func(d Decision) bool { return d.Reason == ReasonUDPLimit })
	require.Equal(t, uint32(1), d.Endpoint)
	require.NoError(t, exchange(s1), "its existing sessions keep working")
	require.NoError(t, exchange(open("127.0.0.3")), "another endpoint is not starved")
}

// TestDecisionLinesRateLimitedPerEndpoint: a flood of denied connections
// from one endpoint writes at most the burst of lines; the rest are
// counted, and another endpoint's lines still get through.
func TestDecisionLinesRateLimitedPerEndpoint(t *testing.T) {
	lim := ratelimit.New(0.001, 5)
	h := newHarness(t, func(c *Config) { c.LogLimit = lim })
	h.dns.set("db.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("db.example.test", policy.ProtoTCP, 5432, 5432)}}
	// Endpoint 3 gives the listener a reason to exist; 1 and 2 are denied.
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", &policy.Policy{}), endpoint(2, "127.0.0.3", &policy.Policy{}), endpoint(3, "127.0.0.4", pol)))
	addr := h.dedicatedAddr(policy.ProtoTCP, "db.example.test", 5432)
	lines := func(idx uint32) int {
		n := 0
		for _, en := range h.hook.AllEntries() {
			if en.Message == logMessage && en.Data[fieldEndpoint] == idx {
				n++
			}
		}
		return n
	}
	for range 20 {
		requireReset(t, "127.0.0.3", addr)
	}
	require.Eventually(t, func() bool { return lim.Dropped() == 15 }, 3*time.Second, 20*time.Millisecond)
	require.Equal(t, 5, lines(2))
	require.Equal(t, map[uint32]uint64{2: 15}, lim.TakeDropped())
	requireReset(t, "127.0.0.2", addr)
	require.Eventually(t, func() bool { return lines(1) == 1 }, 3*time.Second, 20*time.Millisecond, "endpoint 1 has its own bucket")
}

// newUDPEcho serves UDP on 127.0.0.1, answering "echo:" + each datagram,
// and returns its port.
func newUDPEcho(t testing.TB) uint16 {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("echo:"), buf[:n]...), a)
		}
	}()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// TestBindFailureIsReported: a listener whose port is taken is reported as
// a *model.BindError naming it (the plugin withdraws its routes), the other
// listeners open, and the next Apply retries it.
func TestBindFailureIsReported(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	h := newHarness(t, func(c *Config) {
		c.ListenPort = func(p uint16) uint16 {
			if p == model.AllocLo {
				return busyPort
			}
			return 0
		}
	})
	h.dns.set("db.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{allow("db.example.test", policy.ProtoTCP, 5432, 5433)}}
	snap := snapshot(1, endpoint(1, "127.0.0.2", pol))
	m, err := model.Build(snap, h.alloc)
	require.NoError(t, err)
	err = h.e.Apply(snap, m)
	var be *model.BindError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Failed, 1)
	require.Equal(t, model.AllocLo, be.Failed[0].Listener.Port)
	require.Contains(t, be.Failed[0].Err, "address already in use")
	require.Nil(t, h.e.Addr(model.AllocLo, policy.L4TCP))
	require.NotNil(t, h.e.Addr(model.AllocLo+1, policy.L4TCP), "the other listener opened")
	require.Len(t, h.e.Health().Errors, 1)

	busy.Close()
	require.NoError(t, h.e.Apply(snap, m), "retried by the next Apply")
	require.NotNil(t, h.e.Addr(model.AllocLo, policy.L4TCP))
}
