// Package learn is the policy half of learn mode (clawker-fw learn): it
// records what a learning container's flows were, proposes the smallest
// rule set that allows them (Synthesize) and replays recorded flows against
// a rule set (Check). It does no I/O and never logs; the plugin feeds it
// the proxy's decisions and the DNS sidecar's answers.
package learn

import (
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Protocols of recorded flows (api.LearnFlow.Proto).
const (
	ProtoHTTPS = string(policy.ProtoHTTPS)
	ProtoHTTP  = string(policy.ProtoHTTP)
	ProtoSSH   = string(policy.ProtoSSH)
	ProtoTCP   = string(policy.ProtoTCP)
)

// Warnings go with every learn report, in the CLI's output and its file.
var Warnings = []string{
	"learn mode lets the agent write its own policy: every flow it made while learning is in these rules, " +
		"including any it should not have made; review each rule before applying it",
	"not seen while learning: UDP other than DNS (not carried under bypass or learn: add udp:// rules by hand); " +
		"paths inside TLS unless the network inspects (clawker.tls.inspect=all); what travels inside an allowed " +
		"tcp/ssh stream or WebSocket; and every flow the agent did not make during the session",
}

// Observation is one flow (or one HTTP request of it) as a data plane saw it.
type Observation struct {
	Time  time.Time
	Proto string // ProtoHTTPS, ProtoHTTP, ProtoSSH or ProtoTCP
	// Name is the SNI or Host; "" for ssh/tcp (the recorder names them from
	// the container's DNS answers).
	Name string
	Addr netip.Addr
	Port uint16
	// Inspected: the connection's requests are visible (plain HTTP or
	// terminated TLS).
	Inspected bool
	// Method and Path are set for one HTTP request.
	Method, Path string
}

type flowKey struct {
	proto, name, addr, method, prefix string
	port                              uint16
	inspected                         bool
}

// Recorder keeps one learning session's distinct flows. It is safe for
// concurrent use.
type Recorder struct {
	mu       sync.Mutex
	max      int
	flows    map[flowKey]*api.LearnFlow
	byAddr   map[netip.Addr]string // the last name resolved to an address
	resolved map[string]bool
	used     map[string]bool
	dropped  int
}

// NewRecorder records up to max distinct flows (more are counted as
// dropped).
func NewRecorder(max int) *Recorder {
	return &Recorder{max: max, flows: map[flowKey]*api.LearnFlow{}, byAddr: map[netip.Addr]string{},
		resolved: map[string]bool{}, used: map[string]bool{}}
}

// Resolved records a DNS answer the container got: name resolved to addrs.
// Later ssh/tcp flows to one of the addresses are named after it.
func (r *Recorder) Resolved(name string, addrs []netip.Addr) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.resolved) < r.max {
		r.resolved[name] = true
	}
	named := map[string]bool{}
	for _, a := range addrs {
		named[a.Unmap().String()] = true
		if len(r.byAddr) >= 4*r.max {
			break
		}
		r.byAddr[a.Unmap()] = name
	}
	r.nameEarlier(name, named)
}

// nameEarlier gives name to the flows recorded by address alone before the
// answer arrived: DNS records reach the plugin on their own socket, so a
// connect may be observed before the answer that preceded it. The name does
// not depend on which arrives first.
func (r *Recorder) nameEarlier(name string, addrs map[string]bool) {
	for k, f := range r.flows {
		if k.name != "" || !addrs[k.addr] {
			continue
		}
		delete(r.flows, k)
		r.used[name] = true
		k.name, f.Name = name, name
		if k.proto == ProtoHTTPS || k.proto == ProtoHTTP {
			k.addr, f.Addr = "", ""
		}
		if g, ok := r.flows[k]; ok {
			g.Count += f.Count
			if f.First.Before(g.First) {
				g.First = f.First
			}
			if f.Last.After(g.Last) {
				g.Last = f.Last
			}
			continue
		}
		r.flows[k] = f
	}
}

// Observe records one flow or request.
func (r *Recorder) Observe(o Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := strings.ToLower(strings.TrimSuffix(o.Name, "."))
	addr := ""
	if o.Addr.IsValid() {
		addr = o.Addr.Unmap().String()
	}
	if name == "" && o.Addr.IsValid() {
		name = r.byAddr[o.Addr.Unmap()]
	}
	if name != "" {
		r.used[name] = true
	}
	if name != "" && (o.Proto == ProtoHTTPS || o.Proto == ProtoHTTP) {
		addr = "" // a web flow is its name: CDN addresses come and go
	}
	k := flowKey{proto: o.Proto, name: name, addr: addr, port: o.Port, inspected: o.Inspected}
	if o.Method != "" || o.Path != "" {
		k.method, k.prefix = strings.ToUpper(o.Method), PathPrefix(o.Path)
	}
	f, ok := r.flows[k]
	if !ok {
		if len(r.flows) >= r.max {
			r.dropped++
			return
		}
		f = &api.LearnFlow{Proto: k.proto, Name: k.name, Addr: k.addr, Port: k.port, Inspected: k.inspected,
			Method: k.method, PathPrefix: k.prefix, First: o.Time}
		if k.prefix != "" {
			f.Path = o.Path
		}
		r.flows[k] = f
	}
	f.Count++
	f.Last = o.Time
}

// Flows returns the recorded flows (sorted), the names resolved but never
// connected to, and how many flows were dropped.
func (r *Recorder) Flows() ([]api.LearnFlow, []string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.LearnFlow, 0, len(r.flows))
	for _, f := range r.flows {
		out = append(out, *f)
	}
	SortFlows(out)
	var only []string
	for n := range r.resolved {
		if !r.used[n] {
			only = append(only, n)
		}
	}
	sort.Strings(only)
	return out, only, r.dropped
}

// SortFlows orders flows by name (or address), port, protocol, method and
// path prefix.
func SortFlows(fs []api.LearnFlow) {
	sort.Slice(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Name+a.Addr != b.Name+b.Addr {
			return a.Name+a.Addr < b.Name+b.Addr
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.PathPrefix != b.PathPrefix {
			return a.PathPrefix < b.PathPrefix
		}
		return a.Method < b.Method
	})
}

// maxPrefixSegments is how many directory segments a learned path prefix
// keeps: /v1/users/42 is /v1/users/, /a/b/c/d is /a/b/.
const maxPrefixSegments = 2

// PathPrefix is the prefix a path rule would allow for a request path: its
// directory (the last segment dropped), at most maxPrefixSegments segments
// deep, shortened until it is a valid rule path (no bad escapes or ';').
// A path that holds a dot segment in any reading (raw, escaped once or
// twice, with backslashes) gets "/": its directory is not where it goes.
func PathPrefix(raw string) string {
	p, _, _ := strings.Cut(raw, "?")
	if !strings.HasPrefix(p, "/") || hasDotSegment(p) {
		return "/"
	}
	segs := strings.Split(p[1:], "/")
	segs = segs[:len(segs)-1] // the leaf ("" when the path ends with /)
	if len(segs) > maxPrefixSegments {
		segs = segs[:maxPrefixSegments]
	}
	for n := len(segs); n > 0; n-- {
		cand := "/" + strings.Join(segs[:n], "/") + "/"
		if c, err := policy.CanonicalRulePath(cand); err == nil && c == cand {
			return cand
		}
	}
	return "/"
}

// hasDotSegment reports whether p, decoded up to twice, with '\\' read as
// '/', holds a "." or ".." segment.
func hasDotSegment(p string) bool {
	for range 3 {
		for _, seg := range strings.Split(strings.ReplaceAll(p, "\\", "/"), "/") {
			if seg == "." || seg == ".." {
				return true
			}
		}
		d, err := url.PathUnescape(p)
		if err != nil || d == p {
			return false
		}
		p = d
	}
	return false
}
