package fakenet

import (
	"net"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// zoneData is the immutable DNS data built from the config.
type zoneData struct {
	zone  string
	ttl   uint32
	a     map[string][]net.IP // exact and "*." wildcard names
	cname map[string]string
}

func newZoneData(c *Config) *zoneData {
	z := &zoneData{zone: c.Zone, ttl: c.TTL, a: map[string][]net.IP{}, cname: map[string]string{}}
	for _, h := range c.Hosts {
		z.a[h.Name] = append(z.a[h.Name], net.ParseIP(h.IP).To4())
	}
	for _, a := range c.CNAMEs {
		z.cname[a.Name] = a.Target
	}
	return z
}

// SpreadLabel is the zone's subdomain of many addresses: n<k>.spread.<zone>
// for k in 0..65535 answers 198.18.<k/256>.<k%256> (RFC 2544 benchmarking
// space, served by nothing), so a test can make a container learn as many
// distinct addresses as it likes.
const SpreadLabel = "spread"

// lookupA returns the A addresses of name: exact match first, then the
// spread names, then the closest enclosing wildcard ("*.wild.example.test."
// covers any depth).
func (z *zoneData) lookupA(name string) ([]net.IP, bool) {
	if ips, ok := z.a[name]; ok {
		return ips, true
	}
	if n, ok := strings.CutSuffix(name, "."+SpreadLabel+"."+z.zone); ok && strings.HasPrefix(n, "n") {
		if k, err := strconv.ParseUint(n[1:], 10, 16); err == nil {
			return []net.IP{net.IPv4(198, 18, byte(k>>8), byte(k)).To4()}, true
		}
	}
	labels := dns.SplitDomainName(name)
	for i := 1; i < len(labels); i++ {
		wild := "*." + strings.Join(labels[i:], ".") + "."
		if ips, ok := z.a[wild]; ok {
			return ips, true
		}
	}
	return nil, false
}

func (z *zoneData) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: z.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: z.ttl},
		Ns:      "ns." + z.zone,
		Mbox:    "hostmaster." + z.zone,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: z.ttl,
	}
}

// answer fills m (a reply to q) and returns it. Names outside the zone get
// NXDOMAIN too: the fake internet has nothing else, and a test that forwards
// a stray name should see "does not exist", not a timeout.
func (z *zoneData) answer(q dns.Question, m *dns.Msg) {
	name := strings.ToLower(q.Name)
	m.Authoritative = dns.IsSubDomain(z.zone, name)
	// Follow CNAMEs (bounded).
	for range 8 {
		target, ok := z.cname[name]
		if !ok {
			break
		}
		m.Answer = append(m.Answer, &dns.CNAME{
			Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: z.ttl},
			Target: target,
		})
		if q.Qtype == dns.TypeCNAME {
			return
		}
		name = target
	}
	ips, exists := z.lookupA(name)
	if !exists && name == z.zone {
		exists = true
	}
	switch {
	case !exists && len(m.Answer) == 0:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, z.soa())
	case q.Qtype == dns.TypeA:
		for _, ip := range ips {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: z.ttl},
				A:   ip,
			})
		}
	case q.Qtype == dns.TypeSOA && name == z.zone:
		m.Answer = append(m.Answer, z.soa())
	default:
		// The name exists but has no data of this type (AAAA included).
		m.Ns = append(m.Ns, z.soa())
	}
}

// dnsHandler answers from zoneData and records every query.
type dnsHandler struct {
	z   *zoneData
	rec *Recorder
}

func (h *dnsHandler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	src, sport := splitAddr(w.RemoteAddr())
	dst, dport := splitAddr(w.LocalAddr())
	e := Entry{Kind: KindDNS, Proto: proto, Service: "dns", Src: src, SrcPort: sport, Dst: dst, DstPort: dport}
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
	} else {
		q := r.Question[0]
		e.Name = strings.TrimSuffix(strings.ToLower(q.Name), ".")
		e.QType = dns.TypeToString[q.Qtype]
		h.z.answer(q, m)
	}
	e.Rcode = dns.RcodeToString[m.Rcode]
	h.rec.Add(e)
	_ = w.WriteMsg(m)
}
