package builtin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Reasons of the proxy's own, on top of the policy's: verdict's (one list,
// one fix text each).
const (
	ReasonNoSNI          = verdict.ReasonNoSNI
	ReasonSniffFailed    = verdict.ReasonSniffFailed
	ReasonProtoMismatch  = verdict.ReasonProtoMismatch
	ReasonDomainFronting = verdict.ReasonDomainFronting
	ReasonNoInspection   = verdict.ReasonNoInspection
	ReasonUpstream       = verdict.ReasonUpstream
	ReasonBadRequest     = verdict.ReasonBadRequest
	ReasonECH            = verdict.ReasonECH
)

// flow is one accepted connection and its canonical log line.
type flow struct {
	e     *Engine
	def   model.Listener
	start time.Time
	src   netip.Addr
	conn  net.Conn
	tcp   *net.TCPConn

	ep       *policy.Endpoint
	name     string
	dst      netip.Addr
	port     uint16
	l4       policy.L4
	mode     string // passthrough, inspect, http, tcp, ip
	stream   string // learn mode: ssh or tcp for a stream carried by address
	hello    int    // bytes of the peeked ClientHello (0: none was read)
	allowed  bool
	decided  bool
	reason   policy.Reason
	rule     string
	detail   string
	fix      string
	closedBy atomic.Bool // closed by a policy change
	// onReset, when set, is told that the flow was reset from outside its
	// relay (a policy change, the engine closing): the kernel splice stops.
	onReset atomic.Pointer[func()]

	up, down    atomic.Int64
	requests    atomic.Int64
	allowedReqs atomic.Int64
	deniedReqs  atomic.Int64
	lastDeny    atomic.Value // policy.Reason of the last denied request
}

// handle serves one accepted TCP connection: it finds who is asking
// (waiting, bounded, while the endpoint is pending), reads what the
// listener needs and lets verdict.Decide decide.
func (e *Engine) handle(def model.Listener, c net.Conn) {
	if def.Kind == model.KindCA {
		e.serveCA(c)
		return
	}
	f := &flow{e: e, def: def, start: time.Now(), src: model.Source(c.RemoteAddr()), conn: c, l4: policy.L4TCP, port: def.OrigPort}
	f.tcp, _ = c.(*net.TCPConn)
	defer f.finish()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	who := e.await(ctx, f.src)
	f.ep = who.Endpoint

	switch def.Kind {
	case model.KindDedicated:
		f.mode = "tcp"
		fl := f.facts(who)
		fl.Proto = def.Proto
		f.decideAndSplice(ctx, fl, verdict.Decide(fl))
	case model.KindWeb:
		f.web(ctx, who)
	case model.KindTransparent:
		if f.tcp == nil {
			f.deny(verdict.Refuse(f.facts(who), verdict.Verdict{}, ReasonSniffFailed, "not a TCP connection"))
			return
		}
		od, err := originalDst(f.tcp)
		if err != nil {
			f.deny(verdict.Refuse(f.facts(who), verdict.Verdict{}, ReasonSniffFailed, err.Error()))
			f.reset()
			return
		}
		f.dst, f.port = od.Addr(), od.Port()
		if who.Policy != nil && who.Policy.Learn {
			f.learn(ctx, who)
			return
		}
		// An IP/CIDR rule carries any TCP, server-first protocols
		// included: decided before reading anything. Otherwise the
		// content names the destination.
		{
			fl := f.facts(who)
			if v := verdict.Decide(fl); v.Allowed {
				f.mode = "ip"
				f.decideAndSplice(ctx, fl, v)
				return
			}
		}
		f.web(ctx, who)
	default:
		f.deny(verdict.Refuse(f.facts(who), verdict.Verdict{}, policy.ReasonNoRule, "unknown listener kind "+string(def.Kind)))
		f.reset()
	}
}

// facts are the flow's facts as far as they are known before its content
// is read: the listener, its destination (a dedicated listener's name or
// address, the transparent listener's original destination), port and L4.
func (f *flow) facts(who policy.Who) verdict.Flow {
	fl := verdict.Flow{Who: who, Listener: verdict.Listener(f.def.Kind), Port: f.port, L4: f.l4, Addr: f.dst}
	if f.def.Kind == model.KindDedicated {
		if a, err := netip.ParseAddr(f.def.Dst); err == nil {
			f.name, f.dst, fl.Addr = "", a, a
		} else {
			f.name, fl.Name = f.def.Dst, f.def.Dst
		}
	}
	return fl
}

// web decides a flow on a web (or transparent) listener from its first
// bytes: a TLS ClientHello is decided by SNI, anything else is served as
// plain HTTP and decided per request by Host (every denial, the endpoint's
// own included, answers 403 there).
func (f *flow) web(ctx context.Context, who policy.Who) {
	fl := f.facts(who)
	if f.tcp == nil {
		f.deny(verdict.Refuse(fl, verdict.Verdict{}, ReasonSniffFailed, "not a TCP connection"))
		return
	}
	// One peek loop: stop at the first byte unless it starts a TLS
	// handshake, else when the whole ClientHello is queued.
	hello, err := peekConn(f.tcp, time.Now().Add(f.e.cfg.SniffTimeout), func(b []byte) int {
		if len(b) >= 1 && b[0] != 0x16 {
			return 0
		}
		return helloNeed(b)
	})
	switch {
	case len(hello) > 0 && hello[0] != 0x16:
		f.mode = "http"
		f.serveHTTP(ctx, who, nil, "")
		return
	case err != nil && len(hello) == 0:
		f.deny(verdict.Refuse(fl, verdict.Verdict{}, ReasonSniffFailed, err.Error()))
		f.reset()
		return
	case err != nil:
		f.deny(verdict.Refuse(fl, verdict.Verdict{}, ReasonNoSNI, err.Error()))
		f.reset()
		return
	}
	ch, err := parseHello(hello)
	if err != nil {
		f.deny(verdict.Refuse(fl, verdict.Verdict{}, ReasonNoSNI, err.Error()))
		f.reset()
		return
	}
	f.name = strings.ToLower(strings.TrimSuffix(ch.sni, "."))
	f.hello = len(hello)
	fl.Content, fl.Name, fl.ECH = verdict.TLS, f.name, ch.ech
	v := verdict.Decide(fl)
	switch {
	case !v.Allowed:
		f.deny(v)
		f.refuseTLS()
	case v.Mode == verdict.ModeInspect:
		// The proxy terminates TLS with the outer hello (crypto/tls
		// without ECH keys ignores the extension): an ECH client sees
		// its ECH rejected, and every request is decided by Host.
		f.mode = "inspect"
		f.inspect(ctx, fl, v)
	default:
		f.mode = string(v.Mode)
		f.decideAndSplice(ctx, fl, v)
	}
}

// decideAndSplice denies (reset) unless v allows, then dials the upstream
// (the name, or the address of an IP verdict) while the connection is
// tracked for policy changes, and splices.
func (f *flow) decideAndSplice(ctx context.Context, fl verdict.Flow, v verdict.Verdict) {
	if !v.Allowed {
		f.deny(v)
		f.refuseTLS()
		return
	}
	untrack, ok := f.track(fl, v)
	if !ok {
		return
	}
	defer untrack()
	pol := fl.Who.Policy
	var up net.Conn
	var err error
	if v.Mode == verdict.ModeIP || (fl.Listener == verdict.Dedicated && fl.Addr.IsValid()) {
		up, err = f.e.dialIP(ctx, pol, "tcp4", fl.Addr, fl.Port)
	} else {
		up, err = f.e.dialName(ctx, dialFor{pol: pol, entry: v.Entry}, f.ep.Index, "tcp4", fl.Name, fl.Port)
	}
	if err != nil {
		f.denyDial(fl, v, err)
		if f.reason == ReasonUpstream {
			f.reset() // not a refusal: the upstream failed
		} else {
			f.refuseTLS()
		}
		return
	}
	f.allow(v)
	if upTCP, ok := up.(*net.TCPConn); ok && f.e.cfg.Splicer != nil && f.e.cfg.SpliceAfter > 0 && f.tcp != nil {
		// Short flows stay on splice(2): the kernel path's setup pays
		// only for flows that move more (Config.SpliceAfter).
		if !f.spliceFirst(upTCP, f.e.cfg.SpliceAfter) {
			return
		}
	}
	if !f.kernelSplice(up) {
		f.splice(up)
	}
}

// track registers the flow as live for Apply's re-checks, with the facts
// it was allowed on.
func (f *flow) track(fl verdict.Flow, v verdict.Verdict) (func(), bool) {
	lc := newLiveConn(f.src, f.ep.Index, fl)
	lc.closer = func() {
		f.closedBy.Store(true)
		f.reset()
	}
	untrack, ok := f.e.track(lc)
	if !ok {
		f.deny(verdict.Refuse(fl, v, policy.ReasonNoRule, "engine closed"))
		f.reset()
	}
	return untrack, ok
}

// splice copies bytes both ways. Both ends are bare *net.TCPConn, so
// io.Copy ends in TCPConn.ReadFrom and Linux splices in the kernel.
//
// Both sockets carry SO_LINGER 0 while the relay runs, as on the kernel
// path: if the process dies, the kernel closes them with a reset, so
// neither peer takes a cut stream for a complete one; an orderly end (a
// FIN each way, forwarded) clears it before closing.
func (f *flow) splice(up net.Conn) {
	down := f.conn
	if spliceHook != nil {
		spliceHook(up, down)
	}
	setLinger0(up, down)
	var failed atomic.Bool
	defer func() {
		if !failed.Load() {
			clearLinger(up, down)
		}
		up.Close()
		down.Close()
	}()
	// The peeked ClientHello is still queued on the client's socket: it
	// goes upstream from here, before the relay's second goroutine exists,
	// so the first flight does not wait for that goroutine to be
	// scheduled (the rest of the client's bytes follow it in order).
	if f.hello > 0 {
		n, err := io.CopyN(up, down, int64(f.hello))
		f.up.Add(n)
		if err != nil {
			failed.Store(true)
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := io.Copy(up, down)
		f.up.Add(n)
		if err != nil {
			failed.Store(true)
			up.Close() // SO_LINGER 0: both peers get a reset
			down.Close()
			return
		}
		closeWrite(up)
	}()
	n, err := io.Copy(down, up)
	f.down.Add(n)
	if err != nil {
		failed.Store(true)
		up.Close()
		down.Close()
	} else {
		closeWrite(down)
	}
	wg.Wait()
}

// setLinger0 and clearLinger set and clear SO_LINGER 0 on TCP
// connections (others are left alone).
func setLinger0(cs ...net.Conn) {
	for _, c := range cs {
		if t, ok := c.(*net.TCPConn); ok {
			_ = t.SetLinger(0)
		}
	}
}

func clearLinger(cs ...net.Conn) {
	for _, c := range cs {
		if t, ok := c.(*net.TCPConn); ok {
			_ = t.SetLinger(-1)
		}
	}
}

// spliceHook, when set (by tests), sees the two connections handed to
// io.Copy.
var spliceHook func(up, down net.Conn)

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// reset closes the client connection with a TCP reset (SO_LINGER 0).
func (f *flow) reset() {
	if f.tcp != nil {
		_ = f.tcp.SetLinger(0)
	}
	_ = f.conn.Close()
	if fn := f.onReset.Load(); fn != nil {
		(*fn)()
	}
}

func (f *flow) allow(v verdict.Verdict) {
	f.allowed, f.decided = true, true
	f.mode = string(v.Mode)
	f.reason, f.rule = v.Reason, v.Rule
	f.e.metrics.allowed.WithLabelValues(string(f.def.Kind)).Inc()
	f.e.emit(f.decision(nil))
}

// denyDial denies a flow v allowed whose upstream was refused at dial time
// (a private or host-local address) or could not be reached.
func (f *flow) denyDial(fl verdict.Flow, v verdict.Verdict, err error) {
	f.deny(verdict.Refuse(fl, v, dialReason(err), err.Error()))
}

// dialReason is the reason of a dial error.
func dialReason(err error) policy.Reason {
	var pe *errPrivate
	var le *errHostLocal
	switch {
	case errors.As(err, &pe):
		return ReasonPrivateUpstream
	case errors.As(err, &le):
		return ReasonHostLocal
	}
	return ReasonUpstream
}

func (f *flow) deny(v verdict.Verdict) {
	f.allowed, f.decided = false, true
	f.reason, f.rule, f.detail, f.fix = v.Reason, v.Rule, v.Detail, v.Fix
	f.e.metrics.denied.WithLabelValues(string(f.def.Kind), string(v.Reason)).Inc()
	f.e.emit(f.decision(nil))
}

func (f *flow) decision(r *reqInfo) Decision {
	d := Decision{
		Time: time.Now(), Source: f.src, Listener: f.def.Kind, Name: f.name, Dst: f.dst,
		Port: f.port, L4: f.l4, Allowed: f.allowed, Reason: f.reason, Rule: f.rule, Detail: f.detail, Fix: f.fix,
		Mode: f.mode, Stream: f.stream,
	}
	if f.ep != nil {
		d.Endpoint, d.Container = f.ep.Index, containerOf(f.ep)
	}
	if r != nil {
		d.Name, d.Path, d.Method = r.host, r.path, r.method
		d.Allowed, d.Reason, d.Rule, d.Detail, d.Fix, d.Mode = r.allowed, r.v.Reason, r.v.Rule, r.v.Detail, r.v.Fix, string(r.v.Mode)
	}
	return d
}

func containerOf(ep *policy.Endpoint) string {
	if ep.ContainerName != "" {
		return ep.ContainerName
	}
	return ep.ContainerID
}

func (e *Engine) emit(d Decision) {
	if e.cfg.OnDecision != nil {
		e.cfg.OnDecision(d)
	}
}

// finish closes the flow and reports it as one decision record (bytes,
// duration, requests): to Config.Record, or else as a decision line.
func (f *flow) finish() {
	_ = f.conn.Close()
	up, down := f.up.Load(), f.down.Load()
	f.e.metrics.bytesUp.Add(float64(up))
	f.e.metrics.bytesDown.Add(float64(down))
	if n := f.requests.Load(); n > 0 && f.allowedReqs.Load() == 0 && f.deniedReqs.Load() >= n {
		return // every request was denied and reported as such: no second record of the same denials
	}
	r := f.record()
	r.Verdict = decisionWord(f.allowed)
	r.Reason, r.Rule, r.Detail = string(f.reason), f.rule, f.detail
	if !f.allowed {
		r.Fix = f.fix
	}
	r.BytesUp, r.BytesDown, r.DurationMS = uint64(up), uint64(down), time.Since(f.start).Milliseconds()
	if f.closedBy.Load() {
		r.ClosedBy = "policy change"
	}
	if n := f.requests.Load(); n > 0 {
		r.Requests, r.DeniedRequests = uint64(n), uint64(f.deniedReqs.Load())
	}
	f.e.report(f, &r)
}

// record is the flow's decision record without its verdict.
func (f *flow) record() decisionlog.Record {
	r := decisionlog.Record{Time: time.Now(), Source: decisionlog.SourceProxy, SrcAddr: f.src.String(),
		DestName: f.name, DestPort: f.port, Protocol: protocolOf(f.mode, f.l4), Listener: f.def.Key, Mode: f.mode}
	if f.dst.IsValid() {
		r.DestAddr = f.dst.String()
	}
	if f.ep != nil {
		r.Endpoint, r.Container = f.ep.Index, containerOf(f.ep)
	}
	return r
}

// report hands a record to Config.Record, or logs it (rate-limited by
// Config.LogLimit) when nothing takes records.
func (e *Engine) report(f *flow, r *decisionlog.Record) {
	if e.cfg.Record != nil {
		e.cfg.Record(*r)
		return
	}
	if e.cfg.LogLimit.Allow(f.logKey()) {
		decisionlog.Log(e.log, r)
	}
}

// protocolOf names a flow's protocol from its mode (or its L4 before one
// was chosen).
func protocolOf(mode string, l4 policy.L4) string {
	switch mode {
	case "passthrough", "inspect":
		return "https"
	case "http":
		return "http"
	case "udp":
		return "udp"
	case "tcp", "ip":
		return "tcp"
	}
	if l4 == policy.L4UDP {
		return "udp"
	}
	return "tcp"
}

func decisionWord(allowed bool) string {
	if allowed {
		return decisionlog.Allow
	}
	return decisionlog.Deny
}
