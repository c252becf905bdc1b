package fakenet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxBytes bounds /bytes?n=N.
const maxBytes = 1 << 30

// Server runs every fakenet service.
type Server struct {
	cfg  *Config
	rec  *Recorder
	cert tls.Certificate

	mu        sync.Mutex
	closers   []func()
	listeners map[string]net.Addr // "service/port" -> bound address (for tests)
	wg        sync.WaitGroup
	sshd      *sshd
	errs      chan error
}

// New validates cfg and prepares the CA; Start binds the services.
func New(cfg *Config) (*Server, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	cert, err := EnsureCA(cfg.CADir, cfg.certNames(), cfg.certIPs())
	if err != nil {
		return nil, fmt.Errorf("ensure ca: %w", err)
	}
	return &Server{cfg: cfg, rec: NewRecorder(), cert: cert, listeners: map[string]net.Addr{}, errs: make(chan error, 16)}, nil
}

// Recorder returns the server's event log.
func (s *Server) Recorder() *Recorder { return s.rec }

// Addr returns the bound address of a service ("dns-udp/<ip>", "dns-tcp/<ip>",
// "https/<port>", "http/<port>", "echo/<port>", "ssh", "control").
func (s *Server) Addr(key string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listeners[key]
}

// Errors reports fatal errors of background servers (sshd exiting, a listener failing).
func (s *Server) Errors() <-chan error { return s.errs }

func (s *Server) fail(err error) {
	select {
	case s.errs <- err:
	default:
	}
}

func (s *Server) track(key string, addr net.Addr, closer func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners[key] = addr
	s.closers = append(s.closers, closer)
}

// Start binds every configured service. On error the ones already started
// are closed.
func (s *Server) Start() (err error) {
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.startDNS(); err != nil {
		return err
	}
	handler := s.httpHandler()
	for _, p := range s.cfg.HTTPSPorts {
		if err := s.startHTTP("https", p, handler, true); err != nil {
			return err
		}
	}
	for _, p := range s.cfg.HTTPPorts {
		if err := s.startHTTP("http", p, handler, false); err != nil {
			return err
		}
	}
	for _, p := range s.cfg.EchoPorts {
		if err := s.startEcho(p); err != nil {
			return err
		}
	}
	if s.cfg.SSH != nil {
		if err := s.startSSH(); err != nil {
			return err
		}
	}
	if s.cfg.SniffIface != "" {
		if err := s.startSniffer(s.cfg.SniffIface); err != nil {
			return err
		}
	}
	if s.cfg.Control != "" {
		if err := s.startControl(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops every service and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	closers := s.closers
	s.closers = nil
	s.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	s.wg.Wait()
}

func (s *Server) startDNS() error {
	h := &dnsHandler{z: newZoneData(s.cfg), rec: s.rec}
	for _, ip := range s.cfg.DNSAddrs {
		addr := net.JoinHostPort(ip, strconv.Itoa(s.cfg.DNSPort))
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return fmt.Errorf("listen dns udp %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			pc.Close()
			return fmt.Errorf("listen dns tcp %s: %w", addr, err)
		}
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
			started := make(chan struct{})
			var once sync.Once
			signal := func() { once.Do(func() { close(started) }) }
			srv.NotifyStartedFunc = signal
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer signal() // unblock below if activation failed
				if err := srv.ActivateAndServe(); err != nil {
					s.fail(fmt.Errorf("dns %s: %w", addr, err))
				}
			}()
			<-started
			s.track("dns-"+map[bool]string{true: "udp", false: "tcp"}[srv.PacketConn != nil]+"/"+ip,
				addrOf(srv), func() { _ = srv.Shutdown() })
		}
	}
	return nil
}

func addrOf(srv *dns.Server) net.Addr {
	if srv.PacketConn != nil {
		return srv.PacketConn.LocalAddr()
	}
	return srv.Listener.Addr()
}

func (s *Server) listen(port int) (net.Listener, error) {
	addr := net.JoinHostPort(s.cfg.ListenIP, strconv.Itoa(port))
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

func (s *Server) startHTTP(service string, port int, h http.Handler, useTLS bool) error {
	ln, err := s.listen(port)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	rl := &recordingListener{Listener: ln, rec: s.rec, service: service}
	s.track(fmt.Sprintf("%s/%d", service, port), ln.Addr(), func() { _ = srv.Close() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var err error
		if useTLS {
			// ServeTLS configures HTTP/2 (h2 via ALPN) next to HTTP/1.1.
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS12}
			err = srv.ServeTLS(rl, "", "")
		} else {
			err = srv.Serve(rl)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.fail(fmt.Errorf("%s %d: %w", service, port, err))
		}
	}()
	return nil
}

// httpHandler answers every request with a line naming host and path, and
// /bytes?n=N with N bytes; "Upgrade: h2c" and WebSocket handshakes to /ws
// switch protocols (upgrade.go). Each request is recorded.
func (s *Server) httpHandler() http.Handler {
	var h http.HandlerFunc
	h = func(w http.ResponseWriter, r *http.Request) {
		src, sport := splitAddr(addrFromString(r.RemoteAddr))
		e := Entry{Kind: KindHTTP, Proto: "tcp", Service: "http", Src: src, SrcPort: sport,
			Name: hostOnly(r.Host), Path: r.URL.RequestURI(), Target: r.RequestURI, HTTPProto: r.Proto}
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			e.Dst, e.DstPort = splitAddr(la)
		}
		if r.TLS != nil {
			e.Service = "https"
			e.SNI = r.TLS.ServerName
		}
		s.rec.Add(e)
		switch {
		case r.ProtoMajor == 1 && wantsH2C(r):
			serveH2C(w, r, h)
		case r.URL.Path == "/ws" && r.ProtoMajor == 1 && wantsWebSocket(r):
			serveWebSocket(w, r)
		case r.URL.Path == "/bytes":
			n, err := strconv.Atoi(r.URL.Query().Get("n"))
			if err != nil || n < 0 || n > maxBytes {
				http.Error(w, "n must be 0.."+strconv.Itoa(maxBytes), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(n))
			writeBytes(w, n)
		case strings.HasPrefix(r.URL.Path, "/status/"):
			code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
			if err != nil || code < 200 || code > 599 {
				code = http.StatusBadRequest
			}
			w.WriteHeader(code)
			fmt.Fprintf(w, "fakenet status=%d\n", code)
		default:
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "fakenet host=%s path=%s proto=%s sni=%s dst=%s:%d target=%s\n",
				e.Name, e.Path, r.Proto, e.SNI, e.Dst, e.DstPort, e.Target)
		}
	}
	return h
}

func writeBytes(w io.Writer, n int) {
	chunk := []byte(strings.Repeat("x", 32<<10))
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return strings.ToLower(h)
	}
	return strings.ToLower(hostport)
}

type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

func addrFromString(s string) net.Addr { return strAddr(s) }

func (s *Server) serveConns(ln net.Listener, service string, handle func(net.Conn)) {
	rl := &recordingListener{Listener: ln, rec: s.rec, service: service}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := rl.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.fail(fmt.Errorf("%s accept: %w", service, err))
				}
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func (s *Server) startEcho(port int) error {
	ln, err := s.listen(port)
	if err != nil {
		return err
	}
	s.track(fmt.Sprintf("echo/%d", port), ln.Addr(), func() { ln.Close() })
	s.serveConns(ln, "echo", func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
		_, _ = io.Copy(c, c)
	})
	return nil
}

// startControl serves the control API:
//
//	GET  /healthz      "ok"
//	GET  /log?since=N  JSON []Entry with Seq > N
//	POST /reset        drop the log
//	GET  /ca.crt       the test CA certificate (PEM)
func (s *Server) startControl() error {
	ln, err := net.Listen("tcp4", s.cfg.Control)
	if err != nil {
		return fmt.Errorf("listen control %s: %w", s.cfg.Control, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /log", func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.rec.Since(since))
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		s.rec.Reset()
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /ca.crt", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(s.cfg.CADir, CACertFile))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.track("control", ln.Addr(), func() { _ = srv.Close() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.fail(fmt.Errorf("control: %w", err))
		}
	}()
	return nil
}

// Run starts the server and blocks until ctx is done or a service fails.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	defer s.Close()
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.errs:
		return err
	}
}

// writeFile is os.WriteFile with a wrapped error.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
