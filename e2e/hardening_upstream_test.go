package e2e

import (
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// splitResolver is a second fake resolver inside the fake internet: it
// answers harness.AllowedHost with splitAddr (AltHost's service address,
// which serves HTTP like every service address), where fakenet's own DNS
// answers 10.220.0.10, and records who asked.
type splitResolver struct {
	mu    sync.Mutex
	asked []string // "src name"
}

const (
	splitResolverAddr = "10.220.0.14:5353"
	splitAddr         = "10.220.0.14"
	fakenetAllowedIP  = "10.220.0.10"
)

func (s *splitResolver) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		s.mu.Lock()
		s.asked = append(s.asked, w.RemoteAddr().String()+" "+strings.ToLower(q.Name))
		s.mu.Unlock()
		if !strings.EqualFold(q.Name, mdns.Fqdn(harness.AllowedHost)) {
			m.Rcode = mdns.RcodeNameError
			continue
		}
		if q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 30},
				A: net.ParseIP(splitAddr).To4()})
		}
	}
	_ = w.WriteMsg(m)
}

func (s *splitResolver) questions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

// startSplitResolver serves splitResolver on splitResolverAddr (UDP and
// TCP) from sockets opened inside the fake internet's namespace.
func startSplitResolver(t *testing.T) *splitResolver {
	t.Helper()
	s := &splitResolver{}
	ns, err := netns.GetFromName(harness.NetnsName)
	require.NoError(t, err)
	defer ns.Close()
	var pc net.PacketConn
	var ln net.Listener
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		require.NoError(t, err)
		defer orig.Close()
		require.NoError(t, netns.Set(ns))
		defer func() { require.NoError(t, netns.Set(orig)) }()
		pc, err = net.ListenPacket("udp4", splitResolverAddr)
		require.NoError(t, err)
		ln, err = net.Listen("tcp4", splitResolverAddr)
		require.NoError(t, err)
	}()
	udp := &mdns.Server{PacketConn: pc, Handler: s}
	tcp := &mdns.Server{Listener: ln, Handler: s}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return s
}

// TestHardeningUpstreamNetworkResolver (issue 12, "who is asking"): a
// network with clawker.dns.upstream gets its DNS answers from that resolver
// and the proxy dials the name through the same resolver, so the upstream
// connection goes to the address the container was told (fakenet's log
// shows the destination), and fakenet's own DNS (the plugin-wide upstream)
// is never asked. Control: a network without the option uses fakenet's
// answer for the same name, for DNS and for the proxy's dial.
func TestHardeningUpstreamNetworkResolver(t *testing.T) {
	f := pluginEnv(t)
	split := startSplitResolver(t)
	withUp := f.createNet(t, "cfw-up-split", 190, "clawker.dns.upstream="+splitResolverAddr, "clawker.allow=http://"+harness.AllowedHost)
	plain := f.createNet(t, "cfw-up-plain", 191, "clawker.allow=http://"+harness.AllowedHost)

	for _, tt := range []struct {
		name, network, want string
		viaSplit            bool
	}{
		{"network with clawker.dns.upstream", withUp.Name, splitAddr, true},
		{"control: network without it", plain.Name, fakenetAllowedIP, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.resetLeaks(t)
			before := len(split.questions())
			c := f.detached(t, "--network", tt.network, f.debian, "sleep", "600")
			out, err := f.exec(c, "getent", "ahostsv4", harness.AllowedHost)
			require.NoError(t, err, out)
			got := strings.Fields(out)
			require.NotEmpty(t, got, out)
			require.Equal(t, tt.want, got[0], "the container's DNS answer: %s", out)

			path := "/upstream-" + tt.network
			out, err = f.exec(c, "curl", "-sS", "--max-time", "10", "http://"+harness.AllowedHost+path)
			require.NoError(t, err, out)
			require.Contains(t, out, "fakenet host="+harness.AllowedHost+" path="+path)
			reqs := fakenetSaw(t, f.e, func(en fakenet.Entry) bool { return en.Kind == fakenet.KindHTTP && en.Path == path })
			require.Len(t, reqs, 1, "requests for %s reaching fakenet", path)
			require.Equal(t, tt.want, reqs[0].Dst, "the proxy's upstream connection went to another resolver's address")
			require.Equal(t, harness.HostIP, reqs[0].Src, "the request came from the proxy")

			fakenetDNS := fakenetSaw(t, f.e, func(en fakenet.Entry) bool {
				return en.Kind == fakenet.KindDNS && strings.EqualFold(en.Name, harness.AllowedHost)
			})
			asked := split.questions()[before:]
			if tt.viaSplit {
				require.Empty(t, fakenetDNS, "the plugin-wide resolver was asked for a network with its own upstream")
				require.NotEmpty(t, asked, "the network's resolver was never asked")
				for _, q := range asked {
					src, _, _ := strings.Cut(q, ":")
					require.Equal(t, harness.HostIP, src, "who asked the network's resolver: %v", asked)
				}
			} else {
				require.Empty(t, asked, "the network's resolver was asked for a network without the option")
				require.NotEmpty(t, fakenetDNS, "fakenet's DNS never asked")
			}
			// Only the plugin (host side) talked to the fake internet.
			f.requireNoLeaks(t)
		})
	}
}
