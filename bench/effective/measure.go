package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

// params are one child's measurement settings.
type params struct {
	Endpoints    int
	Rules        int
	Changes      int // rule changes timed: adds and removes alternating
	Streams      int // established streams, half TLS passthrough, half plain HTTP keep-alive
	KernelSplice bool
	SpliceAfter  int64         // with KernelSplice: bytes a flow moves through the proxy first
	Timeout      time.Duration // per change and consumer
	Probe        time.Duration // pause between two probes of one consumer
	CPUProfile   string        // a CPU profile of the changes (the whole process: plugin, probes, streams)
}

// consumer names.
const (
	cAck     = "admin call returned"
	cProxy   = "proxy"
	cDNS     = "DNS sidecar"
	cBPF     = "BPF routes"
	cOverall = "overall (all three)"
)

var consumers = []string{cAck, cProxy, cDNS, cBPF, cOverall}

// result is one child's measurement.
type result struct {
	Endpoints int    `json:"endpoints"`
	Rules     int    `json:"rules"`
	Splice    string `json:"splice"`
	StartMS   float64
	// Samples are the times from the admin call to the change being
	// effective, per consumer, in ms: adds and removes.
	Add    map[string][]float64 `json:"add"`
	Remove map[string][]float64 `json:"remove"`
	// Timeouts counts changes a consumer never showed within Timeout.
	Timeouts map[string]int `json:"timeouts"`
	// Streams opened before the changes, still moving bytes after them.
	Streams     int      `json:"streams"`
	Dropped     int      `json:"dropped"`
	DropReasons []string `json:"drop_reasons,omitempty"`
	Exchanges   int64    `json:"exchanges"`
	// MaxPauseMS is the longest one exchange of an established stream took
	// while the changes ran.
	MaxPauseMS float64 `json:"max_pause_ms"`
	// ControlDenied: a name no rule allows was refused by the proxy and
	// NXDOMAIN in DNS, and had no BPF route (the probes can fail).
	ControlDenied bool `json:"control_denied"`
}

// run measures one endpoint count.
func run(pr params) (result, error) {
	r := result{Endpoints: pr.Endpoints, Rules: pr.Rules, Add: map[string][]float64{}, Remove: map[string][]float64{}, Timeouts: map[string]int{}}
	t0 := time.Now()
	e, err := newEnv(pr.Endpoints, pr.Rules, pr.KernelSplice, pr.SpliceAfter)
	if err != nil {
		return r, err
	}
	defer e.close()
	r.StartMS = ms(time.Since(t0))
	r.Splice = "splice(2)"
	if e.splicer != nil {
		r.Splice = "kernel (sockmap)"
		if pr.SpliceAfter > 0 {
			r.Splice += fmt.Sprintf(" after %d bytes through the proxy", pr.SpliceAfter)
		}
	}
	r.Rules = e.rules
	if r.ControlDenied, err = e.controlDenied(); err != nil {
		return r, err
	}

	st, err := e.openStreams(pr.Streams)
	if err != nil {
		return r, err
	}
	defer st.stop()
	r.Streams = len(st.s)
	if err := st.waitMoving(5 * time.Second); err != nil {
		return r, err
	}
	st.resetPause()
	before := st.exchanges()
	if pr.CPUProfile != "" {
		f, err := os.Create(pr.CPUProfile)
		if err != nil {
			return r, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return r, err
		}
		defer pprof.StopCPUProfile()
	}

	for i := range pr.Changes {
		name := fmt.Sprintf("rt%d.effective.test", i/2)
		add := i%2 == 0
		got, err := e.change(pr, i, name, add)
		if err != nil {
			return r, err
		}
		into := r.Remove
		if add {
			into = r.Add
		}
		for c, d := range got {
			if d < 0 {
				r.Timeouts[c]++
				continue
			}
			into[c] = append(into[c], d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.Exchanges = st.exchanges() - before
	r.MaxPauseMS = st.maxPause()
	r.Dropped, r.DropReasons = st.dropped()
	return r, nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// probeSource is the endpoint change i probes from: spread over all.
func (e *env) probeSource(i int) netip.Addr {
	return benchNet.EndpointIP(1 + (i*37)%e.n)
}

// controlDenied checks a name no rule allows in every consumer.
func (e *env) controlDenied() (bool, error) {
	const name = "never.effective.test"
	src := e.probeSource(0)
	addr, err := e.webAddr(443)
	if err != nil {
		return false, err
	}
	_, proxyDenied := e.proxyDecides(src, addr, name)
	dnsRefused := e.dnsRcode(src, name) == mdns.RcodeNameError
	_, routed, err := e.mgr.BaseRoute(benchNet.Gateway, 0xfffffff0, 443, uint8(policy.L4TCP))
	if err != nil {
		return false, err
	}
	return proxyDenied && dnsRefused && !routed, nil
}

// nextIdentity is the identity the next new pattern gets: the plugin's
// table hands them out sequentially and persists the next one. It is read
// from state.json once; each add then checks that the name got the
// identity predicted (change) and counts on from it, so that no change
// decodes the whole state (GC work that would land in the timed windows).
func (e *env) nextIdentity() (uint32, error) {
	if e.nextID != 0 {
		return e.nextID, nil
	}
	raw, err := os.ReadFile(filepath.Join(e.tmp, "state", "state.json"))
	if err != nil {
		return 0, err
	}
	var st struct {
		Identities struct {
			Next uint32 `json:"next"`
		} `json:"identities"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return 0, err
	}
	return max(st.Identities.Next, 1), nil
}

// change makes change i (add or remove name) through the admin API and
// returns, per consumer, the ms from the call to the change being
// effective there (-1: not within the timeout).
func (e *env) change(pr params, i int, name string, add bool) (map[string]float64, error) {
	ident, err := e.nextIdentity()
	if err != nil {
		return nil, err
	}
	if !add {
		m := e.p.Snapshot().Networks[benchNet.ID].Base.MatchName(name, 443, policy.L4TCP)
		if !m.Allowed || m.Entry == nil {
			return nil, fmt.Errorf("change %d: %s is not allowed before its removal", i, name)
		}
		ident = uint32(m.Entry.Identity)
	}
	src := e.probeSource(i)
	web, err := e.webAddr(443)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pr.Timeout)
	defer cancel()
	out := map[string]float64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	probe := func(c string, effective func() bool) {
		defer wg.Done()
		for {
			if effective() {
				d := ms(time.Since(start))
				mu.Lock()
				out[c] = d
				mu.Unlock()
				return
			}
			select {
			case <-ctx.Done():
				mu.Lock()
				out[c] = -1
				mu.Unlock()
				return
			case <-time.After(pr.Probe):
			}
		}
	}
	wg.Add(3)
	go probe(cProxy, func() bool {
		allowed, denied := e.proxyDecides(src, web, name)
		return (add && allowed) || (!add && denied)
	})
	go probe(cDNS, func() bool {
		rc := e.dnsRcode(src, name)
		return (add && rc == mdns.RcodeSuccess) || (!add && rc == mdns.RcodeNameError)
	})
	go probe(cBPF, func() bool {
		_, ok, err := e.mgr.BaseRoute(benchNet.Gateway, ident, 443, uint8(policy.L4TCP))
		return err == nil && ok == add
	})
	method := http.MethodPost
	if !add {
		method = http.MethodDelete
	}
	callErr := e.changeRules(method, name)
	ack := ms(time.Since(start))
	wg.Wait()
	out[cAck] = ack
	if callErr != nil {
		return nil, fmt.Errorf("change %d (%s %s): %w", i, method, name, callErr)
	}
	overall := 0.0
	for _, c := range []string{cProxy, cDNS, cBPF} {
		if out[c] < 0 {
			overall = -1
			break
		}
		overall = max(overall, out[c])
	}
	out[cOverall] = overall
	if add {
		// The route the BPF probe waited for is the name's.
		m := e.p.Snapshot().Networks[benchNet.ID].Base.MatchName(name, 443, policy.L4TCP)
		if !m.Allowed || m.Entry == nil || uint32(m.Entry.Identity) != ident {
			return nil, fmt.Errorf("change %d: %s has identity %v, the BPF probe waited for %d", i, name, m.Entry, ident)
		}
		e.nextID = ident + 1
	}
	return out, nil
}

// changeRules is `clawker-fw rules add|rm NET NAME` against the admin socket.
func (e *env) changeRules(method, item string) error {
	body, err := json.Marshal(api.RulesRequest{Rules: []string{item}})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, "http://clawker-fw/v1/networks/"+url.PathEscape(benchNet.ID)+"/rules", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := e.admin.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	return nil
}

func dialFrom(src netip.Addr, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: timeout}
	return d.Dial("tcp4", addr)
}

// proxyDecides opens a new connection from src through the proxy's 443
// listener to name and says what the proxy decided: allowed when the TLS
// handshake with the upstream completes, denied when the proxy refused it
// with its access_denied alert. Anything else (a timeout under load, a
// reset) is neither: the probe asks again.
func (e *env) proxyDecides(src netip.Addr, addr, name string) (allowed, denied bool) {
	c, err := dialFrom(src, addr, 2*time.Second)
	if err != nil {
		return false, false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: e.up.pool})
	err = tc.Handshake()
	return err == nil, err != nil && strings.Contains(err.Error(), "access denied")
}

// dnsRcode asks the clawker CoreDNS plugin for name's A record as src:
// NOERROR when it answers the name, NXDOMAIN when the policy refuses it.
func (e *env) dnsRcode(src netip.Addr, name string) int {
	req := new(mdns.Msg)
	req.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	rw := &test.ResponseWriter{RemoteIP: src.String()}
	rc, err := e.dns.ServeDNS(context.Background(), rw, req)
	if err != nil {
		return -1
	}
	return rc
}

// streams are the established flows that keep moving bytes through the
// proxy during the changes.
type streams struct {
	s    []*stream
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

type stream struct {
	kind  string
	src   netip.Addr
	name  string
	n     atomic.Int64
	pause atomic.Int64 // ns, longest exchange since resetPause
	mu    sync.Mutex
	err   error
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

func (s *stream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// exchangeEvery paces each stream: a 1 KiB echo (TLS) or a GET (HTTP) per
// period, so n streams do not starve the plugin of the 2 cores.
const exchangeEvery = 20 * time.Millisecond

// openStreams opens n streams from endpoints spread over all: TLS
// passthrough echo to a network name, and plain HTTP keep-alive requests.
func (e *env) openStreams(n int) (*streams, error) {
	tlsAddr, err := e.webAddr(443)
	if err != nil {
		return nil, err
	}
	httpAddr, err := e.webAddr(80)
	if err != nil {
		return nil, err
	}
	st := &streams{done: make(chan struct{})}
	for k := range n {
		s := &stream{src: benchNet.EndpointIP(1 + (k*13)%e.n)}
		var c net.Conn
		if k%2 == 0 {
			s.kind, s.name = "tls", scalegen.TLSName(k%50)
			raw, err := dialFrom(s.src, tlsAddr, 5*time.Second)
			if err != nil {
				st.stop()
				return nil, fmt.Errorf("stream %d: %w", k, err)
			}
			tc := tls.Client(raw, &tls.Config{ServerName: s.name, RootCAs: e.up.pool})
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tc.Handshake(); err != nil {
				raw.Close()
				st.stop()
				return nil, fmt.Errorf("stream %d (%s from %s): %w", k, s.name, s.src, err)
			}
			c = tc
		} else {
			s.kind, s.name = "http", scalegen.PlainName(0)
			if c, err = dialFrom(s.src, httpAddr, 5*time.Second); err != nil {
				st.stop()
				return nil, fmt.Errorf("stream %d: %w", k, err)
			}
		}
		st.s = append(st.s, s)
		st.wg.Add(1)
		go st.loop(s, c)
	}
	return st, nil
}

func (st *streams) loop(s *stream, c net.Conn) {
	defer st.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	msg := bytes.Repeat([]byte("clawker-fw"), 100)
	buf := make([]byte, len(msg))
	t := time.NewTicker(exchangeEvery)
	defer t.Stop()
	for {
		select {
		case <-st.done:
			return
		case <-t.C:
		}
		begin := time.Now()
		_ = c.SetDeadline(begin.Add(10 * time.Second))
		var err error
		if s.kind == "tls" {
			if _, err = c.Write(msg); err == nil {
				if _, err = io.ReadFull(br, buf); err == nil && !bytes.Equal(buf, msg) {
					err = fmt.Errorf("echo differs")
				}
			}
		} else {
			if _, err = fmt.Fprintf(c, "GET /stream HTTP/1.1\r\nHost: %s\r\n\r\n", s.name); err == nil {
				var resp *http.Response
				if resp, err = http.ReadResponse(br, nil); err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("HTTP %d", resp.StatusCode)
					}
				}
			}
		}
		if err != nil {
			select {
			case <-st.done:
				return // closed by stop
			default:
			}
			s.fail(fmt.Errorf("%s stream to %s from %s after %d exchanges: %w", s.kind, s.name, s.src, s.n.Load(), err))
			return
		}
		s.n.Add(1)
		if d := int64(time.Since(begin)); d > s.pause.Load() {
			s.pause.Store(d)
		}
	}
}

// waitMoving waits until every stream has exchanged bytes.
func (st *streams) waitMoving(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		idle := 0
		for _, s := range st.s {
			if err := s.failed(); err != nil {
				return fmt.Errorf("before the changes: %w", err)
			}
			if s.n.Load() == 0 {
				idle++
			}
		}
		if idle == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d streams moved no bytes within %s", idle, len(st.s), limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (st *streams) resetPause() {
	for _, s := range st.s {
		s.pause.Store(0)
	}
}

func (st *streams) exchanges() int64 {
	var n int64
	for _, s := range st.s {
		n += s.n.Load()
	}
	return n
}

func (st *streams) maxPause() float64 {
	var m int64
	for _, s := range st.s {
		m = max(m, s.pause.Load())
	}
	return ms(time.Duration(m))
}

// dropped counts the streams that broke.
func (st *streams) dropped() (int, []string) {
	var why []string
	for _, s := range st.s {
		if err := s.failed(); err != nil {
			why = append(why, err.Error())
		}
	}
	return len(why), why
}

func (st *streams) stop() {
	st.once.Do(func() { close(st.done) })
	st.wg.Wait()
}
