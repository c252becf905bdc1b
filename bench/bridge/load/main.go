// Command load is bench/bridge's server and client in one static binary.
//
// Server (run by bench/bridge inside its own network namespace):
//
//	load serve -cert leaf.crt -key leaf.key -https ADDR -http ADDR
//
// answers GET /bytes?n=N with N bytes, POST /upload by reading the body to
// the end, and every other path with a short text line, on HTTPS (h1 and h2
// by ALPN) and plain HTTP.
//
// Client (run in a container with docker exec; prints one JSON object):
//
//	load bulk -dir down|up ...       one connection, MB/s and host CPU (/proc/stat)
//	load newconn -scheme https|http  sequential new connection + GET, latencies
//	load keepalive -conns 64 [-h2]   GETs on kept-alive connections, req/s
//	load dns -n N                    lookups of the name, latencies
//
// -connect ADDR:PORT dials that address instead of the name's (the floor
// relay of relay.go, which bench/bridge runs on the host: load relay; and
// the passthrough floor of bench/internal/floor/pass.go: load passrelay -listen -upstream).
//
// The client resolves the name once per run and dials that address, so that
// DNS is measured only by the dns mode; TLS sessions are never resumed.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/bench/internal/floor"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: load serve|bulk|newconn|keepalive|dns [flags]"))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	c := &client{}
	fs.StringVar(&c.host, "host", "bench.example.test", "server name (SNI, Host)")
	fs.StringVar(&c.caFiles, "ca", "", "PEM CA files the client trusts, comma separated")
	scheme := fs.String("scheme", "https", "https or http")
	dir := fs.String("dir", "down", "bulk: down or up")
	size := fs.Int64("bytes", 256<<20, "bulk: bytes to transfer")
	n := fs.Int("n", 300, "newconn, dns: requests")
	conns := fs.Int("conns", 64, "keepalive: connections")
	dur := fs.Duration("dur", 3*time.Second, "keepalive: measured duration (after 0.5 s of warm-up)")
	h2 := fs.Bool("h2", false, "keepalive: HTTP/2 (one stream at a time per connection)")
	cert := fs.String("cert", "", "serve: leaf certificate")
	key := fs.String("key", "", "serve: leaf key")
	httpsAddr := fs.String("https", ":443", "serve: HTTPS address")
	httpAddr := fs.String("http", ":80", "serve: HTTP address")
	fs.StringVar(&c.connect, "connect", "", "client: dial this address:port instead of the name's")
	listen := fs.String("listen", "", "relay: listen address")
	upstream := fs.String("upstream", "", "relay: upstream address:port")
	upstreamHTTP := fs.String("upstream-http", "", "passrelay: plain HTTP upstream address:port (empty: TLS only)")
	_ = fs.Parse(os.Args[2:])
	var out any
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(*cert, *key, *httpsAddr, *httpAddr)
	case "bulk":
		out, err = c.bulk(*dir, *size)
	case "newconn":
		out, err = c.newconn(*scheme, *n)
	case "relay":
		err = c.relay(*cert, *key, *listen, *upstream)
	case "passrelay":
		err = floor.PassRelay(*listen, *upstream, *upstreamHTTP)
	case "keepalive":
		out, err = c.keepalive(*conns, *dur, *h2)
	case "dns":
		out, err = c.dns(*n)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "load:", err)
	os.Exit(1)
}

// ---- server ----

var chunk = []byte(strings.Repeat("0123456789abcdef", 4096)) // 64 KiB

func handler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/bytes":
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	case "/upload":
		buf := make([]byte, 256<<10)
		got, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{r.Body}, buf)
		fmt.Fprintf(w, "%d\n", got)
	default:
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "bench/bridge ok: a short answer of a few dozen bytes\n")
	}
}

func serve(certFile, keyFile, httpsAddr, httpAddr string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() {
		srv := &http.Server{Addr: httpsAddr, Handler: http.HandlerFunc(handler),
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
		errc <- srv.ListenAndServeTLS("", "")
	}()
	go func() {
		errc <- (&http.Server{Addr: httpAddr, Handler: http.HandlerFunc(handler)}).ListenAndServe()
	}()
	return <-errc
}

// ---- client ----

type client struct {
	host, caFiles string
	addr          string // resolved once
	connect       string // -connect: dial this instead
	roots         *x509.CertPool
}

func (c *client) setup() error {
	if c.addr != "" {
		return nil
	}
	if c.connect != "" {
		c.addr = c.connect
		return c.setupRoots()
	}
	ips, err := net.DefaultResolver.LookupHost(context.Background(), c.host)
	if err != nil || len(ips) == 0 {
		return fmt.Errorf("resolve %s: %v", c.host, err)
	}
	c.addr = ips[0]
	return c.setupRoots()
}

func (c *client) setupRoots() error {
	c.roots = x509.NewCertPool()
	for _, f := range strings.Split(c.caFiles, ",") {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if !c.roots.AppendCertsFromPEM(b) {
			return fmt.Errorf("%s: no certificate", f)
		}
	}
	return nil
}

// transport dials the resolved address; h2 selects HTTP/2 by ALPN, else
// HTTP/1.1 only.
func (c *client) transport(h2, keepAlive bool) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			var d net.Dialer
			if c.connect != "" {
				return d.DialContext(ctx, "tcp4", c.connect)
			}
			return d.DialContext(ctx, "tcp4", net.JoinHostPort(c.addr, port))
		},
		TLSClientConfig:     &tls.Config{ServerName: c.host, RootCAs: c.roots},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
		DisableCompression:  true,
		ForceAttemptHTTP2:   h2,
		ReadBufferSize:      256 << 10,
		WriteBufferSize:     256 << 10,
	}
	if !h2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// cpuJiffies reads the host-wide busy and total CPU time from /proc/stat
// (not namespaced: in a container it is the host's).
func cpuJiffies() (busy, total int64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return 0, 0
	}
	fields := strings.Fields(s.Text()) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	for i, v := range fields[1:] {
		if i >= 8 { // guest time is already counted in user
			break
		}
		x, _ := strconv.ParseInt(v, 10, 64)
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total
}

// cgroupCPU is the CPU seconds of this container's cgroup, 0 if
// unreadable: cgroup v2 (cpu.stat usage_usec) or v1 (cpuacct.usage, ns);
// Docker mounts the container's own cgroup at /sys/fs/cgroup.
func cgroupCPU() float64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/cpu.stat"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
				x, _ := strconv.ParseFloat(v, 64)
				return x / 1e6
			}
		}
	}
	for _, p := range []string{"/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"} {
		if b, err := os.ReadFile(p); err == nil {
			x, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			return x / 1e9
		}
	}
	return 0
}

type bulkResult struct {
	Bytes     int64   `json:"bytes"`
	Secs      float64 `json:"secs"`
	MBps      float64 `json:"mbps"`
	HostBusyS float64 `json:"host_busy_s"` // host-wide CPU seconds (USER_HZ 100) during the transfer
	HostAllS  float64 `json:"host_all_s"`
	ClientS   float64 `json:"client_cpu_s"` // CPU of the client's cgroup (the container) during the transfer
}

type repeatReader struct{ left int64 }

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], chunk)
	for n < len(p) && int64(n) < r.left {
		n += copy(p[n:min(int64(len(p)), r.left)], chunk)
	}
	r.left -= int64(n)
	return n, nil
}

func (c *client) bulk(dir string, size int64) (*bulkResult, error) {
	if err := c.setup(); err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: c.transport(false, true)}
	// Warm: connect and one small request on the same connection, so that
	// only the transfer is timed.
	if err := get(hc, "https://"+c.host+"/"); err != nil {
		return nil, err
	}
	b0, a0 := cpuJiffies()
	c0 := cgroupCPU()
	start := time.Now()
	var got int64
	switch dir {
	case "down":
		resp, err := hc.Get("https://" + c.host + "/bytes?n=" + strconv.FormatInt(size, 10))
		if err != nil {
			return nil, err
		}
		got, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, make([]byte, 256<<10))
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
	case "up":
		req, _ := http.NewRequest("POST", "https://"+c.host+"/upload", &repeatReader{left: size})
		req.ContentLength = size
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got, _ = strconv.ParseInt(strings.TrimSpace(string(body)), 10, 64)
	default:
		return nil, fmt.Errorf("dir %q", dir)
	}
	secs := time.Since(start).Seconds()
	b1, a1 := cpuJiffies()
	c1 := cgroupCPU()
	if got != size {
		return nil, fmt.Errorf("%s: %d of %d bytes", dir, got, size)
	}
	return &bulkResult{Bytes: got, Secs: secs, MBps: float64(got) / 1e6 / secs,
		HostBusyS: float64(b1-b0) / 100, HostAllS: float64(a1-a0) / 100, ClientS: c1 - c0}, nil
}

func get(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return err
}

type latResult struct {
	N     int     `json:"n"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	Secs  float64 `json:"secs"`
}

func lat(ds []time.Duration, secs float64) *latResult {
	slices.Sort(ds)
	p := func(q float64) float64 { return float64(ds[int(float64(len(ds)-1)*q)]) / 1e6 }
	return &latResult{N: len(ds), P50ms: p(.5), P99ms: p(.99), Secs: secs}
}

// newconn: n sequential requests, each on a new connection (TCP connect,
// TLS handshake without resumption for https, GET /, body read, close).
func (c *client) newconn(scheme string, n int) (*latResult, error) {
	if err := c.setup(); err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: c.transport(false, false)}
	url := scheme + "://" + c.host + "/"
	for i := 0; i < 5; i++ { // warm-up, discarded
		if err := get(hc, url); err != nil {
			return nil, err
		}
	}
	ds := make([]time.Duration, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := get(hc, url); err != nil {
			return nil, err
		}
		ds = append(ds, time.Since(t0))
	}
	return lat(ds, time.Since(start).Seconds()), nil
}

type kaResult struct {
	latResult
	Reqs  int     `json:"reqs"`
	RPS   float64 `json:"rps"`
	Proto string  `json:"proto"`
}

// keepalive: conns workers, each with its own connection, GET / back to
// back for 0.5 s of warm-up and then dur (counted).
func (c *client) keepalive(conns int, dur time.Duration, h2 bool) (*kaResult, error) {
	if err := c.setup(); err != nil {
		return nil, err
	}
	url := "https://" + c.host + "/"
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	proto := ""
	var wg sync.WaitGroup
	begin := time.Now()
	measureFrom, end := begin.Add(500*time.Millisecond), begin.Add(500*time.Millisecond+dur)
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Transport: c.transport(h2, true)}
			var ds []time.Duration
			for {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				resp, err := hc.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					proto = resp.Proto
					mu.Unlock()
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				if t0.After(measureFrom) {
					ds = append(ds, time.Since(t0))
				}
			}
			mu.Lock()
			all = append(all, ds...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if len(all) == 0 {
		return nil, errors.New("no request completed")
	}
	secs := dur.Seconds()
	r := &kaResult{latResult: *lat(all, secs), Reqs: len(all), RPS: float64(len(all)) / secs, Proto: proto}
	return r, nil
}

// dns: n lookups of the name's A record (one query each), sequential.
func (c *client) dns(n int) (*latResult, error) {
	ds := make([]time.Duration, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := net.DefaultResolver.LookupIP(context.Background(), "ip4", c.host); err != nil {
			return nil, err
		}
		ds = append(ds, time.Since(t0))
	}
	return lat(ds, time.Since(start).Seconds()), nil
}
