package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// DefaultUpstreams are Cloudflare's malware-blocking resolvers, used when
// neither the Corefile nor the network's settings name upstreams.
var DefaultUpstreams = []string{"1.1.1.2:53", "1.0.0.2:53"}

// upstreamTimeout bounds one exchange with one upstream.
const upstreamTimeout = 2 * time.Second

// ednsSize is the UDP payload size advertised upstream (DNS flag day 2020).
const ednsSize = 1232

// exchanger does the upstream exchange itself (miekg/dns), so that the
// upstream can be chosen per query from the asking endpoint's network. It
// keeps a small pool of connected UDP sockets per upstream: a fresh socket
// per query costs more than the policy check.
type exchanger struct {
	mu    sync.Mutex
	pools map[string]chan *mdns.Conn
	udp   *mdns.Client
	tcp   *mdns.Client
}

const poolSize = 32

func newExchanger() *exchanger {
	return &exchanger{
		pools: make(map[string]chan *mdns.Conn),
		udp:   &mdns.Client{Net: "udp", Timeout: upstreamTimeout, UDPSize: ednsSize},
		tcp:   &mdns.Client{Net: "tcp", Timeout: upstreamTimeout},
	}
}

func (e *exchanger) pool(addr string) chan *mdns.Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pools[addr]
	if !ok {
		p = make(chan *mdns.Conn, poolSize)
		e.pools[addr] = p
	}
	return p
}

// upstreamQuery builds a fresh query for q: only the question, RD, CD and
// the DO bit travel upstream, never the client's EDNS options.
func upstreamQuery(r *mdns.Msg) *mdns.Msg {
	q := new(mdns.Msg)
	q.SetQuestion(r.Question[0].Name, r.Question[0].Qtype)
	q.Question[0].Qclass = r.Question[0].Qclass
	q.RecursionDesired = true
	q.CheckingDisabled = r.CheckingDisabled
	do := false
	if o := r.IsEdns0(); o != nil {
		do = o.Do()
	}
	q.SetEdns0(ednsSize, do)
	return q
}

// Exchange asks the upstreams in order until one answers. A truncated UDP
// answer is retried over TCP on the same upstream.
func (e *exchanger) Exchange(ctx context.Context, upstreams []string, r *mdns.Msg) (*mdns.Msg, string, error) {
	var errs []error
	for _, up := range upstreams {
		q := upstreamQuery(r)
		resp, err := e.exchangeUDP(ctx, up, q)
		if err == nil && resp.Truncated {
			resp, _, err = e.tcp.ExchangeContext(ctx, q, up)
		}
		if err == nil {
			return resp, up, nil
		}
		errs = append(errs, fmt.Errorf("exchange with %s: %w", up, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, "", errors.New("no upstream configured")
	}
	return nil, "", errors.Join(errs...)
}

func (e *exchanger) exchangeUDP(ctx context.Context, addr string, q *mdns.Msg) (*mdns.Msg, error) {
	p := e.pool(addr)
	var conn *mdns.Conn
	select {
	case conn = <-p:
	default:
		c, err := net.DialTimeout("udp", addr, upstreamTimeout)
		if err != nil {
			return nil, err
		}
		conn = &mdns.Conn{Conn: c, UDPSize: ednsSize}
	}
	resp, _, err := e.udp.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	select {
	case p <- conn:
	default:
		conn.Close()
	}
	return resp, nil
}

// Close closes the pooled sockets.
func (e *exchanger) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for addr, p := range e.pools {
	drain:
		for {
			select {
			case c := <-p:
				c.Close()
			default:
				break drain
			}
		}
		delete(e.pools, addr)
	}
}
