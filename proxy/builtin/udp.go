package builtin

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// udpRelay relays the datagrams of one dedicated UDP listener. Each client
// address gets a session with its own connected upstream socket; a session
// ends after Config.UDPIdle without traffic or when a policy change denies
// it.
type udpRelay struct {
	e  *Engine
	l  *listener
	mu sync.Mutex
	// sessions is keyed by the client's address.
	sessions map[netip.AddrPort]*udpSession
}

type udpSession struct {
	r       *udpRelay
	client  netip.AddrPort
	ready   chan struct{}
	up      net.Conn // nil when denied
	queue   [][]byte // datagrams that arrived before the decision
	last    atomic.Int64
	bytesUp atomic.Int64
	bytesDn atomic.Int64
	closed  atomic.Bool
	once    sync.Once
	release func() // gives back the endpoint's session slot
}

const udpQueueMax = 16

func newUDPRelay(e *Engine, l *listener) *udpRelay {
	return &udpRelay{e: e, l: l, sessions: map[netip.AddrPort]*udpSession{}}
}

func (r *udpRelay) serve() {
	buf := make([]byte, 64<<10)
	defer r.closeAll()
	for {
		n, addr, err := r.l.pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-r.l.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		client := ua.AddrPort()
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		pkt := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		s, ok := r.sessions[client]
		if !ok {
			release, admitted := r.e.admitUDP(client.Addr())
			if !admitted {
				r.mu.Unlock()
				r.refuseCapped(client)
				continue
			}
			s = &udpSession{r: r, client: client, ready: make(chan struct{}), release: release}
			s.last.Store(time.Now().UnixNano())
			s.queue = append(s.queue, pkt)
			r.sessions[client] = s
			r.mu.Unlock()
			r.e.connWG.Add(1)
			go func() {
				defer r.e.connWG.Done()
				s.run()
			}()
			continue
		}
		select {
		case <-s.ready:
			r.mu.Unlock()
			s.last.Store(time.Now().UnixNano())
			if s.up != nil {
				if _, err := s.up.Write(pkt); err == nil {
					s.bytesUp.Add(int64(len(pkt)))
				}
			}
		default:
			if len(s.queue) < udpQueueMax {
				s.queue = append(s.queue, pkt)
			}
			r.mu.Unlock()
		}
	}
}

func (r *udpRelay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sessions {
		s.close()
	}
}

func (s *udpSession) close() {
	s.once.Do(func() {
		s.closed.Store(true)
		if s.up != nil {
			_ = s.up.Close()
		}
	})
}

// run decides the session, relays upstream replies and ends on idle.
func (s *udpSession) run() {
	r := s.r
	e := r.e
	def := r.l.def
	f := &flow{e: e, def: def, start: time.Now(), src: s.client.Addr(), name: def.Dst, port: def.OrigPort, l4: policy.L4UDP, mode: "udp", conn: nopConn{}}
	defer func() {
		r.mu.Lock()
		if r.sessions[s.client] == s {
			delete(r.sessions, s.client)
		}
		r.mu.Unlock()
		s.release()
		f.up.Store(s.bytesUp.Load())
		f.down.Store(s.bytesDn.Load())
		f.finish()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	who := e.await(ctx, f.src)
	f.ep = who.Endpoint
	fl := f.facts(who)
	fl.Proto = def.Proto
	v := verdict.Decide(fl)
	if !v.Allowed {
		f.deny(v)
		s.markReady(nil)
		s.idleUntilQuiet()
		return
	}
	var up net.Conn
	var err error
	if fl.Addr.IsValid() {
		up, err = e.dialIP(ctx, who.Policy, "udp4", fl.Addr, f.port)
	} else {
		up, err = e.dialName(ctx, dialFor{pol: who.Policy, entry: v.Entry}, f.ep.Index, "udp4", fl.Name, f.port)
	}
	if err != nil {
		f.denyDial(fl, v, err)
		s.markReady(nil)
		s.idleUntilQuiet()
		return
	}
	lc := newLiveConn(f.src, f.ep.Index, fl)
	lc.closer = func() {
		f.closedBy.Store(true)
		s.close()
	}
	untrack, ok := e.track(lc)
	if !ok {
		_ = up.Close()
		return
	}
	defer untrack()
	f.allow(v)
	s.markReady(up)

	buf := make([]byte, 64<<10)
	for {
		_ = up.SetReadDeadline(time.Now().Add(e.cfg.UDPIdle))
		n, err := up.Read(buf)
		if err != nil {
			if s.closed.Load() {
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				if time.Since(time.Unix(0, s.last.Load())) >= e.cfg.UDPIdle {
					s.close()
					return
				}
				continue
			}
			// ICMP errors (connection refused) are reported on reads of a
			// connected UDP socket: the session stays until idle.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.last.Store(time.Now().UnixNano())
		if _, err := r.l.pc.WriteTo(buf[:n], net.UDPAddrFromAddrPort(s.client)); err == nil {
			s.bytesDn.Add(int64(n))
		}
	}
}

// refuseCapped drops a datagram that would open a session over its
// endpoint's cap: counted, and logged through the per-endpoint log limit.
func (r *udpRelay) refuseCapped(client netip.AddrPort) {
	def := r.l.def
	f := &flow{e: r.e, def: def, start: time.Now(), src: client.Addr(), name: def.Dst, port: def.OrigPort, l4: policy.L4UDP, mode: "udp", conn: nopConn{}}
	f.refuseCapped(ReasonUDPLimit, r.e.cfg.MaxUDPSessions)
	f.finish()
}

// markReady publishes the decision and flushes datagrams queued before it.
func (s *udpSession) markReady(up net.Conn) {
	s.r.mu.Lock()
	s.up = up
	q := s.queue
	s.queue = nil
	close(s.ready)
	s.r.mu.Unlock()
	if up == nil {
		return
	}
	for _, p := range q {
		if _, err := up.Write(p); err == nil {
			s.bytesUp.Add(int64(len(p)))
		}
	}
}

// idleUntilQuiet keeps a denied session (dropping its datagrams) until the
// client has been quiet for UDPIdle, so a flood logs one line, not many.
func (s *udpSession) idleUntilQuiet() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.r.l.done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, s.last.Load())) >= s.r.e.cfg.UDPIdle {
				return
			}
		}
	}
}

// nopConn stands in for the connection of a UDP session's flow.
type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }
