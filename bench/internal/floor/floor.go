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
	"crypto/tls"
	"crypto/x509"
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
