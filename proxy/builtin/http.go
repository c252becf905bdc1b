package builtin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// reqInfo is one HTTP request's decision.
type reqInfo struct {
	host, path, method string
	allowed            bool
	v                  verdict.Verdict
}

// inspect terminates TLS for f.name with a leaf from Config.Certs and serves
// HTTP/1.1 or HTTP/2 (by ALPN) to the client, deciding every request.
func (f *flow) inspect(ctx context.Context, fl verdict.Flow, v verdict.Verdict) {
	if f.e.cfg.Certs == nil {
		f.deny(verdict.Refuse(fl, v, ReasonNoInspection, "the rule needs TLS inspection and the proxy has no CA"))
		f.reset()
		return
	}
	leaf, err := f.e.cfg.Certs.Leaf(f.name)
	if err != nil {
		f.deny(verdict.Refuse(fl, v, ReasonNoInspection, "issue leaf: "+err.Error()))
		f.reset()
		return
	}
	fl.ECH = 0 // read by the proxy itself: no longer a fact of the connection
	untrack, ok := f.track(fl, v)
	if !ok {
		return
	}
	defer untrack()
	f.allow(v)
	cc := &countConn{Conn: f.conn, f: f}
	tc := tls.Server(cc, f.e.inspectConfig(leaf))
	hctx, cancel := context.WithTimeout(ctx, f.e.cfg.SniffTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		f.detail = "client TLS handshake: " + err.Error()
		return
	}
	f.serveHTTP(ctx, fl.Who, tc, f.name)
}

// serveHTTP serves HTTP on c (the TLS conn under inspection, or the raw
// connection for plain HTTP when c is nil). tlsName is the SNI the client
// presented ("" for plain HTTP). A plain-HTTP connection of an endpoint
// that cannot be decided for (unknown, pending, bad labels) is served too:
// each of its requests gets the 403 that says why.
func (f *flow) serveHTTP(ctx context.Context, who policy.Who, c net.Conn, tlsName string) {
	if c == nil {
		c = &countConn{Conn: f.conn, f: f}
		f.decided, f.allowed, f.reason = true, true, policy.ReasonAllowed
		if reason, detail, ok := verdict.Asking(who); !ok {
			f.allowed, f.reason, f.detail = false, reason, detail
		}
	}
	h := &httpHandler{f: f, tlsName: tlsName}
	scheme := "http"
	if tlsName != "" {
		scheme = "https"
	}
	var transport http.RoundTripper = refusingTransport{}
	if f.ep != nil {
		transport = f.e.transport(f.ep.Index)
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			q := requestOf(pr.In.Context())
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = hostPort(q.ri.host, f.port, scheme)
			pr.Out.Host = pr.In.Host
			forwardAsSent(pr.Out.URL, pr.In.URL, q.ri.path)
		},
		Transport:      transport,
		ErrorHandler:   h.upstreamError,
		ModifyResponse: checkSwitch,
		BufferPool:     copyBuffers,
	}
	if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
		srv := &http2.Server{IdleTimeout: 2 * time.Minute}
		srv.ServeConn(tc, &http2.ServeConnOpts{
			Context:    ctx,
			Handler:    h,
			BaseConfig: &http.Server{ReadHeaderTimeout: f.e.cfg.SniffTimeout},
		})
	} else {
		serveOne(c, h, f.e.cfg.SniffTimeout)
	}
	// A hijacked connection (an upgrade such as WebSocket) lives on in its
	// handler: the flow ends when the handlers do.
	h.wg.Wait()
	if tlsName == "" && f.allowedReqs.Load() == 0 && f.deniedReqs.Load() > 0 {
		// A plain-HTTP connection whose every request was denied.
		f.allowed = false
		f.reason, _ = f.lastDeny.Load().(policy.Reason)
	}
}

// inspectConfig returns the server config that terminates inspected TLS
// with leaf: one per leaf, because a config holds the keys of the session
// tickets it issues, so a client that reconnects to the same name resumes
// its session instead of a full handshake (with a config per connection no
// ticket could ever be used). Tickets of one name's config are useless to
// another's, and resuming decides nothing: the SNI was decided before the
// handshake, and every request's Host is decided after it.
func (e *Engine) inspectConfig(leaf *tls.Certificate) *tls.Config {
	if v, ok := e.tlsConfigs.Load(leaf); ok {
		return v.(*tls.Config)
	}
	if e.tlsConfigsN.Add(1) > maxTLSConfigs {
		// Leaves are renewed and the CA rotates: start over rather than
		// keep old leaves alive.
		e.tlsConfigs.Clear()
		e.tlsConfigsN.Store(0)
	}
	v, _ := e.tlsConfigs.LoadOrStore(leaf, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	return v.(*tls.Config)
}

const maxTLSConfigs = 1024

// copyBuffers lends the reverse proxy its body copy buffers: without a
// pool it allocates 32 KiB for every response, which under inspection
// keep-alive cost more CPU (allocation and GC) than the copy itself.
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// refusingTransport stands in for the transport of a connection that has
// no endpoint: every request on it is denied before it would be sent.
type refusingTransport struct{}

func (refusingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no endpoint: nothing is sent upstream")
}

// serveOne serves HTTP/1.x on one connection and returns when it is closed.
func serveOne(c net.Conn, h http.Handler, headerTimeout time.Duration) {
	l := &oneConnListener{conn: c, done: make(chan struct{})}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       2 * time.Minute,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.closeOnce.Do(func() { close(l.done) })
			}
		},
		ErrorLog: nil,
	}
	_ = srv.Serve(l)
}

type oneConnListener struct {
	conn      net.Conn
	used      bool
	mu        sync.Mutex
	done      chan struct{}
	closeOnce sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.used {
		l.used = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error { return nil }

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// countConn counts the bytes of a connection that is not spliced.
type countConn struct {
	net.Conn
	f *flow
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.f.up.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.f.down.Add(int64(n))
	return n, err
}

func hostPort(host string, port uint16, scheme string) string {
	if (scheme == "https" && port == 443) || (scheme == "http" && port == 80) {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

type httpHandler struct {
	f       *flow
	tlsName string
	proxy   *httputil.ReverseProxy
	wg      sync.WaitGroup

	allowedOnce sync.Once
	allowed     prometheus.Counter
}

// ServeHTTP decides one request with verdict.Decide on the endpoint's
// current policy (who is asking is read again for every request):
//  1. a request that would turn the connection into a tunnel (CONNECT, h2c,
//     any upgrade but WebSocket: upgradeRefusal) is refused;
//  2. the Host (":authority" in HTTP/2) must equal the TLS server name under
//     inspection (no domain fronting);
//  3. the policy must allow the host on this port, with a rule of the
//     matching protocol (https under inspection, else http);
//  4. the entry's path rules decide the method and the path as sent: every
//     plausible reading of it must be allowed (policy.DecidePath), and it
//     is forwarded byte for byte (forwardAsSent).
func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.wg.Add(1)
	defer h.wg.Done()
	q := h.decide(w, r)
	if q == nil {
		return
	}
	defer q.cancel()
	if !h.f.e.add(&q.lc) {
		return
	}
	defer h.f.e.remove(&q.lc)
	h.proxy.ServeHTTP(w, r.WithContext(q))
}

// decide decides request r (ServeHTTP's steps) and returns its state, or
// nil when it was denied (and answered). It is a function of its own so
// that its large frame (the flow, the verdict: 1.2 KB) is off the stack
// while the request is relayed: only ServeHTTP's small one stays under
// the reverse proxy's and the transport's frames, on goroutines that grow
// their stacks by copying them (one per HTTP/2 stream).
func (h *httpHandler) decide(w http.ResponseWriter, r *http.Request) *request {
	f := h.f
	f.requests.Add(1)
	host := strings.ToLower(strings.TrimSuffix(stripPort(r.Host), "."))
	q := &request{ri: reqInfo{host: host, method: r.Method, path: rawPath(r)}}
	ri := &q.ri
	if f.tlsNameless() && host != "" && f.name == "" {
		f.name = host // first Host names a plain-HTTP flow in its log line
	}
	key, why := upgradeRefusal(r)
	q.req = verdict.Request{Host: host, Method: r.Method, Path: ri.path, TLSName: h.tlsName, Tunnel: why,
		Opaque: r.URL.Opaque != "", AsSent: forwardable(ri.path)}
	fl := verdict.Flow{
		Who: f.e.whoNow(f.src, f.ep), Listener: verdict.Listener(f.def.Kind), Addr: f.dst, Port: f.port, L4: policy.L4TCP,
		Content: verdict.HTTP, Request: &q.req,
	}
	ri.v = verdict.Decide(fl)
	if !ri.v.Allowed {
		h.denyRequest(w, ri)
		return nil
	}
	ri.allowed = true
	f.allowedReqs.Add(1)
	if pol := fl.Who.Policy; pol != nil && pol.Learn {
		f.e.emit(f.decision(ri)) // the recorder wants every request shape
	}
	h.allowedCounter().Inc()
	// The server cancels r.Context() when an HTTP/1 client half-closes
	// after its request (`printf 'GET ...' | nc`), which would turn a good
	// request into an empty answer: the upstream request ends only when the
	// response cannot be written any more, or a policy change closes it
	// (ServeHTTP cancels it when it returns).
	q.Context, q.cancel = context.WithCancel(context.WithoutCancel(r.Context()))
	q.f, q.dial, q.wsKey = f, dialFor{pol: fl.Who.Policy, entry: ri.v.Entry}, key
	// The live conn keeps the facts the request was allowed on (q.req,
	// never changed after Decide) for Apply's re-checks; a policy change
	// that denies them closes it with q.kill.
	q.lc.setFlow(f.src, f.ep.Index, fl)
	q.lc.req = q
	return q
}

// request is one allowed request's state, allocated once: the facts it was
// decided on (tracked for Apply's re-checks while it runs) and, as the
// context its upstream request runs in, what the reverse proxy, the dialer
// and checkSwitch read of the decision (requestOf). Per-request context
// values and copies each cost an allocation on the path every inspected
// request takes.
type request struct {
	// Context is cancelled when the handler returns or a policy change
	// closes the request.
	context.Context
	ri    reqInfo
	req   verdict.Request
	lc    liveConn
	dial  dialFor
	wsKey string // the Sec-WebSocket-Key of a WebSocket handshake upgradeRefusal allowed

	f      *flow
	cancel context.CancelFunc
}

// kill ends a request that a policy change denies: its upstream request,
// and the connection carrying it.
func (q *request) kill() {
	q.f.closedBy.Store(true)
	q.cancel()
	q.f.reset()
}

// requestKey finds a request's *request in its context and in contexts
// derived from it.
type requestKey struct{}

func (q *request) Value(k any) any {
	if k == (requestKey{}) {
		return q
	}
	return q.Context.Value(k)
}

// requestOf returns the request ctx belongs to, nil for none.
func requestOf(ctx context.Context) *request {
	q, _ := ctx.Value(requestKey{}).(*request)
	return q
}

// allowedCounter is the allowed-requests counter of the handler's
// listener kind, looked up once per connection rather than per request.
func (h *httpHandler) allowedCounter() prometheus.Counter {
	h.allowedOnce.Do(func() {
		h.allowed = h.f.e.metrics.allowed.WithLabelValues(string(h.f.def.Kind))
	})
	return h.allowed
}

func (f *flow) tlsNameless() bool { return f.mode == "http" }

// whoNow answers who is asking from src now, without waiting, for a
// connection accepted from endpoint was: a connection whose source is no
// longer that endpoint (or never was one) is unknown.
func (e *Engine) whoNow(src netip.Addr, was *policy.Endpoint) policy.Who {
	c := e.state()
	if c == nil {
		return policy.Who{State: policy.ReasonPending}
	}
	who := c.snap.WhoIs(src, time.Now())
	if was == nil || who.Endpoint == nil || who.Endpoint.Index != was.Index {
		return policy.Who{State: policy.ReasonUnknownPeer}
	}
	return who
}

func stripPort(hostport string) string {
	if !strings.ContainsAny(hostport, ":[]") {
		return hostport // no port, nothing to trim: skip SplitHostPort's error
	}
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// denyRequest answers 403 with a body and an X-Clawker-Denied header that
// say what was denied and how to allow it (the verdict's fix): the same
// answer for plain HTTP and inspected TLS.
func (h *httpHandler) denyRequest(w http.ResponseWriter, ri *reqInfo) {
	f := h.f
	v := ri.v
	f.deniedReqs.Add(1)
	f.lastDeny.Store(v.Reason)
	f.e.metrics.denied.WithLabelValues(string(f.def.Kind), string(v.Reason)).Inc()
	d := f.decision(ri)
	f.e.emit(d)
	r := f.record()
	r.Verdict, r.Reason, r.Rule, r.Detail, r.Fix = decisionlog.Deny, string(v.Reason), v.Rule, v.Detail, v.Fix
	r.DestName, r.Method, r.Path = ri.host, ri.method, ri.path
	f.e.report(f, &r)

	dest := fmt.Sprintf("%s:%d", ri.host, f.port)
	w.Header().Set("X-Clawker-Denied", fmt.Sprintf("%s %s %s (%s); %s", ri.method, dest, ri.path, v.Reason, v.Fix))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintf(w, "clawker-fw denied %s %s%s: %s\n%s\n", ri.method, dest, ri.path, v.Reason, v.Fix)
	if v.Detail != "" && v.Reason != policy.ReasonPath {
		fmt.Fprintf(w, "detail: %s\n", v.Detail)
	}
}

// upstreamError answers a request whose upstream could not be used: a 403
// when the dial refused its addresses (private, host-local), else a 502.
func (h *httpHandler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if reason := dialReason(err); reason != ReasonUpstream {
		f := h.f
		var host string
		if q := requestOf(r.Context()); q != nil {
			host = q.ri.host
		}
		fl := verdict.Flow{Who: f.e.whoNow(f.src, f.ep), Listener: verdict.Listener(f.def.Kind), Port: f.port, L4: policy.L4TCP,
			Content: verdict.HTTP, Request: &verdict.Request{Host: host, Method: r.Method, Path: rawPath(r), TLSName: h.tlsName}}
		h.denyRequest(w, &reqInfo{host: host, path: rawPath(r), method: r.Method, v: verdict.Refuse(fl, verdict.Verdict{}, reason, err.Error())})
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	h.f.e.log.WithError(err).WithField(decisionlog.FSrcAddr, h.f.src.String()).Info("upstream request failed")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusBadGateway)
	fmt.Fprintf(w, "clawker-fw: upstream error: %v\n", err)
}

// serveCA serves the CA certificate at /ca.crt over plain HTTP.
func (e *Engine) serveCA(c net.Conn) {
	serveOne(c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src, _ := e.cfg.Certs.(CACertSource)
		if r.URL.Path != "/ca.crt" || (r.Method != http.MethodGet && r.Method != http.MethodHead) || src == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(src.CACertPEM())
	}), e.cfg.SniffTimeout)
}
