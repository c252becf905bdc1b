// Package builtin is clawker-fw's default L7 data plane: a Go proxy that runs
// in the plugin process and is fed from the listener/route model
// (proxy/model) and the compiled policy snapshot (policy.Snapshot).
//
// Every flow is decided in this order:
//  1. who is asking comes from the flow's source address (policy.Await:
//     sound because the closed network anti-spoofs): a pending endpoint
//     waits, bounded, for a snapshot that knows its policy; a bypassed one
//     is allowed everything; one with a label error is denied everything,
//     and the denial names the label;
//  2. the destination comes from the listener: web listeners know the
//     original port and learn the name from the TLS SNI (peeked with
//     MSG_PEEK, never consumed) or the HTTP Host; dedicated listeners carry
//     their destination and port; the transparent listener reads
//     SO_ORIGINAL_DST and decides by IP/CIDR rule, else by name as a web
//     listener would;
//  3. verdict.Decide decides on those facts (the name is matched once);
//     TLS without inspection is
//     spliced in the kernel between two bare *net.TCPConn, TLS with
//     inspection (Allowed.Inspect, path rules, or InspectAll) is terminated
//     with a leaf from CertSource and re-originated, and plain HTTP is
//     proxied per request;
//  4. the upstream is always the NAME, resolved by the proxy (invariant 7),
//     and a name whose addresses are all private or link-local is refused
//     unless an IP/CIDR rule (or Config.AllowPrivateUpstreams) allows them;
//     an address of the host itself (Config.HostLocal, asked at dial time)
//     only through an IP/CIDR rule naming it, and host.docker.internal is
//     the endpoint's gateway through an exact rule.
//
// Denials reset TLS connections and answer 403 where HTTP is visible; every
// connection gets one canonical log line, Prometheus counters and a
// Config.OnDecision callback.
package builtin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/internal/ratelimit"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// CertSource issues the leaf certificates used to terminate inspected TLS.
// The plugin's *ca.CA satisfies it.
type CertSource interface {
	Leaf(serverName string) (*tls.Certificate, error)
}

// CACertSource is optionally implemented by a CertSource: the CA listener
// serves CACertPEM at /ca.crt.
type CACertSource interface {
	CACertPEM() []byte
}

// Resolver resolves upstream names. *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config configures an Engine. Zero values take the documented defaults.
type Config struct {
	// Log receives one canonical line per connection. Default: discard.
	Log *logrus.Entry
	// Registry, when set, gets the engine's Prometheus collectors.
	Registry prometheus.Registerer
	// Certs issues leaves for inspected TLS; without it, connections that
	// need inspection are denied.
	Certs CertSource
	// Resolver resolves upstream names for networks without their own
	// upstreams: the plugin-wide resolvers. Default: net.DefaultResolver.
	Resolver Resolver
	// NetworkResolver returns the resolver for a network that names its own
	// upstreams (clawker.dns.upstream, normalized "ip:port" in order), the
	// ones the DNS plugin answers that network's containers from. Default:
	// UpstreamResolver.
	NetworkResolver func(upstreams []string) Resolver
	// UpstreamCAs are extra CAs trusted for re-originated TLS, on top of
	// the system roots.
	UpstreamCAs []*x509.Certificate
	// AllowPrivateUpstreams exempts these prefixes from the refusal of
	// private and link-local upstream addresses for name rules.
	AllowPrivateUpstreams []netip.Prefix
	// HostLocal reports whether the host delivers an address to itself (an
	// address of any of its interfaces, loopback, a local route). Names
	// and bypasses never reach such addresses; an IP/CIDR rule naming them,
	// or an exact host.docker.internal rule, does. Asked at every dial.
	// Default: a route lookup in the network namespace New runs in
	// (sharedHostLocal), its answers kept only until the kernel announces
	// a link, address, route or rule change (hostLocalCache: as current as
	// a lookup at each dial, without its netlink round trip). Tests whose
	// upstreams listen on loopback swap it.
	HostLocal func(netip.Addr) (bool, error)
	// BindAddr is the address listeners bind. Default: all addresses.
	BindAddr string
	// ListenPort maps a model port to the port actually bound (tests map
	// to 0 and read Addr). Default: identity.
	ListenPort func(port uint16) uint16
	// Listen and ListenPacket open listeners. Default: net.Listen and
	// net.ListenPacket. Tests use them to open listeners inside a netns.
	Listen       func(network, addr string) (net.Listener, error)
	ListenPacket func(network, addr string) (net.PacketConn, error)
	// UpstreamPort maps the port an upstream is dialled on (tests whose
	// servers run on random ports). Default: identity.
	UpstreamPort func(port uint16) uint16
	// PendingWait bounds how long a flow of a pending endpoint waits for its
	// policy. Default: 3 s.
	PendingWait time.Duration
	// SniffTimeout bounds how long the proxy waits for a ClientHello or an
	// HTTP request head. Default: 10 s.
	SniffTimeout time.Duration
	// DialTimeout bounds name resolution and upstream dials. Default: 10 s.
	DialTimeout time.Duration
	// ResolveCacheTTL is how long the proxy reuses an upstream name's
	// addresses, and never longer than the answer's TTL where the resolver
	// reports it (UpstreamResolver does; net.Resolver exposes no TTLs).
	// Default: 5 s; negative disables the cache.
	ResolveCacheTTL time.Duration
	// UDPIdle closes a UDP session after this long without traffic.
	// Default: 60 s.
	UDPIdle time.Duration
	// DrainTimeout is how long Close waits for live connections before it
	// closes them. Default: 5 s.
	DrainTimeout time.Duration
	// OnDecision, when set, is called (synchronously; keep it cheap) for
	// every connection decision and every denied HTTP request.
	OnDecision func(Decision)
	// MaxConns caps the concurrent TCP connections of one endpoint (source
	// address) on the proxy's listeners; MaxUDPSessions its concurrent UDP
	// sessions. Over the cap new ones are refused (reset, or the datagram
	// dropped), counted and logged. Defaults: DefaultMaxConns,
	// DefaultMaxUDPSessions; negative means no cap.
	MaxConns       int
	MaxUDPSessions int
	// Record, when set, takes one decision record per connection (at its
	// end, with bytes and duration) and per denied HTTP request; the
	// engine then writes no decision lines (the plugin's decisionlog.Hub
	// counts, keeps, samples and logs them). When nil, each record is
	// logged on Log as a decision line, rate-limited by LogLimit.
	Record func(decisionlog.Record)
	// Splicer, when set, carries allowed passthrough TLS and tcp/ssh/IP
	// flows in the kernel once decided (bpf/splice.c); flows it cannot take
	// are copied in userspace as without it. Plain HTTP and inspected TLS
	// never take it: they are decided request by request.
	Splicer *bpf.Splicer
	// SpliceDownloadOnly, with Splicer, keeps the client-to-upstream
	// direction on the proxy's splice(2) relay while upstream-to-client
	// bytes take the kernel path (the direction split: on the headline
	// topology the kernel path paid for downloads, not uploads;
	// bpf/README.md).
	SpliceDownloadOnly bool
	// SpliceAfter, with Splicer, is how many bytes (in either direction) a
	// flow first moves through the proxy (read/write, so that it stops
	// between two skbs: spliceFirst) before it is handed to the kernel; 0
	// hands it over at once. Short flows then never
	// pay for the kernel path's setup.
	SpliceAfter int64
	// LogLimit, when set, rate-limits the decision lines per endpoint
	// (dropped lines are counted by the limiter) when Record is nil.
	LogLimit *ratelimit.Limiter
}

// Decision is one allow/deny decision of the proxy.
type Decision struct {
	Time      time.Time
	Endpoint  uint32
	Container string
	Source    netip.Addr
	Listener  model.Kind
	// Name is the SNI, Host or dedicated destination ("" when unknown).
	Name string
	// Dst is the original destination address (transparent listener).
	Dst  netip.Addr
	Port uint16
	L4   policy.L4
	// Mode is how an allowed connection is carried (verdict.Mode:
	// passthrough, inspect, http, tcp, udp, ip).
	Mode string
	// Stream is what learn mode read of a stream carried by address: "ssh"
	// (an SSH banner) or "tcp" (anything else, or nothing); "" otherwise.
	Stream string
	// Path and Method are set for HTTP request decisions.
	Path    string
	Method  string
	Allowed bool
	Reason  policy.Reason
	// Rule is the provenance of the matching rule ("label clawker.allow=...").
	Rule string
	// Detail says more (the label error, a dial error).
	Detail string
	// Fix says what would allow a denial (verdict.Fix), "" when allowed.
	Fix string
}

// Health is the engine's state for the health endpoint.
type Health struct {
	Generation uint64
	Listeners  int
	Conns      int
	// Errors lists listeners that failed to open in the last Apply.
	Errors []string
	Closed bool
}

// Engine is the builtin proxy. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	log     *logrus.Entry
	metrics *metrics
	roots   *x509.CertPool

	cur     atomic.Pointer[current]
	changed atomic.Pointer[chan struct{}]

	mu        sync.Mutex
	listeners map[lkey]*listener
	conns     map[*liveConn]struct{}
	accepted  map[net.Conn]struct{} // every accepted connection, for Close
	lerrs     []string
	closed    bool
	connWG    sync.WaitGroup

	closeHostLocal func() // the default HostLocal's netlink socket

	caps *caps

	transports  sync.Map // uint32 endpoint index -> *http.Transport
	tlsConfigs  sync.Map // *tls.Certificate (a leaf) -> *tls.Config (inspectConfig)
	tlsConfigsN atomic.Int64
	dnsCache    sync.Map // resolver key + name -> *dnsEntry
	dnsCacheN   atomic.Int64
	resolvers   sync.Map // resolver key -> Resolver (networks' own upstreams)
	resolversN  atomic.Int64
}

type current struct {
	snap  *policy.Snapshot
	model *model.Model
}

// New returns an engine with no listeners; Apply opens them.
func New(cfg Config) (*Engine, error) {
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		cfg.Log = logrus.NewEntry(l)
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.NetworkResolver == nil {
		cfg.NetworkResolver = func(ups []string) Resolver { return UpstreamResolver(ups) }
	}
	if cfg.ListenPort == nil {
		cfg.ListenPort = func(p uint16) uint16 { return p }
	}
	closeHostLocal := func() {}
	if cfg.HostLocal == nil {
		cfg.HostLocal, closeHostLocal = sharedHostLocal()
	}
	if cfg.UpstreamPort == nil {
		cfg.UpstreamPort = func(p uint16) uint16 { return p }
	}
	if cfg.Listen == nil {
		cfg.Listen = net.Listen
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = net.ListenPacket
	}
	if cfg.PendingWait == 0 {
		cfg.PendingWait = 3 * time.Second
	}
	if cfg.SniffTimeout == 0 {
		cfg.SniffTimeout = 10 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ResolveCacheTTL == 0 {
		cfg.ResolveCacheTTL = 5 * time.Second
	}
	if cfg.UDPIdle == 0 {
		cfg.UDPIdle = 60 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxUDPSessions == 0 {
		cfg.MaxUDPSessions = DefaultMaxUDPSessions
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, c := range cfg.UpstreamCAs {
		roots.AddCert(c)
	}
	e := &Engine{
		cfg:       cfg,
		log:       cfg.Log,
		roots:     roots,
		listeners: map[lkey]*listener{},
		conns:     map[*liveConn]struct{}{},
		accepted:  map[net.Conn]struct{}{},
		caps:      newCaps(),

		closeHostLocal: closeHostLocal,
	}
	ch := make(chan struct{})
	e.changed.Store(&ch)
	e.metrics = newMetrics()
	if cfg.Registry != nil {
		if err := e.metrics.register(cfg.Registry); err != nil {
			closeHostLocal()
			return nil, fmt.Errorf("register proxy metrics: %w", err)
		}
	}
	return e, nil
}

// Apply makes snap and m the engine's state, atomically:
//   - new connections and new HTTP requests see the new policy at once;
//   - listeners that are new in m are opened, listeners that m no longer
//     has are closed, and listeners that stay are never touched, so their
//     connections carry on;
//   - every live connection (and UDP session) is re-checked against the new
//     policy with the endpoint, name/address and port it was allowed for,
//     and the ones the change now denies are closed; connections that are
//     still allowed are never interrupted.
//
// snap must have been indexed (policy.Snapshot.Index) before it is shared.
// A listener that fails to open is reported in the error and in Health;
// the rest of the state is applied anyway.
func (e *Engine) Apply(snap *policy.Snapshot, m *model.Model) error {
	if snap == nil || m == nil {
		return errors.New("apply proxy state: nil snapshot or model")
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errors.New("apply proxy state: engine closed")
	}
	e.cur.Store(&current{snap: snap, model: m})
	// Wake flows of pending endpoints.
	ch := make(chan struct{})
	old := e.changed.Swap(&ch)
	close(*old)

	err := e.reconcileListeners(m)
	doomed := e.recheckConns(snap)
	e.dropTransports(snap)
	e.mu.Unlock()

	// Closing a socket that another goroutine is splicing waits for that
	// goroutine to let go of it: close them all in parallel, outside the
	// lock, and return once they are closed.
	var wg sync.WaitGroup
	for _, d := range doomed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.c.kill(d.reason)
		}()
	}
	wg.Wait()
	return err
}

// Addr returns the address the listener for model port (and l4) is bound
// to, or nil when there is none.
func (e *Engine) Addr(port uint16, l4 policy.L4) net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	if l, ok := e.listeners[lkey{port, l4}]; ok {
		return l.addr
	}
	return nil
}

// Health returns the engine's current state.
func (e *Engine) Health() Health {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := Health{Listeners: len(e.listeners), Conns: len(e.conns), Errors: append([]string(nil), e.lerrs...), Closed: e.closed}
	if c := e.cur.Load(); c != nil {
		h.Generation = c.snap.Generation
	}
	return h
}

// Close closes every listener, waits up to Config.DrainTimeout for live
// connections to finish, then closes the rest.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	var errs []error
	for k, l := range e.listeners {
		if err := l.close(); err != nil {
			errs = append(errs, err)
		}
		delete(e.listeners, k)
	}
	e.mu.Unlock()

	done := make(chan struct{})
	go func() { e.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(e.cfg.DrainTimeout):
		e.mu.Lock()
		var live []*liveConn
		for c := range e.conns {
			live = append(live, c)
		}
		var acc []net.Conn
		for c := range e.accepted {
			acc = append(acc, c)
		}
		e.mu.Unlock()
		for _, c := range live {
			go c.kill("engine closed")
		}
		for _, c := range acc {
			go c.Close()
		}
		<-done
	}
	e.transports.Range(func(k, v any) bool {
		v.(*http.Transport).CloseIdleConnections()
		return true
	})
	e.closeHostLocal()
	return errors.Join(errs...)
}

func (e *Engine) state() *current { return e.cur.Load() }

// await answers who is asking from src, waiting up to PendingWait while
// the endpoint is pending (policy.Await over the engine's snapshots).
func (e *Engine) await(ctx context.Context, src netip.Addr) policy.Who {
	who, _ := policy.Await(ctx, e.cfg.PendingWait, time.Now, src, e.view)
	return who
}

// view is the current snapshot (nil before the first Apply) and the channel
// Apply closes when it replaces it.
func (e *Engine) view() (*policy.Snapshot, <-chan struct{}) {
	ch := e.changed.Load()
	if c := e.state(); c != nil {
		return c.snap, *ch
	}
	return nil, *ch
}

// transport returns the HTTP transport used for one endpoint's inspected
// and plain-HTTP requests. Transports are per endpoint so that a pooled
// upstream connection is never shared across policies.
func (e *Engine) transport(idx uint32) *http.Transport {
	if v, ok := e.transports.Load(idx); ok {
		return v.(*http.Transport)
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, err := strconv.ParseUint(p, 10, 16)
			if err != nil {
				return nil, err
			}
			var d dialFor
			if q := requestOf(ctx); q != nil {
				d = q.dial
			}
			return e.dialName(ctx, d, idx, network, host, uint16(port))
		},
		TLSClientConfig:       &tls.Config{RootCAs: e.roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   e.cfg.DialTimeout,
		ResponseHeaderTimeout: 0,
	}
	v, _ := e.transports.LoadOrStore(idx, t)
	return v.(*http.Transport)
}

// dropTransports forgets the transports of endpoints the snapshot no longer
// has. Called with e.mu held.
func (e *Engine) dropTransports(snap *policy.Snapshot) {
	e.transports.Range(func(k, v any) bool {
		if _, ok := snap.Endpoints[k.(uint32)]; !ok {
			v.(*http.Transport).CloseIdleConnections()
			e.transports.Delete(k)
		}
		return true
	})
}

// dialFor is what a dial of a name needs of the verdict that allowed it:
// the policy (the addresses it may reach) and the allow it matched.
type dialFor struct {
	pol   *policy.Policy
	entry *policy.Allowed
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
