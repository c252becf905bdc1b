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
