package main

import (
	"crypto/tls"
	"net"

	"github.com/clawker-fw/clawker-fw/bench/internal/floor"
)

// relay serves bench/bridge's inspection floor (package bench/internal/floor)
// on the host in front of the server; the bridge container's client
// reaches the server through it (keepalive -connect).
//
//	load relay -cert leaf.crt -key leaf.key -ca ca.crt -listen ADDR -upstream ADDR
func (c *client) relay(certFile, keyFile, listen, upstream string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	if err := c.setupRoots(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	return floor.Server(cert, upstream, c.host, c.roots).ServeTLS(ln, "", "")
}
