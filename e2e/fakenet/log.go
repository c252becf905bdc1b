package fakenet

import (
	"net"
	"strconv"
	"sync"
	"time"
)

// Entry kinds.
const (
	KindConn   = "conn"   // a TCP connection accepted by a service
	KindDNS    = "dns"    // a DNS query
	KindHTTP   = "http"   // an HTTP request (after TLS for https)
	KindPacket = "packet" // a flow seen by the interface sniffer (first packet only)
)

// Entry is one recorded event. Src/Dst are bare IPs.
type Entry struct {
	Seq     int64     `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Proto   string    `json:"proto"`             // tcp, udp, icmp, icmpv6, ...
	Service string    `json:"service,omitempty"` // dns, https, http, echo, ssh
	Src     string    `json:"src"`
	SrcPort int       `json:"src_port,omitempty"`
	Dst     string    `json:"dst"`
	DstPort int       `json:"dst_port,omitempty"`
	// Name is the DNS query name (no trailing dot), the HTTP Host, or empty.
	Name  string `json:"name,omitempty"`
	QType string `json:"qtype,omitempty"`
	Rcode string `json:"rcode,omitempty"`
	SNI   string `json:"sni,omitempty"`
	Path  string `json:"path,omitempty"`
	// Target is the request target exactly as received (HTTP/1 request
	// line, HTTP/2 :path), before Go re-encodes it into Path.
	Target string `json:"target,omitempty"`
	// HTTPProto is the request protocol (HTTP/1.1, HTTP/2.0).
	HTTPProto string `json:"http_proto,omitempty"`
}

// Recorder is a concurrency-safe append-only event log.
type Recorder struct {
	mu      sync.Mutex
	seq     int64
	entries []Entry
	flows   map[string]bool
}

// NewRecorder returns an empty log.
func NewRecorder() *Recorder { return &Recorder{flows: map[string]bool{}} }

// Add appends e, stamping its sequence number and time.
func (r *Recorder) Add(e Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	e.Seq = r.seq
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	r.entries = append(r.entries, e)
}

// addFlow records a sniffed flow once per (src, dst, proto, dst port) until
// the next Reset.
func (r *Recorder) addFlow(e Entry) {
	key := e.Src + "|" + e.Dst + "|" + e.Proto + "|" + strconv.Itoa(e.DstPort)
	r.mu.Lock()
	seen := r.flows[key]
	r.flows[key] = true
	r.mu.Unlock()
	if !seen {
		r.Add(e)
	}
}

// Since returns a copy of the entries with Seq > seq.
func (r *Recorder) Since(seq int64) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []Entry{}
	for _, e := range r.entries {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out
}

// Reset drops every entry (sequence numbers keep growing).
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = nil
	r.flows = map[string]bool{}
}

// splitAddr returns the IP and port of a TCP or UDP address.
func splitAddr(a net.Addr) (string, int) {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.IP.String(), v.Port
	case *net.UDPAddr:
		return v.IP.String(), v.Port
	}
	if a == nil {
		return "", 0
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

// connEntry builds a KindConn entry for an accepted connection.
func connEntry(c net.Conn, service string) Entry {
	src, sport := splitAddr(c.RemoteAddr())
	dst, dport := splitAddr(c.LocalAddr())
	return Entry{Kind: KindConn, Proto: "tcp", Service: service, Src: src, SrcPort: sport, Dst: dst, DstPort: dport}
}

// recordingListener records every accepted connection.
type recordingListener struct {
	net.Listener
	rec     *Recorder
	service string
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.rec.Add(connEntry(c, l.service))
	}
	return c, err
}
