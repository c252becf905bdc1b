package main

import (
	"crypto/tls"
	"net"
	"testing"
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
