package builtin

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Default per-endpoint caps (Config.MaxConns, Config.MaxUDPSessions).
const (
	DefaultMaxConns       = 512
	DefaultMaxUDPSessions = 128
)

// Reasons of flows refused by the per-endpoint caps.
const (
	ReasonConnLimit = verdict.ReasonConnLimit
	ReasonUDPLimit  = verdict.ReasonUDPLimit
)

// caps counts the proxied TCP connections and UDP sessions of each source
// address (each endpoint: the closed network anti-spoofs), so one endpoint
// cannot take every socket, goroutine and file descriptor of the plugin.
// Connections count from accept, before the policy lookup, so that the
// wait for a pending endpoint's policy is capped too.
type caps struct {
	mu    sync.Mutex
	conns map[netip.Addr]int
	udp   map[netip.Addr]int
}

func newCaps() *caps { return &caps{conns: map[netip.Addr]int{}, udp: map[netip.Addr]int{}} }

// acquire takes one slot of src in m unless it already holds limit.
func (c *caps) acquire(m map[netip.Addr]int, src netip.Addr, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if limit > 0 && m[src] >= limit {
		return false
	}
	m[src]++
	return true
}

func (c *caps) release(m map[netip.Addr]int, src netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m[src] <= 1 {
		delete(m, src)
		return
	}
	m[src]--
}

// admitConn takes a connection slot for src; the returned func gives it
// back.
func (e *Engine) admitConn(src netip.Addr) (func(), bool) {
	if !e.caps.acquire(e.caps.conns, src, e.cfg.MaxConns) {
		return nil, false
	}
	return func() { e.caps.release(e.caps.conns, src) }, true
}

// admitUDP takes a UDP session slot for src.
func (e *Engine) admitUDP(src netip.Addr) (func(), bool) {
	if !e.caps.acquire(e.caps.udp, src, e.cfg.MaxUDPSessions) {
		return nil, false
	}
	return func() { e.caps.release(e.caps.udp, src) }, true
}

// refuseCapped resets a connection over its endpoint's cap, counts it and
// logs it (through the per-endpoint log limit).
func (e *Engine) refuseCapped(def model.Listener, c net.Conn, src netip.Addr, reason policy.Reason, limit int) {
	f := &flow{e: e, def: def, start: time.Now(), src: src, conn: c, l4: policy.L4TCP, port: def.OrigPort}
	f.tcp, _ = c.(*net.TCPConn)
	f.refuseCapped(reason, limit)
	f.reset()
	f.finish()
}

func (f *flow) refuseCapped(reason policy.Reason, limit int) {
	if c := f.e.state(); c != nil {
		f.ep, _ = c.snap.EndpointByIP(f.src)
	}
	f.e.metrics.capped.WithLabelValues(string(reason)).Inc()
	f.deny(verdict.Refuse(verdict.Flow{Listener: verdict.Listener(f.def.Kind), Name: f.name, Port: f.port, L4: f.l4}, verdict.Verdict{},
		reason, "the endpoint already has "+itoa(limit)+" of these open; new ones are refused until some close"))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// logKey is the key of the flow's endpoint in Config.LogLimit (0 for
// sources that are no endpoint).
func (f *flow) logKey() uint32 {
	if f.ep != nil {
		return f.ep.Index
	}
	return 0
}
