package builtin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

type lkey struct {
	port uint16
	l4   policy.L4
}

// listener is one open model listener.
type listener struct {
	def  model.Listener
	addr net.Addr
	ln   net.Listener   // TCP
	pc   net.PacketConn // UDP
	udp  *udpRelay
	done chan struct{}
	once sync.Once
}

func (l *listener) close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		if l.ln != nil {
			err = l.ln.Close()
		}
		if l.pc != nil {
			err = l.pc.Close()
		}
	})
	return err
}

// reconcileListeners opens the listeners m has and the engine lacks (or
// whose definition changed) and closes the ones m no longer has. Listeners
// that fail to open are returned as a *model.BindError (the caller removes
// their routes) and retried by the next Apply. Called with e.mu held.
func (e *Engine) reconcileListeners(m *model.Model) error {
	want := make(map[lkey]model.Listener, len(m.Listeners))
	for _, d := range m.Listeners {
		want[lkey{d.Port, d.L4}] = d
	}
	for k, l := range e.listeners {
		if d, ok := want[k]; !ok || d != l.def {
			_ = l.close()
			delete(e.listeners, k)
		}
	}
	var be model.BindError
	e.lerrs = nil
	for k, d := range want {
		if _, ok := e.listeners[k]; ok {
			continue
		}
		l, err := e.open(d)
		if err != nil {
			be.Failed = append(be.Failed, model.BindFailure{Listener: d, Err: err.Error()})
			e.lerrs = append(e.lerrs, err.Error())
			continue
		}
		e.listeners[k] = l
	}
	if len(be.Failed) == 0 {
		return nil
	}
	return &be
}

func (e *Engine) open(d model.Listener) (*listener, error) {
	addr := net.JoinHostPort(e.cfg.BindAddr, strconv.Itoa(int(e.cfg.ListenPort(d.Port))))
	l := &listener{def: d, done: make(chan struct{})}
	if d.L4 == policy.L4UDP {
		pc, err := e.cfg.ListenPacket("udp4", addr)
		if err != nil {
			return nil, fmt.Errorf("open %s listener %s on %s: %w", d.Kind, d.Key, addr, err)
		}
		l.pc, l.addr = pc, pc.LocalAddr()
		l.udp = newUDPRelay(e, l)
		go l.udp.serve()
		return l, nil
	}
	ln, err := e.cfg.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("open %s listener %s on %s: %w", d.Kind, d.Key, addr, err)
	}
	l.ln, l.addr = ln, ln.Addr()
	go e.acceptLoop(l)
	return l, nil
}

func (e *Engine) acceptLoop(l *listener) {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporary) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			// EMFILE and friends: back off and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			e.log.WithError(err).WithField(decisionlog.FListener, l.def.Key).Warn("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		src := model.Source(c.RemoteAddr())
		release, ok := e.admitConn(src)
		if !ok {
			e.refuseCapped(l.def, c, src, ReasonConnLimit, e.cfg.MaxConns)
			continue
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			release()
			_ = c.Close()
			return
		}
		e.accepted[c] = struct{}{}
		e.connWG.Add(1)
		e.mu.Unlock()
		go func() {
			defer e.connWG.Done()
			defer release()
			defer func() {
				e.mu.Lock()
				delete(e.accepted, c)
				e.mu.Unlock()
			}()
			e.handle(l.def, c)
		}()
	}
}

var errTemporary = errors.New("temporary")

// liveConn is one tracked connection (or UDP session, or HTTP request):
// the facts it was allowed on, so Apply can decide it again, and how to stop
// it.
type liveConn struct {
	src    netip.Addr
	index  uint32
	flow   verdict.Flow // without Who: Apply fills in the new one
	closer func()
	// req, when set, is the HTTP request this is: closed by req.kill
	// instead of closer (no closure to allocate per request).
	req  *request
	once sync.Once
	e    *Engine
}

func newLiveConn(src netip.Addr, index uint32, fl verdict.Flow) *liveConn {
	if fl.Request != nil {
		req := *fl.Request
		fl.Request = &req
	}
	c := &liveConn{}
	c.setFlow(src, index, fl)
	return c
}

// setFlow sets the facts c was allowed on. fl.Request is kept, not copied:
// the caller never changes it while c is tracked.
func (c *liveConn) setFlow(src netip.Addr, index uint32, fl verdict.Flow) {
	fl.Who = policy.Who{}
	c.src, c.index, c.flow = src, index, fl
}

func (c *liveConn) kill(string) { c.once.Do(c.stop) }

func (c *liveConn) stop() {
	if c.req != nil {
		c.req.kill()
		return
	}
	c.closer()
}

// track registers a live connection; the returned func unregisters it.
func (e *Engine) track(c *liveConn) (untrack func(), ok bool) {
	if !e.add(c) {
		return func() {}, false
	}
	return func() { e.remove(c) }, true
}

// add registers a live connection (false when the engine is closed);
// remove unregisters it. The pair is track without its closure, for the
// path every request takes.
func (e *Engine) add(c *liveConn) bool {
	c.e = e
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *Engine) remove(c *liveConn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
}

// doomedConn is a live connection that a new policy denies.
type doomedConn struct {
	c      *liveConn
	reason string
}

// recheckConns returns the live connections that snap now denies: each is
// decided again (verdict.Decide) with the facts it was allowed on and the
// endpoint's new answer to who is asking. Called with e.mu held; the caller
// closes them.
func (e *Engine) recheckConns(snap *policy.Snapshot) []doomedConn {
	now := time.Now()
	var out []doomedConn
	for c := range e.conns {
		who := snap.WhoIs(c.src, now)
		switch {
		case who.Endpoint == nil || who.Endpoint.Index != c.index:
			out = append(out, doomedConn{c, "endpoint gone"})
			continue
		case who.Pending():
			continue // pending again: keep what was allowed
		}
		fl := c.flow
		fl.Who = who
		if v := verdict.Decide(fl); !v.Allowed {
			out = append(out, doomedConn{c, string(v.Reason)})
		}
	}
	return out
}
