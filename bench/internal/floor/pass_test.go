package floor

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestReadHelloSNI: the passthrough floor reads a real ClientHello (Go's
// TLS client) as one record and finds its server name.
func TestReadHelloSNI(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { _ = tls.Client(c, &tls.Config{ServerName: "bench.example.test"}).Handshake() }()
	rec, err := readHello(s)
	if err != nil {
		t.Fatal(err)
	}
	if got := sni(rec); got != "bench.example.test" {
		t.Fatalf("sni = %q", got)
	}
	if got := sni(append(rec[:5:5], 1, 0)); got != "" {
		t.Fatalf("sni of a cut hello = %q", got)
	}
}

// TestPassRelayHTTP: a plain HTTP request crosses the floor to the HTTP
// upstream (a body sent with the head included, the answer back after
// the client's half-close); a head without a Host is not relayed.
func TestPassRelayHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.Host, b)
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	go func() { _ = PassRelay(addr, "127.0.0.1:1", srv.Listener.Addr().String()) }()
	ask := func(req string) string {
		var c net.Conn
		for i := 0; i < 100; i++ {
			if c, err = net.Dial("tcp4", addr); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	got := ask("POST /x HTTP/1.1\r\nHost: bench.example.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody")
	if !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.HasSuffix(got, "POST bench.example.test body") {
		t.Fatalf("answer through the floor: %q", got)
	}
	if got := ask("GET / HTTP/1.0\r\n\r\n"); got != "" {
		t.Fatalf("a head without Host was relayed: %q", got)
	}
}
