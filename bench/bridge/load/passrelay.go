package main

import (
	"errors"
	"io"
	"net"

	"github.com/clawker-fw/clawker-fw/bench/internal/floor"
)

// passRelay serves bench/bridge's passthrough floor on the host: it
// accepts, reads the TLS ClientHello (one record) and its SNI, dials the one
// fixed upstream address, writes the hello and relays both ways with
// io.Copy (splice(2)): no policy, no DNS, no identity, no log, no limits.
// It is the least any relay that must read the SNI does, to tell how much
// of the proxy's gap to the bridge on passthrough is relaying itself.
func passRelay(listen, to string) error {
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go passRelayConn(c.(*net.TCPConn), to)
	}
}

func passRelayConn(c *net.TCPConn, to string) {
	defer c.Close()
	hello, err := readHello(c)
	if err != nil || sni(hello) == "" {
		return
	}
	u, err := net.Dial("tcp4", to)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	if _, err := up.Write(hello); err != nil {
		return
	}
	floor.Pipe(c, up)
}

// readHello reads one TLS handshake record (the ClientHello).
func readHello(c net.Conn) ([]byte, error) {
	h := make([]byte, 5)
	if _, err := io.ReadFull(c, h); err != nil {
		return nil, err
	}
	if h[0] != 22 {
		return nil, errors.New("not a TLS handshake")
	}
	n := int(h[3])<<8 | int(h[4])
	b := make([]byte, 5+n)
	copy(b, h)
	if _, err := io.ReadFull(c, b[5:]); err != nil {
		return nil, err
	}
	return b, nil
}

// sni returns the server name of a ClientHello record ("" if none).
func sni(rec []byte) string {
	p := rec[5:]
	// handshake header (4), version (2), random (32)
	if len(p) < 38 || p[0] != 1 {
		return ""
	}
	p = p[38:]
	skip := func(lenBytes int) bool {
		if len(p) < lenBytes {
			return false
		}
		n := 0
		for _, x := range p[:lenBytes] {
			n = n<<8 | int(x)
		}
		if len(p) < lenBytes+n {
			return false
		}
		p = p[lenBytes+n:]
		return true
	}
	if !skip(1) || !skip(2) || !skip(1) { // session id, cipher suites, compression
		return ""
	}
	if len(p) < 2 {
		return ""
	}
	p = p[2:] // extensions length
	for len(p) >= 4 {
		typ, n := int(p[0])<<8|int(p[1]), int(p[2])<<8|int(p[3])
		if len(p) < 4+n {
			return ""
		}
		ext := p[4 : 4+n]
		p = p[4+n:]
		// server_name: list length (2), type (1) = 0, name length (2), name
		if typ == 0 && len(ext) >= 5 && ext[2] == 0 {
			if l := int(ext[3])<<8 | int(ext[4]); len(ext) >= 5+l {
				return string(ext[5 : 5+l])
			}
		}
	}
	return ""
}
