package builtin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

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
	allowed  bool
	decided  bool
	reason   policy.Reason
	rule     string
	detail   string
	closedBy atomic.Bool // closed by a policy change

	up, down    atomic.Int64
	requests    atomic.Int64
	allowedReqs atomic.Int64
	deniedReqs  atomic.Int64
	lastDeny    atomic.Value // policy.Reason of the last denied request
}

// handle serves one accepted TCP connection.
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
	ep, pol := e.policyFor(ctx, f.src)
	f.ep = ep
	switch {
	case ep == nil:
		f.deny(policy.ReasonUnknownPeer, "", "source address is no endpoint")
		f.reset()
		return
	case pol == nil:
		f.deny(policy.ReasonPending, "", fmt.Sprintf("the container's policy is still unknown after %s", e.cfg.PendingWait))
		f.reset()
		return
	}

	switch def.Kind {
	case model.KindDedicated:
		f.name, f.port, f.mode = def.Dst, def.OrigPort, "tcp"
		if a, err := netip.ParseAddr(def.Dst); err == nil {
			f.name, f.dst = "", a
			f.decideIP(ctx, pol)
			return
		}
		f.decideTCP(ctx, pol)
	case model.KindWeb:
		f.web(ctx, pol)
	case model.KindTransparent:
		if f.tcp == nil {
			f.deny(ReasonSniffFailed, "", "not a TCP connection")
			return
		}
		od, err := originalDst(f.tcp)
		if err != nil {
			f.deny(ReasonSniffFailed, "", err.Error())
			f.reset()
			return
		}
		f.dst, f.port = od.Addr(), od.Port()
		m := pol.MatchIP(f.dst, f.port, policy.L4TCP)
		if m.Allowed {
			f.mode = "ip"
			f.decideIP(ctx, pol)
			return
		}
		if m.Reason == policy.ReasonDenyRule {
			f.denyMatch(m, pol)
			f.reset()
			return
		}
		f.web(ctx, pol)
	default:
		f.deny(policy.ReasonNoRule, "", "unknown listener kind "+string(def.Kind))
		f.reset()
	}
}

// web decides a flow on a web (or transparent) listener from its first
// bytes: a TLS ClientHello is decided by SNI, anything else is served as
// plain HTTP and decided per request by Host.
func (f *flow) web(ctx context.Context, pol *policy.Policy) {
	if f.tcp == nil {
		f.deny(ReasonSniffFailed, "", "not a TCP connection")
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
		f.serveHTTP(ctx, nil, "")
		return
	case err != nil && len(hello) == 0:
		f.deny(ReasonSniffFailed, "", err.Error())
		f.reset()
		return
	case err != nil:
		f.deny(ReasonNoSNI, "", err.Error())
		f.reset()
		return
	}
	ch, err := parseHello(hello)
	if err != nil {
		f.deny(ReasonNoSNI, "", err.Error())
		f.reset()
		return
	}
	f.name = strings.ToLower(strings.TrimSuffix(ch.sni, "."))
	m := pol.MatchName(f.name, f.port, policy.L4TCP)
	if !m.Allowed {
		f.denyMatch(m, pol)
		f.reset()
		return
	}
	inspect := false
	if m.Entry != nil {
		proto, _ := m.Entry.ProtoFor(f.port, policy.L4TCP)
		if proto != policy.ProtoHTTPS && proto != policy.ProtoTCP {
			f.deny(ReasonProtoMismatch, ruleOf(m), fmt.Sprintf("TLS to %s:%d but the rule allows %s", f.name, f.port, proto))
			f.reset()
			return
		}
		inspect = proto == policy.ProtoHTTPS && (m.Entry.Inspect || len(m.Entry.Paths) > 0 || pol.InspectAll)
	}
	if inspect {
		// The proxy terminates TLS with the outer hello (crypto/tls
		// without ECH keys ignores the extension): an ECH client sees
		// its ECH rejected, and every request is decided by Host.
		f.mode = "inspect"
		f.inspect(ctx, m)
		return
	}
	f.mode = "passthrough"
	if ch.ech != 0 && m.Reason != policy.ReasonBypass {
		// The allowed outer name says nothing of the inner one, which the
		// server behind it may route to (fronting): fail closed.
		f.deny(ReasonECH, ruleOf(m), fmt.Sprintf("the ClientHello carries an encrypted ClientHello (extension %#04x): its inner server name cannot be checked without inspection", ch.ech))
		f.reset()
		return
	}
	f.decideTCP(ctx, pol)
}

// decideTCP checks the name rule for (name, port) and splices to the name.
func (f *flow) decideTCP(ctx context.Context, pol *policy.Policy) {
	f.decideAndSplice(pol.MatchName(f.name, f.port, f.l4), pol, func() (net.Conn, error) {
		return f.e.dialName(ctx, pol, f.ep.Index, "tcp4", f.name, f.port)
	})
}

// decideIP splices to an IP destination an IP/CIDR rule allows.
func (f *flow) decideIP(ctx context.Context, pol *policy.Policy) {
	f.decideAndSplice(pol.MatchIP(f.dst, f.port, f.l4), pol, func() (net.Conn, error) {
		return f.e.dialIP(ctx, pol, "tcp4", f.dst, f.port)
	})
}

// decideAndSplice denies (reset) unless m allows, then dials the upstream
// while the connection is tracked for policy changes, and splices.
func (f *flow) decideAndSplice(m policy.Match, pol *policy.Policy, dial func() (net.Conn, error)) {
	if !m.Allowed {
		f.denyMatch(m, pol)
		f.reset()
		return
	}
	untrack, ok := f.track(m)
	if !ok {
		return
	}
	defer untrack()
	up, err := dial()
	if err != nil {
		f.denyDial(m, err)
		f.reset()
		return
	}
	f.allow(m)
	f.splice(up)
}

// track registers the flow as live for Apply's re-checks.
func (f *flow) track(m policy.Match) (func(), bool) {
	lc := &liveConn{src: f.src, index: f.ep.Index, name: f.name, dst: f.dst, port: f.port, l4: f.l4}
	lc.closer = func() {
		f.closedBy.Store(true)
		f.reset()
	}
	untrack, ok := f.e.track(lc)
	if !ok {
		f.deny(policy.ReasonNoRule, ruleOf(m), "engine closed")
		f.reset()
	}
	return untrack, ok
}

// splice copies bytes both ways. Both ends are bare *net.TCPConn, so
// io.Copy ends in TCPConn.ReadFrom and Linux splices in the kernel.
func (f *flow) splice(up net.Conn) {
	down := f.conn
	if spliceHook != nil {
		spliceHook(up, down)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := io.Copy(up, down)
		f.up.Add(n)
		if err != nil {
			up.Close()
			down.Close()
			return
		}
		closeWrite(up)
	}()
	n, err := io.Copy(down, up)
	f.down.Add(n)
	if err != nil {
		up.Close()
		down.Close()
	} else {
		closeWrite(down)
	}
	wg.Wait()
	up.Close()
	down.Close()
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
}

// ruleOf describes the provenance of the rule behind a match.
func ruleOf(m policy.Match) string { return verdict.Rule(m) }

func (f *flow) allow(m policy.Match) {
	f.allowed, f.decided = true, true
	f.reason = m.Reason
	f.rule = ruleOf(m)
	f.e.metrics.allowed.WithLabelValues(string(f.def.Kind)).Inc()
	f.e.emit(f.decision(nil))
}

func (f *flow) denyMatch(m policy.Match, pol *policy.Policy) {
	reason, detail := m.Reason, ""
	if f.ep != nil && f.ep.LabelError != "" {
		reason, detail = policy.ReasonBadLabel, f.ep.LabelError
	}
	f.deny(reason, ruleOf(m), detail)
}

func (f *flow) denyDial(m policy.Match, err error) {
	var pe *errPrivate
	var le *errHostLocal
	switch {
	case errors.As(err, &pe):
		f.deny(ReasonPrivateUpstream, ruleOf(m), err.Error())
	case errors.As(err, &le):
		f.deny(ReasonHostLocal, ruleOf(m), err.Error())
	default:
		f.deny(ReasonUpstream, ruleOf(m), err.Error())
	}
}

func (f *flow) deny(reason policy.Reason, rule, detail string) {
	f.allowed, f.decided = false, true
	f.reason, f.rule, f.detail = reason, rule, detail
	f.e.metrics.denied.WithLabelValues(string(f.def.Kind), string(reason)).Inc()
	f.e.emit(f.decision(nil))
}

func (f *flow) decision(r *reqInfo) Decision {
	d := Decision{
		Time: time.Now(), Source: f.src, Listener: f.def.Kind, Name: f.name, Dst: f.dst,
		Port: f.port, L4: f.l4, Allowed: f.allowed, Reason: f.reason, Rule: f.rule, Detail: f.detail,
	}
	if f.ep != nil {
		d.Endpoint, d.Container = f.ep.Index, containerOf(f.ep)
	}
	if r != nil {
		d.Name, d.Path, d.Method = r.host, r.path, r.method
		d.Allowed, d.Reason, d.Rule, d.Detail = r.allowed, r.reason, r.rule, r.detail
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

// finish writes the flow's canonical log line.
func (f *flow) finish() {
	_ = f.conn.Close()
	up, down := f.up.Load(), f.down.Load()
	f.e.metrics.bytes.WithLabelValues("up").Add(float64(up))
	f.e.metrics.bytes.WithLabelValues("down").Add(float64(down))
	if !f.e.cfg.LogLimit.Allow(f.logKey()) {
		return // counted by the limiter, summarized by its owner
	}
	fields := logrus.Fields{
		fieldSource:    f.src.String(),
		fieldListener:  f.def.Key,
		fieldPort:      f.port,
		fieldDecision:  decisionWord(f.allowed),
		fieldReason:    string(f.reason),
		fieldBytesUp:   up,
		fieldBytesDown: down,
		fieldDuration:  time.Since(f.start).Milliseconds(),
	}
	if f.ep != nil {
		fields[fieldEndpoint] = f.ep.Index
		fields[fieldContainer] = containerOf(f.ep)
	}
	if f.name != "" {
		fields[fieldName] = f.name
	}
	if f.dst.IsValid() {
		fields[fieldDst] = f.dst.String()
	}
	if f.rule != "" {
		fields[fieldRule] = f.rule
	}
	if f.detail != "" {
		fields[fieldDetail] = f.detail
	}
	if f.mode != "" {
		fields[fieldMode] = f.mode
	}
	if f.closedBy.Load() {
		fields[fieldClosedBy] = "policy change"
	}
	if n := f.requests.Load(); n > 0 {
		fields[fieldRequests] = n
		fields[fieldDeniedReq] = f.deniedReqs.Load()
	}
	l := f.e.log.WithFields(fields)
	if f.allowed {
		l.Info(logMessage)
	} else {
		l.Warn(logMessage)
	}
}

func decisionWord(allowed bool) string {
	if allowed {
		return "allow"
	}
	return "deny"
}

// FixFor says what to do about a denial of name for one of the proxy's own
// reasons that no allow rule lifts (a refused upgrade, ECH, a host-local
// upstream), and "" for every other reason.
func FixFor(name string, reason policy.Reason) string {
	switch reason {
	case ReasonUpgrade, ReasonECH, ReasonHostLocal:
		return hint(name, reason, "", "")
	}
	return ""
}

// hint says how to allow name, for denial messages.
func hint(name string, reason policy.Reason, rule, detail string) string {
	switch reason {
	case policy.ReasonDenyRule:
		return fmt.Sprintf("a deny rule (%s) covers %s; remove it to allow", rule, name)
	case policy.ReasonBadLabel:
		return "the container's clawker labels are invalid (" + detail + "); fix the label to get egress"
	case policy.ReasonPending:
		return "the container's policy is not known yet; retry"
	case policy.ReasonUnknownPeer:
		return "the source address is no clawker-fw endpoint"
	case ReasonPrivateUpstream:
		return fmt.Sprintf("%s resolves to a private address; allow that address with an IP/CIDR rule", name)
	case policy.ReasonPath:
		return fmt.Sprintf("the request path is denied by %s (%s)", detail, rule)
	case ReasonDomainFronting:
		return "the HTTP Host differs from the TLS server name"
	case ReasonHostLocal:
		return fmt.Sprintf("%s is an address of the Docker host; reach the host with an exact rule tcp://host.docker.internal:PORT, or name the address in an IP/CIDR rule", name)
	case ReasonECH:
		return fmt.Sprintf("encrypted ClientHello (ECH) hides the real server name; connect to %s without ECH (clients retry without it or fail; Chromium sends GREASE ECH by default: set its EncryptedClientHelloEnabled policy to false or run it with --disable-features=EncryptedClientHello), or inspect this rule (clawker.tls.inspect=all or a path rule)", name)
	case ReasonUpgrade:
		return "only WebSocket may upgrade a checked HTTP connection (its stream is opaque after the handshake); h2c, CONNECT and other tunnels are refused because the requests inside them would not be checked"
	}
	return fmt.Sprintf("allow it with clawker.allow=%s as a network option (docker network create -o clawker.allow=%s) or a container label (--label clawker.allow=%s)", name, name, name)
}
