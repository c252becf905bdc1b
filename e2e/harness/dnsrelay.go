package harness

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/miekg/dns"
)

// dnsRelay is the host-netns loopback resolver of Options.LoopbackResolver:
// it records every query and forwards it to the fake DNS.
type dnsRelay struct {
	rec     *fakenet.Recorder
	servers []*dns.Server
}

func startDNSRelay(listen, upstream string) (*dnsRelay, error) {
	r := &dnsRelay{rec: fakenet.NewRecorder()}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		netw := "udp"
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			netw = "tcp"
		}
		src, sport := splitHostPort(w.RemoteAddr().String())
		e := fakenet.Entry{Kind: fakenet.KindDNS, Proto: netw, Service: "loopback-relay", Src: src, SrcPort: sport, Dst: LoopbackResolverIP, DstPort: 53}
		if len(req.Question) > 0 {
			e.Name = strings.TrimSuffix(strings.ToLower(req.Question[0].Name), ".")
			e.QType = dns.TypeToString[req.Question[0].Qtype]
		}
		resp, _, err := (&dns.Client{Net: netw, Timeout: 3 * time.Second}).Exchange(req, upstream)
		if err != nil {
			resp = new(dns.Msg)
			resp.SetRcode(req, dns.RcodeServerFailure)
		}
		e.Rcode = dns.RcodeToString[resp.Rcode]
		r.rec.Add(e)
		_ = w.WriteMsg(resp)
	})
	pc, err := net.ListenPacket("udp4", listen)
	if err != nil {
		return nil, fmt.Errorf("listen dns relay %s: %w", listen, err)
	}
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen dns relay %s: %w", listen, err)
	}
	r.servers = []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
	for _, srv := range r.servers {
		started := make(chan struct{})
		var once sync.Once
		signal := func() { once.Do(func() { close(started) }) }
		srv.NotifyStartedFunc = signal
		go func() {
			defer signal()
			_ = srv.ActivateAndServe()
		}()
		<-started
	}
	return r, nil
}

func (r *dnsRelay) Close() {
	for _, s := range r.servers {
		_ = s.Shutdown()
	}
}

func splitHostPort(s string) (string, int) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return s, 0
	}
	var p int
	fmt.Sscanf(port, "%d", &p)
	return host, p
}
