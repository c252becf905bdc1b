package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/clawker-fw/clawker-fw/bench/internal/floor"
)

// The inspection floors, in a process of their own (-floor-child) in front
// of the bench upstream, with the same CA, leaf and Go TLS stack as the
// builtin engine:
//   - floor: bench/internal/floor, a net/http server + ReverseProxy with no
//     policy: what any Go proxy built on net/http pays per request;
//   - floor-lean (HTTP/1.1 only): bench/internal/floor.ServeLean, one
//     goroutine and one dedicated upstream connection per client connection,
//     requests read with http.ReadRequest and written upstream, none of
//     net/http's server or transport: what a leaner relay design could save;
//   - floor-direct (HTTP/1.1 only): bench/internal/floor.ServerDirect,
//     net/http's server but each client connection's requests written to a
//     dedicated upstream connection, no ReverseProxy and no http.Transport;
//   - floor-copy: TLS terminated and the decrypted bytes copied to a TLS
//     connection to the upstream, no HTTP parsed at all: what no proxy that
//     reads requests on this TLS stack can undercut;
//   - floor-pass (the new-connection rows): bench/internal/floor.PassServe,
//     the passthrough floor of bench/bridge: read the ClientHello's SNI (or
//     a plain HTTP request head), dial the one upstream address, splice(2):
//     what any relay that must read the SNI or the Host adds.

var (
	floorChild = flag.Bool("floor-child", false, "internal: run the floor relays and print their addresses")
	noFloor    = flag.Bool("no-floor", false, "inspect: skip the floor arms (minimal Go TLS-terminating relays, no policy)")
	floorProf  = flag.String("floor-cpuprofile", "", "write a CPU profile of the floor relays' process here")
)

// startFloor runs the floor relays' child process.
func (e *env) startFloor(caFile string) (func(), error) {
	stop, addr, pid, err := startChildPID("-floor-child", "-child-up-port", strconv.Itoa(int(e.upPort)),
		"-child-up-plain-port", strconv.Itoa(int(e.plainPort)), "-child-ca", caFile, "-floor-cpuprofile", *floorProf)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(addr)
	if len(f) != 5 {
		stop()
		return nil, fmt.Errorf("floor child: %q", addr)
	}
	e.floorAddr, e.floorCopyAddr, e.floorLeanAddr, e.floorDirectAddr, e.floorPassAddr, e.floorPID = f[0], f[1], f[2], f[3], f[4], pid
	return stop, nil
}

// runFloorChild serves both floors and prints their addresses.
func runFloorChild() error {
	ca, err := readCA(*childCA)
	if err != nil {
		return err
	}
	stopProf, err := startCPUProfile(*floorProf)
	if err != nil {
		return err
	}
	defer stopProf()
	up := net.JoinHostPort("127.0.0.1", strconv.Itoa(*childUp))
	leaf, err := ca.Leaf(inspectName)
	if err != nil {
		return err
	}
	srv := floor.Server(*leaf, up, inspectName, ca.pool())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	cln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer cln.Close()
	go copyRelay(cln, srv.TLSConfig, &tls.Config{ServerName: inspectName, RootCAs: ca.pool(), MinVersion: tls.VersionTLS12}, up)
	lln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer lln.Close()
	go func() { _ = floor.ServeLean(lln, *leaf, up, inspectName, ca.pool()) }()
	dln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dsrv := floor.ServerDirect(*leaf, up, inspectName, ca.pool())
	go func() { _ = dsrv.ServeTLS(dln, "", "") }()
	defer dsrv.Close()
	pln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer pln.Close()
	go func() {
		_ = floor.PassServe(pln, up, net.JoinHostPort("127.0.0.1", strconv.Itoa(*childUpP)))
	}()
	fmt.Printf("ADDR %s %s %s %s %s\n", ln.Addr(), cln.Addr(), lln.Addr(), dln.Addr(), pln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// copyRelay is the copy floor: TLS terminated, the decrypted bytes copied
// both ways to a TLS connection of its own to the upstream (offering the
// ALPN the client chose).
func copyRelay(ln net.Listener, srvCfg, upCfg *tls.Config, up string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			tc := tls.Server(c, srvCfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			cfg := upCfg.Clone()
			if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
				cfg.NextProtos = []string{p}
			}
			uc, err := tls.Dial("tcp4", up, cfg)
			if err != nil {
				return
			}
			defer uc.Close()
			floor.Pipe(tc, uc)
		}()
	}
}
