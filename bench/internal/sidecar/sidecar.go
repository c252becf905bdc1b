// Package sidecar runs the real DNS sidecar (a built cmd/clawker-coredns)
// for the benchmarks that measure it over UDP (bench/dns, bench/scale's
// real-sidecar row): its process started on a Corefile and waited for,
// free loopback ports for its listeners, and its CPU time.
package sidecar

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// Sidecar is a running clawker-coredns.
type Sidecar struct {
	Cmd *exec.Cmd
	DNS string // its DNS address, 127.0.0.1:port
}

// Stop kills the process and waits for it.
func (s *Sidecar) Stop() {
	if s == nil {
		return
	}
	s.Cmd.Process.Kill()
	s.Cmd.Wait()
}

// Start writes corefile to path, runs bin on it and waits until its ready
// endpoint answers 200. The Corefile's server block is ".:port" on
// 127.0.0.1 and it has a `ready` address. Its output (one decision line
// per query) goes to /dev/null, as the plugin process would pay for its
// own log sink anyway; its stderr is this process's.
func Start(bin, path, corefile string) (*Sidecar, error) {
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		return nil, err
	}
	var port, ready string
	for _, l := range strings.Split(corefile, "\n") {
		if strings.HasPrefix(l, ".:") {
			port = strings.TrimSuffix(strings.TrimPrefix(l, ".:"), " {")
		}
		if f := strings.Fields(l); len(f) == 2 && f[0] == "ready" {
			ready = f[1]
		}
	}
	if port == "" || ready == "" {
		return nil, fmt.Errorf("%s: no .:port server block or no ready address", path)
	}
	cmd := exec.Command(bin, "-conf", path)
	cmd.Stderr = os.Stderr
	// Killed with the benchmark if it dies first (a signal, a timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Sidecar{Cmd: cmd, DNS: "127.0.0.1:" + port}
	for t0 := time.Now(); time.Since(t0) < 20*time.Second; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + ready + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
	}
	s.Stop()
	return nil, fmt.Errorf("sidecar %s not ready", path)
}

// Build builds cmd/clawker-coredns into dir and returns its path.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "clawker-coredns")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/clawker-fw/clawker-fw/cmd/clawker-coredns")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build clawker-coredns: %w", err)
	}
	return bin, nil
}

// CPUTime is the user+system CPU time of process pid (all threads), 0 if
// it cannot be read.
func CPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the ")" of the command name; utime and stime are fields
	// 14 and 15 (1-based) of the whole line.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// FreePort is a port free for both UDP and TCP on 127.0.0.1.
func FreePort() int {
	for {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
}

// Addr is 127.0.0.1 with a free port.
func Addr() string { return fmt.Sprintf("127.0.0.1:%d", FreePort()) }

// Upstream serves h on a UDP socket of 127.0.0.1 (a benchmark's fake
// upstream: nothing leaves the machine) and returns once it is serving;
// its address is the server's PacketConn.LocalAddr.
func Upstream(h mdns.HandlerFunc) (*mdns.Server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &mdns.Server{PacketConn: pc, Handler: h}
	ready := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(ready) }
	go srv.ActivateAndServe()
	<-ready
	return srv, nil
}
