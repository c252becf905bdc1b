// Package dns is clawker-fw's CoreDNS plugin `clawker` (see README.md): it
// answers only the names the asking endpoint may reach, records every
// answered IPv4 address in the BPF map `learned` before the answer leaves,
// and answers container names of the endpoint's own network itself.
package dns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"
	"github.com/coredns/coredns/request"
	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

const pluginName = "clawker"

// Defaults of the settable durations.
const (
	DefaultTTLFloor       = 5 * time.Minute
	DefaultTTLCeiling     = time.Hour
	DefaultPendingTimeout = 3 * time.Second
)

// hostDockerInternal resolves to the asking endpoint's gateway when its
// policy allows the name.
const hostDockerInternal = "host.docker.internal"

// containerTTL is the TTL of local container-name answers (Docker's
// embedded resolver uses 600 s too).
const containerTTL = 600

// Clawker is the plugin handler.
type Clawker struct {
	Next plugin.Handler

	Store   *Store
	Learner Learner
	// Upstreams are used for networks without their own DNSUpstreams.
	Upstreams []string
	// UseNext hands allowed queries of networks without their own upstreams
	// to the next plugin (e.g. forward) instead of exchanging them here.
	UseNext bool

	TTLFloor, TTLCeiling time.Duration
	PendingTimeout       time.Duration

	Log Logger
	// Decisions, when set, takes every decision (the events socket to the
	// plugin); when nil, decisions are logged as lines.
	Decisions func(decisionlog.Record)
	Now       func() time.Time

	ex *exchanger
}

// New returns a handler with defaults filled in.
func New(store *Store, learner Learner) *Clawker {
	return &Clawker{
		Store:          store,
		Learner:        learner,
		Upstreams:      DefaultUpstreams,
		TTLFloor:       DefaultTTLFloor,
		TTLCeiling:     DefaultTTLCeiling,
		PendingTimeout: DefaultPendingTimeout,
		Log:            log,
		Now:            time.Now,
		ex:             newExchanger(),
	}
}

// Name implements plugin.Handler.
func (c *Clawker) Name() string { return pluginName }

// Ready implements the ready plugin's Readiness: ready once a snapshot is
// loaded.
func (c *Clawker) Ready() bool {
	_, ok := c.Store.Generation()
	return ok
}

// Close releases upstream sockets.
func (c *Clawker) Close() { c.ex.Close() }

var (
	errUnknownEndpoint = errors.New("source address is no endpoint")
	errPendingTimeout  = errors.New("endpoint still pending")
)

// query carries one request through the decision.
type query struct {
	src   netip.Addr
	ep    *policy.Endpoint
	name  string // lower case, no trailing dot
	qtype uint16
	start time.Time
}

// record is the query's decision (the plugin fills in the network name and
// the fix from its own snapshot).
func (q *query) record(verdict, reason string, rcode int) decisionlog.Record {
	r := decisionlog.Record{Time: q.start, Source: decisionlog.SourceDNS, Verdict: verdict, Reason: reason,
		DestName: q.name, Protocol: "dns", Rcode: mdns.RcodeToString[rcode]}
	if q.src.IsValid() {
		r.SrcAddr = q.src.String()
	}
	if t, ok := mdns.TypeToString[q.qtype]; ok {
		r.QueryType = t
	} else {
		r.QueryType = "TYPE" + strconv.FormatUint(uint64(q.qtype), 10)
	}
	if q.ep != nil {
		r.Endpoint, r.Container = q.ep.Index, q.ep.ContainerName
	}
	return r
}

// emit hands a decision to Decisions, or logs it as a decision line
// (CLAWKER-DECISION and the record's JSON) when nothing takes records.
func (c *Clawker) emit(r decisionlog.Record) {
	if c.Decisions != nil {
		c.Decisions(r)
		return
	}
	b, _ := json.Marshal(&r)
	line := decisionlog.Message + " " + string(b)
	switch r.Verdict {
	case decisionlog.Allow:
		c.Log.Info(line)
	case decisionlog.Deny:
		c.Log.Warning(line)
	default:
		c.Log.Error(line)
	}
}

func (c *Clawker) deny(q *query, reason policy.Reason, rcode int, rule, detail string) {
	deniedCounter(reason).Inc()
	r := q.record(decisionlog.Deny, string(reason), rcode)
	r.Rule, r.Detail = rule, detail
	c.emit(r)
}

// allow reports an allowed query; addrs, the answered addresses, are given
// only for an endpoint in learn mode (see learnedAddrs).
func (c *Clawker) allow(q *query, reason string, id policy.Identity, answers int, upstream string, addrs ...string) {
	allowedCount.Inc()
	r := q.record(decisionlog.Allow, reason, mdns.RcodeSuccess)
	r.Identity, r.Answers, r.Upstream, r.Addrs = uint32(id), answers, upstream, addrs
	c.emit(r)
}

func (c *Clawker) fail(q *query, cause string, err error) {
	errorCount.WithLabelValues(cause).Inc()
	r := q.record(decisionlog.Error, cause, mdns.RcodeServerFailure)
	r.Detail = err.Error()
	c.emit(r)
}

// ServeDNS implements plugin.Handler.
//
// Decision order:
//  1. the source address must be an endpoint of the served snapshot, else
//     REFUSED (an unknown source is no endpoint); a pending endpoint (or no
//     snapshot yet) waits up to PendingTimeout for its policy, else SERVFAIL;
//  2. a name outside the rules' alphabet (see ruleName) is NXDOMAIN and
//     never leaves: the rules cannot see it, so neither an allow nor a deny
//     could mean it;
//  3. container names and aliases of the endpoint's network, and PTR
//     queries for their addresses, are answered locally (no rule needed);
//  4. a name the policy does not allow is NXDOMAIN and never leaves;
//  5. host.docker.internal, when allowed, is the endpoint's gateway;
//  6. AAAA is answered NOERROR with no data (the firewall is IPv4 only);
//  7. anything else is exchanged upstream (the network's DNSUpstreams, else
//     the plugin's); every IPv4 address of the answer is written to the
//     learned map under (endpoint, identity of the matched allow) and only
//     then is the answer returned.
func (c *Clawker) ServeDNS(ctx context.Context, w mdns.ResponseWriter, r *mdns.Msg) (int, error) {
	q := &query{src: remoteAddr(w), start: c.Now()}
	if len(r.Question) != 1 {
		return mdns.RcodeFormatError, nil
	}
	if r.Opcode != mdns.OpcodeQuery {
		return mdns.RcodeNotImplemented, nil
	}
	q.name = strings.ToLower(strings.TrimSuffix(r.Question[0].Name, "."))
	q.qtype = r.Question[0].Qtype

	st, who, err := c.endpoint(ctx, q.src)
	ep, pol := who.Endpoint, who.Policy
	q.ep = ep
	switch {
	case errors.Is(err, errUnknownEndpoint):
		c.deny(q, policy.ReasonUnknownPeer, mdns.RcodeRefused, "", "")
		return mdns.RcodeRefused, nil
	case errors.Is(err, errPendingTimeout):
		c.fail(q, "pending-timeout", fmt.Errorf("no policy after %s", c.PendingTimeout))
		return mdns.RcodeServerFailure, nil
	case err != nil:
		c.fail(q, "canceled", err)
		return mdns.RcodeServerFailure, nil
	}

	if r.Question[0].Qclass != mdns.ClassINET {
		c.deny(q, "class", mdns.RcodeNameError, "", "")
		return c.write(w, r, mdns.RcodeNameError, nil)
	}

	// 2. Names the rules cannot see.
	if !ruleName(r.Question[0].Name) {
		c.deny(q, ReasonBadName, mdns.RcodeNameError, "", "")
		return c.writeDenied(w, r, badNameText)
	}

	// 3. Local names of the endpoint's own network.
	if peer, ok := st.names[nameKey{ep.NetworkID, q.name}]; ok {
		var ans []mdns.RR
		if q.qtype == mdns.TypeA || q.qtype == mdns.TypeANY {
			if ip := peer.IP.Unmap(); ip.Is4() {
				ans = append(ans, &mdns.A{Hdr: hdr(r, mdns.TypeA, containerTTL), A: ip.AsSlice()})
			}
		}
		c.allow(q, "container", 0, len(ans), "local")
		return c.write(w, r, mdns.RcodeSuccess, ans)
	}
	if q.qtype == mdns.TypePTR {
		if ip, ok := reverseAddr(q.name); ok {
			if target, ok := st.ptr[ip]; ok {
				if peer, _ := st.snap.EndpointByIP(ip); peer != nil && peer.NetworkID == ep.NetworkID {
					ans := []mdns.RR{&mdns.PTR{Hdr: hdr(r, mdns.TypePTR, containerTTL), Ptr: target}}
					c.allow(q, "container-ptr", 0, 1, "local")
					return c.write(w, r, mdns.RcodeSuccess, ans)
				}
			}
		}
	}

	// 4. Policy.
	m := pol.MatchName(q.name, 0, 0)
	if !m.Allowed {
		if who.State == policy.ReasonBadLabel {
			// The container's labels did not parse: it has no egress at
			// all, and the denial names the label.
			c.deny(q, policy.ReasonBadLabel, mdns.RcodeNameError, "", who.Detail)
			return c.writeDenied(w, r, deniedText(q.name, policy.ReasonBadLabel, "", who.Detail, who.Network))
		}
		rule := verdict.Rule(m)
		c.deny(q, m.Reason, mdns.RcodeNameError, rule, "")
		return c.writeDenied(w, r, deniedText(q.name, m.Reason, rule, "", who.Network))
	}
	var id policy.Identity
	if m.Entry != nil {
		id = m.Entry.Identity
	}

	// 5. host.docker.internal is the gateway, never asked upstream.
	if q.name == hostDockerInternal {
		var ans []mdns.RR
		n := st.snap.Networks[ep.NetworkID]
		if n != nil && n.Gateway.Unmap().Is4() && (q.qtype == mdns.TypeA || q.qtype == mdns.TypeANY) {
			gw := n.Gateway.Unmap()
			ttl := c.TTLFloor
			if m.Entry != nil { // bypassed endpoints are not learned
				if err := c.learn(q, gw, id, ttl); err != nil {
					c.fail(q, "learn", err)
					return mdns.RcodeServerFailure, nil
				}
			}
			ans = append(ans, &mdns.A{Hdr: hdr(r, mdns.TypeA, uint32(ttl/time.Second)), A: gw.AsSlice()})
		}
		c.allow(q, "gateway", id, len(ans), "local")
		return c.write(w, r, mdns.RcodeSuccess, ans)
	}

	// 6. No IPv6.
	if q.qtype == mdns.TypeAAAA {
		c.allow(q, "aaaa-empty", id, 0, "local")
		return c.write(w, r, mdns.RcodeSuccess, nil)
	}

	// 7. Upstream.
	resp, upstream, rcode, err := c.exchange(ctx, st, ep, w, r)
	if err != nil {
		c.fail(q, "upstream", err)
		return rcode, nil
	}
	forwardedCount.Inc()
	reply, learn := c.filter(r, resp)
	if m.Entry != nil { // AllowAll (bypass) has no entry: the hooks ignore the endpoint
		for _, l := range learn {
			if pol.DeniedAddr(l.addr) != nil {
				continue // a CIDR deny wins over the name's allow: not routed
			}
			if err := c.learn(q, l.addr, id, l.ttl); err != nil {
				c.fail(q, "learn", err)
				return mdns.RcodeServerFailure, nil
			}
		}
	}
	var addrs []string
	if pol.Learn {
		addrs = learnedAddrs(learn)
	}
	c.allow(q, string(m.Reason), id, len(reply.Answer), upstream, addrs...)
	state := request.Request{W: w, Req: r}
	state.SizeAndDo(reply)
	reply = state.Scrub(reply)
	if err := w.WriteMsg(reply); err != nil {
		return mdns.RcodeServerFailure, err
	}
	return reply.Rcode, nil
}

// endpoint answers who is asking (the endpoint, its effective policy, why),
// waiting (bounded) while it is pending or no snapshot is loaded yet:
// policy.Await, the one answer the proxy engines use too.
func (c *Clawker) endpoint(ctx context.Context, src netip.Addr) (*storeState, policy.Who, error) {
	var st *storeState
	view := func() (*policy.Snapshot, <-chan struct{}) {
		st = c.Store.view()
		return st.snap, st.changed
	}
	who, waited := policy.Await(ctx, c.PendingTimeout, c.Now, src, view)
	if waited {
		pendingWaits.Inc()
	}
	switch {
	case who.State == policy.ReasonUnknownPeer:
		return st, who, errUnknownEndpoint
	case who.Pending() && ctx.Err() != nil:
		return st, who, ctx.Err()
	case who.Pending():
		return st, who, errPendingTimeout
	}
	return st, who, nil
}

// exchange gets the upstream answer: from the network's own upstreams, the
// next plugin (UseNext), or the plugin's upstreams.
func (c *Clawker) exchange(ctx context.Context, st *storeState, ep *policy.Endpoint, w mdns.ResponseWriter, r *mdns.Msg) (*mdns.Msg, string, int, error) {
	ups, ok := st.upstreams[ep.NetworkID]
	if !ok && c.UseNext {
		nw := nonwriter.New(w)
		rcode, err := plugin.NextOrFailure(c.Name(), c.Next, ctx, nw, r)
		if nw.Msg == nil {
			if err == nil {
				err = fmt.Errorf("next plugin wrote no answer (rcode %s)", mdns.RcodeToString[rcode])
			}
			if plugin.ClientWrite(rcode) {
				rcode = mdns.RcodeServerFailure
			}
			return nil, "next", rcode, err
		}
		return nw.Msg, "next", mdns.RcodeSuccess, nil
	}
	if !ok {
		ups = c.Upstreams
	}
	resp, up, err := c.ex.Exchange(ctx, ups, r)
	if err != nil {
		return nil, "", mdns.RcodeServerFailure, err
	}
	return resp, up, mdns.RcodeSuccess, nil
}

type learnItem struct {
	addr netip.Addr
	ttl  time.Duration
}

// filter builds the client's reply from the upstream answer:
//   - the answer keeps only records owned by the queried name or a CNAME
//     target reached from it (the chain), never AAAA;
//   - A records of the chain and ipv4hints of HTTPS/SVCB records of the chain
//     are returned for learning, with their TTL clamped to [floor, ceiling];
//     HTTPS/SVCB records keep only the parameters in svcbKept;
//   - every TTL is capped at the ceiling, so a client never caches an
//     address longer than the firewall remembers it;
//   - the authority section loses A/AAAA and HTTPS/SVCB records (addresses
//     and parameters nobody filtered); the additional section is dropped
//     (the client's EDNS OPT is re-added by SizeAndDo).
func (c *Clawker) filter(r, resp *mdns.Msg) (*mdns.Msg, []learnItem) {
	reply := new(mdns.Msg)
	reply.SetReply(r)
	reply.Rcode = resp.Rcode
	reply.RecursionAvailable = resp.RecursionAvailable
	reply.AuthenticatedData = resp.AuthenticatedData

	chain := map[string]bool{strings.ToLower(mdns.Fqdn(r.Question[0].Name)): true}
	for changed := true; changed; {
		changed = false
		for _, rr := range resp.Answer {
			if cn, ok := rr.(*mdns.CNAME); ok && chain[strings.ToLower(cn.Hdr.Name)] {
				t := strings.ToLower(cn.Target)
				if !chain[t] {
					chain[t] = true
					changed = true
				}
			}
		}
	}
	ceiling := uint32(c.TTLCeiling / time.Second)
	var learn []learnItem
	for _, rr := range resp.Answer {
		h := rr.Header()
		if !chain[strings.ToLower(h.Name)] {
			continue
		}
		switch v := rr.(type) {
		case *mdns.AAAA:
			continue
		case *mdns.A:
			if a, ok := netip.AddrFromSlice(v.A); ok {
				learn = append(learn, learnItem{a.Unmap(), c.clamp(h.Ttl)})
			}
		case *mdns.SVCB:
			learn = c.svcbParams(v, learn)
		case *mdns.HTTPS:
			learn = c.svcbParams(&v.SVCB, learn)
		}
		if h.Ttl > ceiling {
			h.Ttl = ceiling
		}
		reply.Answer = append(reply.Answer, rr)
	}
	for _, rr := range resp.Ns {
		switch rr.(type) {
		case *mdns.A, *mdns.AAAA, *mdns.SVCB, *mdns.HTTPS:
			continue
		}
		if h := rr.Header(); h.Ttl > ceiling {
			h.Ttl = ceiling
		}
		reply.Ns = append(reply.Ns, rr)
	}
	return reply, learn
}

// svcbKept are the HTTPS/SVCB parameters an answer keeps. Every other one
// is stripped, known or not, because it could take a connection where the
// rules do not look:
//   - ech: with Encrypted ClientHello an allowed outer SNI carries any inner
//     name (fronting); without the config clients send a plain ClientHello;
//   - ipv6hint: the firewall is IPv4 only;
//   - dohpath and ohttp: they announce an encrypted resolver or an
//     oblivious-HTTP gateway (queries and requests the firewall cannot see);
//   - keys this code does not know (private "keyNNNNN" ones included): what
//     they carry is unknown, so fail closed.
//
// ipv4hint is kept and its addresses are learned like A records (browsers
// connect straight to hints); port only picks a port that the hooks and the
// proxy check like any other; alpn, no-default-alpn and mandatory describe
// the protocol. A stripped key is also taken out of mandatory (a record
// whose mandatory key is missing is malformed and clients skip it).
var svcbKept = map[mdns.SVCBKey]bool{
	mdns.SVCB_MANDATORY:       true,
	mdns.SVCB_ALPN:            true,
	mdns.SVCB_NO_DEFAULT_ALPN: true,
	mdns.SVCB_PORT:            true,
	mdns.SVCB_IPV4HINT:        true,
}

// svcbParams strips s's parameters down to svcbKept and appends its
// ipv4hints to learn.
func (c *Clawker) svcbParams(s *mdns.SVCB, learn []learnItem) []learnItem {
	kept := s.Value[:0]
	var mandatory *mdns.SVCBMandatory
	for _, kv := range s.Value {
		if !svcbKept[kv.Key()] {
			continue
		}
		switch v := kv.(type) {
		case *mdns.SVCBIPv4Hint:
			for _, ip := range v.Hint {
				if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap().Is4() {
					learn = append(learn, learnItem{a.Unmap(), c.clamp(s.Hdr.Ttl)})
				}
			}
		case *mdns.SVCBMandatory:
			mandatory = v
		}
		kept = append(kept, kv)
	}
	s.Value = kept
	if mandatory != nil {
		var code []mdns.SVCBKey
		for _, k := range mandatory.Code {
			if svcbKept[k] && k != mdns.SVCB_MANDATORY {
				code = append(code, k)
			}
		}
		mandatory.Code = code
		if len(code) == 0 {
			s.Value = slices.DeleteFunc(s.Value, func(kv mdns.SVCBKeyValue) bool { return kv == mdns.SVCBKeyValue(mandatory) })
		}
	}
	return learn
}

// clamp turns a record TTL into the learned entry's lifetime.
func (c *Clawker) clamp(ttl uint32) time.Duration {
	d := time.Duration(ttl) * time.Second
	return min(max(d, c.TTLFloor), c.TTLCeiling)
}

// learn writes one address into the endpoint's learned map. When the
// endpoint's quota was full the writer evicted the endpoint's own oldest
// entries to make room (never another endpoint's): counted and logged, as
// connects to the evicted addresses are denied until they are resolved
// again.
func (c *Clawker) learn(q *query, addr netip.Addr, id policy.Identity, ttl time.Duration) error {
	evicted, err := c.Learner.Learn(q.ep.Index, addr, id, ttl)
	if evicted > 0 {
		learnedEvicted.Add(float64(evicted))
		c.Log.Warningf("learned map of endpoint %d full: evicted its %d oldest addresses to learn %s for %q (connections to them are denied until resolved again)",
			q.ep.Index, evicted, addr, q.name)
	}
	if err != nil {
		return err
	}
	learnedCount.Inc()
	return nil
}

// ReasonBadName denies a name outside the rules' alphabet (see ruleName):
// no rule can allow it.
const ReasonBadName policy.Reason = "bad-name"

// ruleName reports whether a question name (miekg's presentation form, in
// which every byte outside printable ASCII, and '.' inside a label, is a
// backslash escape) is made only of what rules can name: labels of 1 to 63
// letters (any case), digits, '-' and '_', separated by single dots, with
// at most one trailing dot. Raw UTF-8, spaces, control bytes, escaped bytes
// ("\.", "\195"), '*' and empty labels all fail. The root name (".") has
// no label at all and is left to the policy (which allows no such name).
func ruleName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return true
	}
	if len(name) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		switch ch := name[i]; {
		case ch == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '-', ch == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return label > 0
}

// write sends a locally built answer.
func (c *Clawker) write(w mdns.ResponseWriter, r *mdns.Msg, rcode int, ans []mdns.RR) (int, error) {
	m := new(mdns.Msg)
	m.SetRcode(r, rcode)
	m.Authoritative = true
	m.RecursionAvailable = true
	m.Answer = ans
	state := request.Request{W: w, Req: r}
	state.SizeAndDo(m)
	if err := w.WriteMsg(state.Scrub(m)); err != nil {
		return mdns.RcodeServerFailure, err
	}
	return rcode, nil
}

func hdr(r *mdns.Msg, t uint16, ttl uint32) mdns.RR_Header {
	return mdns.RR_Header{Name: r.Question[0].Name, Rrtype: t, Class: mdns.ClassINET, Ttl: ttl}
}

// remoteAddr is the client's address from the response writer.
func remoteAddr(w mdns.ResponseWriter) netip.Addr { return model.Source(w.RemoteAddr()) }

// reverseAddr parses "d.c.b.a.in-addr.arpa" into a.b.c.d.
func reverseAddr(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa")
	if !ok {
		return netip.Addr{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 8)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return netip.Addr{}, false
		}
		b[3-i] = byte(v)
	}
	return netip.AddrFrom4(b), true
}
