package floor

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
)

// PassRelay serves the passthrough floor (bench/bridge's on the host,
// bench/proxy's on loopback) on listen: it accepts and, for TLS, reads the ClientHello (one record) and its SNI,
// dials the one fixed upstream address, writes the hello and relays both
// ways with io.Copy (splice(2)): no policy, no DNS, no identity, no log, no
// limits. A connection that does not start with a TLS record is plain HTTP
// (when toHTTP is set): its request head is read up to the empty line and
// must name a Host, then it goes to toHTTP the same way. It is the least
// any relay that must read the SNI or the Host does, to tell how much of
// the proxy's gap to the bridge is relaying itself.
func PassRelay(listen, to, toHTTP string) error {
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	return PassServe(ln, to, toHTTP)
}

// PassServe is PassRelay on an open listener.
func PassServe(ln net.Listener, to, toHTTP string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go passRelayConn(c.(*net.TCPConn), to, toHTTP)
	}
}

func passRelayConn(c *net.TCPConn, to, toHTTP string) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 16<<10)
	first, err := r.Peek(1)
	if err != nil {
		return
	}
	var head []byte
	if first[0] == 22 {
		if head, err = readHello(r); err != nil || sni(head) == "" {
			return
		}
	} else {
		if toHTTP == "" {
			return
		}
		if head, err = readRequestHead(r); err != nil {
			return
		}
		to = toHTTP
	}
	// Bytes the client sent after the head are in r: they go first.
	rest, _ := r.Peek(r.Buffered())
	head = append(head, rest...)
	u, err := net.Dial("tcp4", to)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	if _, err := up.Write(head); err != nil {
		return
	}
	Pipe(c, up)
}

// readRequestHead reads an HTTP/1 request head up to and including its
// empty line; it must carry a Host header.
func readRequestHead(r *bufio.Reader) ([]byte, error) {
	var head []byte
	host := false
	for len(head) < 64<<10 {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		head = append(head, line...)
		if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" {
			if !host {
				return nil, errors.New("no Host header")
			}
			return head, nil
		}
		if k, _, ok := strings.Cut(string(line), ":"); ok && strings.EqualFold(k, "host") {
			host = true
		}
	}
	return nil, errors.New("request head too long")
}

// readHello reads one TLS handshake record (the ClientHello).
func readHello(c io.Reader) ([]byte, error) {
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
