// Package floor is the benchmarks' inspection "floor": a minimal
// TLS-terminating HTTP relay with no policy, built the way any Go proxy on
// net/http is (server, httputil.ReverseProxy, a pooled transport set as the
// builtin engine sets its own, a copy-buffer pool). bench/proxy and
// bench/bridge measure the builtin engine's inspection against it, to
// separate what terminating TLS and relaying requests costs on this machine
// from clawker-fw's own work. It decides nothing and checks nothing: a
// measuring instrument, never a proxy to use.
package floor

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// Server returns the relay's server: TLS with leaf (h2 and HTTP/1.1 by
// ALPN) in front of upstream (host:port, HTTPS, verified as serverName
// against roots). Serve it with ServeTLS(ln, "", "").
func Server(leaf tls.Certificate, upstream, serverName string, roots *x509.CertPool) *http.Server {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = upstream
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			TLSClientConfig:     &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		BufferPool: &buffers{},
	}
	return &http.Server{Handler: rp, IdleTimeout: 2 * time.Minute,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}}
}

type buffers struct{ p sync.Pool }

func (b *buffers) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *buffers) Put(buf []byte) { b.p.Put(&buf) }

// ServeLean serves the lean floor on ln: HTTP/1.1 only, one goroutine per
// client connection and a dedicated upstream connection of its own, each
// request read once (http.ReadRequest), written upstream and its response
// streamed back, with none of net/http's server or transport machinery
// (no background read, no request clone, no goroutine hand-off per
// request). It checks nothing a proxy must check (invariant 9 of
// docs/DESIGN.md): it measures what such a relay design could save, no more.
func ServeLean(ln net.Listener, leaf tls.Certificate, upstream, serverName string, roots *x509.CertPool) error {
	srvCfg := &tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	upCfg := &tls.Config{ServerName: serverName, RootCAs: roots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go leanConn(tls.Server(c, srvCfg), upstream, upCfg)
	}
}

func leanConn(tc *tls.Conn, upstream string, upCfg *tls.Config) {
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return
	}
	uc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp4", upstream, upCfg)
	if err != nil {
		return
	}
	defer uc.Close()
	cr, cw := bufio.NewReader(tc), bufio.NewWriter(tc)
	ur, uw := bufio.NewReader(uc), bufio.NewWriter(uc)
	for {
		req, err := http.ReadRequest(cr)
		if err != nil {
			return
		}
		if err := req.Write(uw); err != nil || uw.Flush() != nil {
			return
		}
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return
		}
		err = resp.Write(cw)
		resp.Body.Close()
		if err != nil || cw.Flush() != nil || resp.Close {
			return
		}
	}
}

// ServerDirect returns the middle floor's server: net/http's server as in
// Server (its request parsing, checks and response writing), but each
// client connection's requests written synchronously to a dedicated
// upstream HTTP/1.1 connection of its own instead of going through
// httputil.ReverseProxy and http.Transport. HTTP/1.1 clients only (an h2
// client's concurrent streams would need a pool).
func ServerDirect(leaf tls.Certificate, upstream, serverName string, roots *x509.CertPool) *http.Server {
	upCfg := &tls.Config{ServerName: serverName, RootCAs: roots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	var ups sync.Map // client net.Conn -> *upConn
	return &http.Server{IdleTimeout: 2 * time.Minute,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			u := &upConn{}
			ups.Store(c, u)
			return context.WithValue(ctx, upKey{}, u)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				if u, ok := ups.LoadAndDelete(c); ok {
					u.(*upConn).close()
				}
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u := r.Context().Value(upKey{}).(*upConn)
			if u.c == nil {
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp4", upstream, upCfg)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				u.c, u.r, u.w = c, bufio.NewReader(c), bufio.NewWriter(c)
			}
			if err := r.Write(u.w); err != nil || u.w.Flush() != nil {
				u.close()
				http.Error(w, "upstream write", http.StatusBadGateway)
				return
			}
			resp, err := http.ReadResponse(u.r, r)
			if err != nil {
				u.close()
				http.Error(w, "upstream read", http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			for k, vv := range resp.Header {
				w.Header()[k] = vv
			}
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
			if resp.Close {
				u.close()
			}
		}),
	}
}

type upKey struct{}

// upConn is one client connection's upstream connection (its requests are
// sequential: HTTP/1.1 without pipelining in the handler).
type upConn struct {
	c *tls.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func (u *upConn) close() {
	if u.c != nil {
		u.c.Close()
		u.c = nil
	}
}
