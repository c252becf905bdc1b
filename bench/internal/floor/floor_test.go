package floor

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// echoUpstream starts a TLS server (h2 too when h2) that answers each
// request with its Host, URI and protocol, after calling seen with it
// (when set); it returns the server and the roots that trust it.
func echoUpstream(t *testing.T, h2 bool, seen func(*http.Request)) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen(r)
		}
		_, _ = io.WriteString(w, r.Host+" "+r.URL.RequestURI()+" "+r.Proto)
	}))
	up.EnableHTTP2 = h2
	up.StartTLS()
	t.Cleanup(up.Close)
	return up, up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

// listen returns a loopback listener closed at the end of the test.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// get fetches url with tr and returns the protocol and the body.
func get(t *testing.T, tr *http.Transport, url string) (proto, body string) {
	t.Helper()
	resp, err := (&http.Client{Transport: tr}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Proto, string(b)
}

// TestServer: a request through the relay reaches the upstream with its
// Host and path and the answer comes back, over HTTP/1.1 and HTTP/2 (by
// ALPN), and the upstream's certificate is verified.
func TestServer(t *testing.T) {
	up, roots := echoUpstream(t, true, nil)
	leaf := up.TLS.Certificates[0] // httptest's leaf is for example.com and 127.0.0.1
	srv := Server(leaf, up.Listener.Addr().String(), "example.com", roots)
	ln := listen(t)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()

	for _, h2 := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		proto, body := get(t, tr, "https://"+ln.Addr().String()+"/a/b?c=d")
		wantProto := "HTTP/1.1"
		if h2 {
			wantProto = "HTTP/2.0"
		}
		// The relay forwards over h2 (the transport prefers it) whatever the client spoke.
		if want := ln.Addr().String() + " /a/b?c=d HTTP/2.0"; body != want || proto != wantProto {
			t.Errorf("h2=%v: %s %q, want %s %q", h2, proto, body, wantProto, want)
		}
		tr.CloseIdleConnections()
	}
}

// keptAlive sends two requests on one kept-alive HTTP/1.1 connection to
// ln and checks that each reached the upstream and came back in order.
func keptAlive(t *testing.T, ln net.Listener, roots *x509.CertPool) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	for _, path := range []string{"/one", "/two?x=1"} {
		proto, body := get(t, tr, "https://"+ln.Addr().String()+path)
		if want := ln.Addr().String() + " " + path + " HTTP/1.1"; body != want || proto != "HTTP/1.1" {
			t.Errorf("%s %q, want HTTP/1.1 %q", proto, body, want)
		}
	}
}

// TestServerDirect: the middle floor relays two requests of one HTTP/1.1
// connection on its dedicated upstream connection.
func TestServerDirect(t *testing.T) {
	var conns sync.Map
	up, roots := echoUpstream(t, false, func(r *http.Request) { conns.Store(r.RemoteAddr, true) })
	srv := ServerDirect(up.TLS.Certificates[0], up.Listener.Addr().String(), "example.com", roots)
	ln := listen(t)
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	keptAlive(t, ln, roots)
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestServeLean: two requests on one kept-alive HTTP/1.1 connection through
// the lean floor reach the upstream and come back in order.
func TestServeLean(t *testing.T) {
	up, roots := echoUpstream(t, false, nil)
	ln := listen(t)
	go func() { _ = ServeLean(ln, up.TLS.Certificates[0], up.Listener.Addr().String(), "example.com", roots) }()
	keptAlive(t, ln, roots)
}
