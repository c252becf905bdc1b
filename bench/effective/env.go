package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	"github.com/clawker-fw/clawker-fw/bpf"
	clawkerdns "github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/wire"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// The bench's network lives on loopback: the proxy's listeners bind the
// gateway, each endpoint's flows leave from its own address (the proxy and
// the DNS plugin identify endpoints by source address), and every upstream
// name resolves to upstreamIP, where the bench's TLS and HTTP servers listen.
var (
	benchNet = scaleenv.Net{ID: "effectivenet0000000000000000000000000000000000000000000000000000", Bridge: "cfw-effective",
		Subnet: netip.MustParsePrefix("127.200.0.0/22"), Gateway: netip.MustParseAddr("127.200.0.1")}
	upstreamIP = netip.MustParseAddr("127.0.0.1")
)

// errNotRoot is the refusal of every part that needs root.
var errNotRoot = errors.New("needs root: it loads the real BPF programs and maps (a bpffs pin dir and a cgroup of its own) and the kernel splice")

// env is one endpoint count's running plugin: the real plugin core with
// the real builtin proxy, BPF maps and DNS snapshot file, and the real
// clawker CoreDNS plugin loading that file; fakes only for the host
// network (bridges, nftables) and Docker.
type env struct {
	tmp     string
	mgr     *bpf.Manager
	splicer *bpf.Splicer
	engine  *builtin.Engine
	p       *fwplugin.Plugin
	watcher *clawkerdns.Watcher
	dns     *clawkerdns.Clawker
	admin   *http.Client
	adminLn net.Listener
	up      *upstreams
	names   []string
	n       int
	rules   int // network rules
	// nextID is the identity the next new pattern gets (0: read it from
	// state.json; see nextIdentity).
	nextID  uint32
	cleanup []func()
}

func (e *env) close() {
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		e.cleanup[i]()
	}
}

func randID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newEnv builds the plugin for n endpoints on a network of rules rules.
// The endpoints are restored from state.json as after a plugin restart
// with their containers running and identified (joining 500 containers
// one Docker call at a time would take the benchmark's whole budget); the
// fake Docker lists the same containers with the same labels.
func newEnv(n, rules int, kernelSplice bool, spliceAfter int64) (e *env, err error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	e = &env{n: n}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	id := randID()
	if e.tmp, err = os.MkdirTemp("", "clawker-bench-effective-"); err != nil {
		return e, err
	}
	e.cleanup = append(e.cleanup, func() { os.RemoveAll(e.tmp) })

	// The plugin's persisted state: the network and n identified endpoints.
	st, names, err := scaleenv.State(benchNet, rules, n)
	if err != nil {
		return e, err
	}
	e.names = names
	e.rules = len(st.Networks[benchNet.ID].Config.Rules)
	raw, err := json.Marshal(st)
	if err != nil {
		return e, err
	}
	stateDir := filepath.Join(e.tmp, "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return e, err
	}
	if err := os.WriteFile(filepath.Join(stateDir, "state.json"), raw, 0o600); err != nil {
		return e, err
	}

	// Kernel: the real programs and maps, pinned in a directory of our own
	// and attached to an empty cgroup of our own (no process runs in it:
	// the hooks decide nothing of this machine's traffic).
	if err := e.openKernel(id); err != nil {
		return e, err
	}
	if kernelSplice {
		if e.splicer, err = bpf.OpenSplicer(); err != nil {
			fmt.Fprintf(os.Stderr, "bench/effective: kernel splice unavailable (%v): flows copied with splice(2)\n", err)
			e.splicer = nil
		} else {
			e.cleanup = append(e.cleanup, func() { e.splicer.Close() })
		}
	}

	// The upstream internet: a TLS echo server and a plain HTTP server.
	if e.up, err = startUpstreams(); err != nil {
		return e, err
	}
	e.cleanup = append(e.cleanup, e.up.close)

	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	if e.engine, err = builtin.New(builtin.Config{
		Log:                   logrus.NewEntry(quiet),
		Record:                func(decisionlog.Record) {},
		Splicer:               e.splicer,
		SpliceAfter:           spliceAfter,
		Resolver:              staticResolver{},
		AllowPrivateUpstreams: []netip.Prefix{netip.PrefixFrom(upstreamIP, 32)},
		HostLocal:             func(a netip.Addr) (bool, error) { return a != upstreamIP, nil },
		BindAddr:              benchNet.Gateway.String(),
		ListenPort:            func(uint16) uint16 { return 0 },
		UpstreamPort:          e.up.port,
		MaxConns:              -1,
	}); err != nil {
		return e, err
	}
	e.cleanup = append(e.cleanup, func() { e.engine.Close() })

	// The plugin core, as plugin/wire assembles it.
	plog := logrus.New()
	plog.SetOutput(os.Stderr)
	plog.SetLevel(logrus.ErrorLevel)
	snapPath := filepath.Join(stateDir, "dns", "snapshot")
	e.p, err = fwplugin.New(fwplugin.Config{StateDir: stateDir, Log: logrus.NewEntry(plog), IdentifyTimeout: time.Millisecond},
		wire.Kernel{M: e.mgr}, fakeHostNet{}, e.engine, newFakeDocker(n), &wire.SnapshotFile{Path: snapPath})
	if err != nil {
		return e, err
	}
	e.cleanup = append(e.cleanup, e.p.Close)
	if err := e.p.Start(); err != nil {
		return e, fmt.Errorf("plugin start: %w", err)
	}

	// The DNS sidecar's half, in-process: the Watcher loads the files the
	// plugin's sink writes (woken as the sidecar is, polling at the
	// Corefile's default as a fallback) into the store the clawker plugin
	// answers from.
	store := clawkerdns.NewStore()
	e.watcher = clawkerdns.NewWatcher(snapPath, 0, store, scaleenv.Quiet{})
	e.watcher.Start()
	e.cleanup = append(e.cleanup, e.watcher.Stop)
	if _, ok := store.Generation(); !ok {
		return e, fmt.Errorf("the DNS watcher loaded no snapshot from %s", snapPath)
	}
	e.dns = clawkerdns.New(store, scaleenv.NopLearner{})
	e.dns.UseNext = true
	e.dns.Next = plugin.HandlerFunc(scaleenv.Answer)
	e.dns.Decisions = func(decisionlog.Record) {}

	// The admin API on a unix socket, as `clawker-fw rules add` reaches it.
	sock := filepath.Join(e.tmp, "admin.sock")
	if e.adminLn, err = net.Listen("unix", sock); err != nil {
		return e, err
	}
	srv := &http.Server{Handler: fwplugin.AdminHandler(e.p, fwplugin.AdminHooks{Engine: "builtin"}, logrus.NewEntry(plog)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(e.adminLn) }()
	e.cleanup = append(e.cleanup, func() { srv.Close() })
	e.admin = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return e, nil
}

// openKernel opens the real BPF manager on a pin dir and cgroup of its own.
func (e *env) openKernel(id string) error {
	pinRoot := "/sys/fs/bpf/clawker-bench-effective-" + id
	if bpf.CheckHostBPFFS("/sys/fs/bpf") == nil {
		if err := os.Mkdir(pinRoot, 0o700); err != nil {
			return err
		}
		e.cleanup = append(e.cleanup, func() { os.RemoveAll(pinRoot) })
	} else {
		// No bpffs on the host: a private instance of our own.
		pinRoot = filepath.Join(e.tmp, "bpffs")
		if err := os.Mkdir(pinRoot, 0o700); err != nil {
			return err
		}
		if err := unix.Mount("bpf", pinRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount a bpffs at %s: %w", pinRoot, err)
		}
		e.cleanup = append(e.cleanup, func() { _ = unix.Unmount(pinRoot, unix.MNT_DETACH) })
	}
	cgRoot, err := bpf.DetectCgroup2()
	if err != nil {
		return err
	}
	cg := filepath.Join(cgRoot, "clawker-bench-effective-"+id)
	if err := os.Mkdir(cg, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", cg, err)
	}
	e.cleanup = append(e.cleanup, func() { os.Remove(cg) })
	mgr, err := bpf.Open(bpf.Config{PinDir: filepath.Join(pinRoot, "pins"), CgroupPath: cg})
	if err != nil {
		return err
	}
	e.mgr = mgr
	e.cleanup = append(e.cleanup, func() { _ = mgr.Remove() })
	return nil
}

// webAddr is the bound address of the proxy's web listener for origPort.
func (e *env) webAddr(origPort uint16) (string, error) {
	for _, l := range e.p.Model().Listeners {
		if l.Kind == model.KindWeb && l.OrigPort == origPort {
			if a := e.engine.Addr(l.Port, l.L4); a != nil {
				return a.String(), nil
			}
		}
	}
	return "", fmt.Errorf("no open web listener for port %d", origPort)
}

// staticResolver resolves every upstream name to upstreamIP.
type staticResolver struct{}

func (staticResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return []netip.Addr{upstreamIP}, nil
}

// upstreams are the servers every allowed name reaches: TLS (port 443)
// echoes what it reads, HTTP (port 80) answers every request.
type upstreams struct {
	pool      *x509.CertPool
	tlsLn     net.Listener
	httpSrv   *http.Server
	httpPort  uint16
	tlsPort   uint16
	mu        sync.Mutex
	conns     map[net.Conn]bool
	closeOnce sync.Once
}

func (u *upstreams) port(p uint16) uint16 {
	if p == 80 {
		return u.httpPort
	}
	return u.tlsPort
}

// cutAll closes every connection the servers hold (the smoke test's
// proof that a broken stream is counted).
func (u *upstreams) cutAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.conns {
		c.Close()
	}
}

func (u *upstreams) close() {
	u.closeOnce.Do(func() {
		u.tlsLn.Close()
		u.httpSrv.Close()
		u.cutAll()
	})
}

func (u *upstreams) track(c net.Conn, on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if on {
		u.conns[c] = true
	} else {
		delete(u.conns, c)
	}
}

// selfSigned is one certificate for every name the bench asks: the stream
// names (*.svcN.example.com) and the changed rules (*.effective.test).
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	dnsNames := []string{"*.effective.test"}
	for j := range 97 {
		dnsNames = append(dnsNames, fmt.Sprintf("*.svc%d.example.com", j))
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clawker-fw bench/effective upstream"},
		DNSNames: dnsNames, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool, nil
}

func startUpstreams() (*upstreams, error) {
	cert, pool, err := selfSigned()
	if err != nil {
		return nil, err
	}
	u := &upstreams{pool: pool, conns: map[net.Conn]bool{}}
	if u.tlsLn, err = net.Listen("tcp4", netip.AddrPortFrom(upstreamIP, 0).String()); err != nil {
		return nil, err
	}
	u.tlsPort = uint16(u.tlsLn.Addr().(*net.TCPAddr).Port)
	tcfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	go func() {
		for {
			c, err := u.tlsLn.Accept()
			if err != nil {
				return
			}
			go func() {
				u.track(c, true)
				defer u.track(c, false)
				defer c.Close()
				tc := tls.Server(c, tcfg)
				_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				_ = tc.SetDeadline(time.Time{})
				_, _ = io.Copy(tc, tc)
			}()
		}
	}()
	hl, err := net.Listen("tcp4", netip.AddrPortFrom(upstreamIP, 0).String())
	if err != nil {
		u.tlsLn.Close()
		return nil, err
	}
	u.httpPort = uint16(hl.Addr().(*net.TCPAddr).Port)
	u.httpSrv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				u.track(c, true)
			case http.StateClosed, http.StateHijacked:
				u.track(c, false)
			}
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = u.httpSrv.Serve(hl) }()
	return u, nil
}

// fakeHostNet stands in for bridges, veths and nftables: the bench's
// network is on loopback. Restored endpoints have no netns to find, so
// the plugin's re-identification gives up (they stay identified from
// state.json) and enrolls nothing.
type fakeHostNet struct{}

var errNoNetns = errors.New("bench: no container network namespace")

func (fakeHostNet) AddNetwork(*fwplugin.Network) error                         { return nil }
func (fakeHostNet) RemoveNetwork(*fwplugin.Network) error                      { return nil }
func (fakeHostNet) AddEndpoint(*fwplugin.Network, *fwplugin.Endpoint) error    { return nil }
func (fakeHostNet) RemoveEndpoint(*fwplugin.Network, *fwplugin.Endpoint) error { return nil }
func (fakeHostNet) NetnsPid(*fwplugin.Endpoint) (int, bool, bool, error) {
	return 0, false, false, errNoNetns
}
func (fakeHostNet) NetnsCookie(string) (uint64, error)              { return 0, errNoNetns }
func (fakeHostNet) RemoveOrphans(map[string]bool) ([]string, error) { return nil, nil }
func (fakeHostNet) Missing(*fwplugin.Network, []*fwplugin.Endpoint) ([]string, error) {
	return nil, nil
}
func (fakeHostNet) SetListenerPorts(fwplugin.ListenerPorts, map[string]fwplugin.ListenerPorts) error {
	return nil
}

// fakeDocker lists n running containers with their label rules.
type fakeDocker struct{ byID map[string]fwplugin.Container }

func newFakeDocker(n int) *fakeDocker {
	d := &fakeDocker{byID: map[string]fwplugin.Container{}}
	for i := 1; i <= n; i++ {
		id := scaleenv.ContainerID(i)
		d.byID[id] = fwplugin.Container{ID: id, Name: fmt.Sprintf("agent%d", i), Labels: scalegen.Labels(i),
			ImageID: "sha256:bench", Networks: map[string]string{"effective": benchNet.ID}}
	}
	return d
}

func (d *fakeDocker) Container(_ context.Context, id string) (fwplugin.Container, bool, error) {
	c, ok := d.byID[id]
	return c, ok, nil
}

func (d *fakeDocker) Running(context.Context) (map[string]bool, error) {
	out := make(map[string]bool, len(d.byID))
	for id := range d.byID {
		out[id] = true
	}
	return out, nil
}

func (d *fakeDocker) ImageLabels(context.Context, string) (map[string]string, error) {
	return map[string]string{}, nil
}
