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

	"golang.org/x/net/http2"

	"github.com/clawker-fw/clawker-fw/policy"
)

// reqInfo is one HTTP request's decision.
type reqInfo struct {
	host, path, method string
	allowed            bool
	reason             policy.Reason
	rule, detail       string
}

// inspect terminates TLS for f.name with a leaf from Config.Certs and serves
// HTTP/1.1 or HTTP/2 (by ALPN) to the client, deciding every request.
func (f *flow) inspect(ctx context.Context, m policy.Match) {
	if f.e.cfg.Certs == nil {
		f.deny(ReasonNoInspection, ruleOf(m), "the rule needs TLS inspection and the proxy has no CA")
		f.reset()
		return
	}
	leaf, err := f.e.cfg.Certs.Leaf(f.name)
	if err != nil {
		f.deny(ReasonNoInspection, ruleOf(m), "issue leaf: "+err.Error())
		f.reset()
		return
	}
	untrack, ok := f.track(m)
	if !ok {
		return
	}
	defer untrack()
	f.allow(m)
	cc := &countConn{Conn: f.conn, f: f}
	tc := tls.Server(cc, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	hctx, cancel := context.WithTimeout(ctx, f.e.cfg.SniffTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		f.detail = "client TLS handshake: " + err.Error()
		return
	}
	f.serveHTTP(ctx, tc, f.name)
}

// serveHTTP serves HTTP on c (the TLS conn under inspection, or the raw
// connection for plain HTTP when c is nil). tlsName is the SNI the client
// presented ("" for plain HTTP).
func (f *flow) serveHTTP(ctx context.Context, c net.Conn, tlsName string) {
	if c == nil {
		c = &countConn{Conn: f.conn, f: f}
		f.decided, f.allowed, f.reason = true, true, policy.ReasonAllowed
	}
	h := &httpHandler{f: f, tlsName: tlsName}
	scheme := "http"
	if tlsName != "" {
		scheme = "https"
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			host := pr.In.Context().Value(hostKey{}).(string)
			pr.Out.URL.Scheme = scheme
			pr.Out.URL.Host = hostPort(host, f.port, scheme)
			pr.Out.Host = pr.In.Host
			forwardAsSent(pr.Out.URL, pr.In.URL, rawPath(pr.In))
		},
		Transport:      f.e.transport(f.ep.Index),
		ErrorHandler:   h.upstreamError,
		ModifyResponse: checkSwitch,
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

type hostKey struct{}

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
}

// ServeHTTP decides one request:
//  1. the Host (":authority" in HTTP/2) must equal the TLS server name under
//     inspection (no domain fronting);
//  2. the endpoint's current policy must allow the host on this port, with
//     a rule of the matching protocol (https under inspection, else http);
//  3. the entry's path rules decide the method and the path as sent: every
//     plausible reading of it must be allowed (policy.DecidePath), and it
//     is forwarded byte for byte (forwardAsSent).
//
// Before all of these, a request that would turn the connection into a
// tunnel (CONNECT, h2c, any upgrade but WebSocket) is refused:
// upgradeRefusal.
func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.wg.Add(1)
	defer h.wg.Done()
	f := h.f
	f.requests.Add(1)
	host := strings.ToLower(strings.TrimSuffix(stripPort(r.Host), "."))
	ri := &reqInfo{host: host, method: r.Method, path: rawPath(r)}
	if f.tlsNameless() && host != "" && f.name == "" {
		f.name = host // first Host names a plain-HTTP flow in its log line
	}
	deny := func(reason policy.Reason, rule, detail string) {
		ri.reason, ri.rule, ri.detail = reason, rule, detail
		h.denyRequest(w, ri)
	}
	key, why := upgradeRefusal(r)
	if why != "" {
		deny(ReasonUpgrade, "", why)
		return
	}
	if host == "" {
		deny(ReasonBadRequest, "", "request has no Host")
		return
	}
	if h.tlsName != "" && host != h.tlsName {
		deny(ReasonDomainFronting, "", fmt.Sprintf("Host %q differs from the TLS server name %q", host, h.tlsName))
		return
	}
	pol := f.e.policyNow(f.src, f.ep)
	if pol == nil {
		deny(policy.ReasonPending, "", "")
		return
	}
	m := pol.MatchName(host, f.port, policy.L4TCP)
	if !m.Allowed {
		reason, detail := m.Reason, ""
		if f.ep.LabelError != "" {
			reason, detail = policy.ReasonBadLabel, f.ep.LabelError
		}
		deny(reason, ruleOf(m), detail)
		return
	}
	if m.Entry != nil {
		want := policy.ProtoHTTP
		if h.tlsName != "" {
			want = policy.ProtoHTTPS
		}
		if proto, _ := m.Entry.ProtoFor(f.port, policy.L4TCP); proto != want {
			deny(ReasonProtoMismatch, ruleOf(m), fmt.Sprintf("%s request to %s:%d but the rule allows %s", want, host, f.port, proto))
			return
		}
		if r.URL.Opaque != "" {
			deny(ReasonBadRequest, ruleOf(m), "opaque request target")
			return
		}
		if len(m.Entry.Paths) > 0 || m.Entry.PathDefault == policy.Deny {
			if !forwardable(ri.path) {
				deny(policy.ReasonPath, ruleOf(m), "the path cannot be forwarded as sent")
				return
			}
			ok, which := decidePath(m.Entry.Paths, m.Entry.PathDefault, ri.path, r.Method)
			if !ok {
				deny(policy.ReasonPath, ruleOf(m), which)
				return
			}
		}
	}
	ri.allowed = true
	f.allowedReqs.Add(1)
	f.e.metrics.allowed.WithLabelValues(string(f.def.Kind)).Inc()
	lc := &liveConn{src: f.src, index: f.ep.Index, name: host, port: f.port, l4: policy.L4TCP}
	// The server cancels r.Context() when an HTTP/1 client half-closes
	// after its request (`printf 'GET ...' | nc`), which would turn a good
	// request into an empty answer: the upstream request ends only when the
	// response cannot be written any more, or a policy change closes it.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	lc.closer = func() {
		f.closedBy.Store(true)
		cancel()
		f.reset()
	}
	untrack, ok := f.e.track(lc)
	if !ok {
		return
	}
	defer untrack()
	ctx = context.WithValue(ctx, hostKey{}, host)
	ctx = context.WithValue(ctx, polKey{}, pol)
	if key != "" {
		ctx = context.WithValue(ctx, wsKey{}, key)
	}
	h.proxy.ServeHTTP(w, r.WithContext(ctx))
}

func (f *flow) tlsNameless() bool { return f.mode == "http" }

// policyNow returns the current effective policy of src without waiting;
// a connection whose endpoint changed identity gets none.
func (e *Engine) policyNow(src netip.Addr, was *policy.Endpoint) *policy.Policy {
	c := e.state()
	if c == nil {
		return nil
	}
	ep, ok := c.snap.EndpointByIP(src)
	if !ok || ep.Index != was.Index {
		return &policy.Policy{}
	}
	return ep.Effective(time.Now())
}

func stripPort(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// denyRequest answers 403 with a body and an X-Clawker-Denied header that
// say what was denied and how to allow it.
func (h *httpHandler) denyRequest(w http.ResponseWriter, ri *reqInfo) {
	f := h.f
	f.deniedReqs.Add(1)
	f.lastDeny.Store(ri.reason)
	f.e.metrics.denied.WithLabelValues(string(f.def.Kind), string(ri.reason)).Inc()
	d := f.decision(ri)
	f.e.emit(d)
	fields := map[string]any{
		fieldSource: f.src.String(), fieldListener: f.def.Key, fieldName: ri.host, fieldPort: f.port,
		fieldPath: ri.path, fieldMethod: ri.method, fieldDecision: "deny", fieldReason: string(ri.reason),
	}
	if f.ep != nil {
		fields[fieldEndpoint] = f.ep.Index
		fields[fieldContainer] = containerOf(f.ep)
	}
	if ri.rule != "" {
		fields[fieldRule] = ri.rule
	}
	if ri.detail != "" {
		fields[fieldDetail] = ri.detail
	}
	if f.e.cfg.LogLimit.Allow(f.logKey()) {
		f.e.log.WithFields(fields).Warn(logMessage)
	}

	dest := fmt.Sprintf("%s:%d", ri.host, f.port)
	how := hint(ri.host, ri.reason, ri.rule, ri.detail)
	w.Header().Set("X-Clawker-Denied", fmt.Sprintf("%s %s %s (%s); %s", ri.method, dest, ri.path, ri.reason, how))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintf(w, "clawker-fw denied %s %s%s: %s\n%s\n", ri.method, dest, ri.path, ri.reason, how)
	if ri.detail != "" && ri.reason != policy.ReasonPath {
		fmt.Fprintf(w, "detail: %s\n", ri.detail)
	}
}

func (h *httpHandler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	var pe *errPrivate
	var le *errHostLocal
	if reason := ReasonPrivateUpstream; errors.As(err, &pe) || errors.As(err, &le) {
		if le != nil {
			reason = ReasonHostLocal
		}
		host, _ := r.Context().Value(hostKey{}).(string)
		h.denyRequest(w, &reqInfo{host: host, path: rawPath(r), method: r.Method, reason: reason, detail: err.Error()})
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	h.f.e.log.WithError(err).WithField(fieldSource, h.f.src.String()).Info("upstream request failed")
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
