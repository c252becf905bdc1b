package floor

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestServer: a request through the relay reaches the upstream with its
// Host and path and the answer comes back, over HTTP/1.1 and HTTP/2 (by
// ALPN), and the upstream's certificate is verified.
func TestServer(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Host+" "+r.URL.RequestURI()+" "+r.Proto)
	}))
	up.EnableHTTP2 = true
	up.StartTLS()
	defer up.Close()
	roots := up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	leaf := up.TLS.Certificates[0] // httptest's leaf is for example.com and 127.0.0.1

	srv := Server(leaf, up.Listener.Addr().String(), "example.com", roots)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()

	for _, h2 := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + "/a/b?c=d")
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantProto := "HTTP/1.1"
		if h2 {
			wantProto = "HTTP/2.0"
		}
		// The relay forwards over h2 (the transport prefers it) whatever the client spoke.
		if want := ln.Addr().String() + " /a/b?c=d HTTP/2.0"; string(body) != want || resp.Proto != wantProto {
			t.Errorf("h2=%v: %s %q, want %s %q", h2, resp.Proto, body, wantProto, want)
		}
		tr.CloseIdleConnections()
	}
}

// TestServerDirect: the middle floor relays two requests of one HTTP/1.1
// connection on its dedicated upstream connection.
func TestServerDirect(t *testing.T) {
	var conns sync.Map
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns.Store(r.RemoteAddr, true)
		_, _ = io.WriteString(w, r.Host+" "+r.URL.RequestURI()+" "+r.Proto)
	}))
	up.StartTLS()
	defer up.Close()
	roots := up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	srv := ServerDirect(up.TLS.Certificates[0], up.Listener.Addr().String(), "example.com", roots)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	for _, path := range []string{"/one", "/two?x=1"} {
		resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := ln.Addr().String() + " " + path + " HTTP/1.1"; string(body) != want {
			t.Errorf("%q, want %q", body, want)
		}
	}
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestServeLean: two requests on one kept-alive HTTP/1.1 connection through
// the lean floor reach the upstream and come back in order.
func TestServeLean(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Host+" "+r.URL.RequestURI()+" "+r.Proto)
	}))
	defer up.Close()
	roots := up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { _ = ServeLean(ln, up.TLS.Certificates[0], up.Listener.Addr().String(), "example.com", roots) }()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"}, MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	for _, path := range []string{"/one", "/two?x=1"} {
		resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := ln.Addr().String() + " " + path + " HTTP/1.1"; string(body) != want || resp.Proto != "HTTP/1.1" {
			t.Errorf("%s %q, want HTTP/1.1 %q", resp.Proto, body, want)
		}
	}
}
