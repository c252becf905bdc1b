package fakenet

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

func testConfig(t *testing.T) *Config {
	return &Config{
		CADir: filepath.Join(t.TempDir(), "ca"),
		Hosts: []Host{
			{Name: "allowed.example.test", IP: "10.220.0.10"},
			{Name: "multi.example.test", IP: "10.220.0.17"},
			{Name: "multi.example.test", IP: "10.220.0.18"},
			{Name: "*.wild.example.test", IP: "10.220.0.19"},
		},
		CNAMEs:     []CNAME{{Name: "cname.example.test", Target: "cname2.example.test"}, {Name: "cname2.example.test", Target: "allowed.example.test"}},
		DNSAddrs:   []string{"127.0.0.1"},
		DNSPort:    0,
		ListenIP:   "127.0.0.1",
		HTTPSPorts: []int{0},
		HTTPPorts:  []int{0},
		EchoPorts:  []int{0},
		Control:    "127.0.0.1:0",
	}
}

func startServer(t *testing.T, cfg *Config) *Server {
	t.Helper()
	s, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, s.Start())
	t.Cleanup(s.Close)
	return s
}

func TestDNS(t *testing.T) {
	s := startServer(t, testConfig(t))
	udp := s.Addr("dns-udp/127.0.0.1").String()
	tcp := s.Addr("dns-tcp/127.0.0.1").String()
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string // A addresses and CNAME targets in order
	}{
		{"a", "allowed.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"10.220.0.10"}},
		{"case insensitive", "ALLOWED.example.TEST.", dns.TypeA, dns.RcodeSuccess, []string{"10.220.0.10"}},
		{"multi", "multi.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"10.220.0.17", "10.220.0.18"}},
		{"wildcard", "a.b.wild.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"10.220.0.19"}},
		{"cname chain", "cname.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"cname2.example.test.", "allowed.example.test.", "10.220.0.10"}},
		{"aaaa empty", "allowed.example.test.", dns.TypeAAAA, dns.RcodeSuccess, nil},
		{"nxdomain", "nope.example.test.", dns.TypeA, dns.RcodeNameError, nil},
		{"spread", "n258.spread.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"198.18.1.2"}},
		{"spread out of range", "n65536.spread.example.test.", dns.TypeA, dns.RcodeNameError, nil},
		{"outside zone", "github.com.", dns.TypeA, dns.RcodeNameError, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				net, addr string
			}{{"udp", udp}, {"tcp", tcp}} {
				m := new(dns.Msg)
				m.SetQuestion(tc.qname, tc.qtype)
				r, _, err := (&dns.Client{Net: c.net, Timeout: 2 * time.Second}).Exchange(m, c.addr)
				require.NoError(t, err)
				require.Equal(t, tc.rcode, r.Rcode, c.net)
				var got []string
				for _, rr := range r.Answer {
					switch v := rr.(type) {
					case *dns.A:
						got = append(got, v.A.String())
					case *dns.CNAME:
						got = append(got, v.Target)
					}
				}
				require.Equal(t, tc.answer, got, c.net)
			}
		})
	}
	log := s.Recorder().Since(0)
	require.Len(t, log, 2*len(tests))
	require.Equal(t, KindDNS, log[0].Kind)
	require.Equal(t, "127.0.0.1", log[0].Src)
	require.Equal(t, "127.0.0.1", log[0].Dst)
	require.Equal(t, "allowed.example.test", log[0].Name)
	require.Equal(t, "A", log[0].QType)
	require.Equal(t, "tcp", log[1].Proto)
}

func caPool(t *testing.T, dir string) *x509.CertPool {
	pem, err := os.ReadFile(filepath.Join(dir, CACertFile))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	return pool
}

func TestHTTPS(t *testing.T) {
	cfg := testConfig(t)
	s := startServer(t, cfg)
	addr := s.Addr("https/0").String()
	tlsConf := &tls.Config{RootCAs: caPool(t, cfg.CADir), ServerName: "allowed.example.test"}
	dial := func(network, _ string) (net.Conn, error) { return net.Dial(network, addr) }

	for _, tc := range []struct {
		name  string
		rt    http.RoundTripper
		proto string
	}{
		{"http1", &http.Transport{TLSClientConfig: tlsConf, Dial: dial}, "HTTP/1.1"},
		{"h2", &http2.Transport{TLSClientConfig: tlsConf, DialTLS: func(network, _ string, c *tls.Config) (net.Conn, error) {
			return tls.Dial(network, addr, c)
		}}, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := &http.Client{Transport: tc.rt, Timeout: 5 * time.Second}
			resp, err := client.Get("https://allowed.example.test/hello?x=1")
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, tc.proto, resp.Proto)
			require.Contains(t, string(body), "host=allowed.example.test path=/hello?x=1 proto="+tc.proto+" sni=allowed.example.test")

			resp, err = client.Get("https://allowed.example.test/bytes?n=100000")
			require.NoError(t, err)
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, 100000, len(body))
		})
	}
	var conns, reqs int
	for _, e := range s.Recorder().Since(0) {
		switch e.Kind {
		case KindConn:
			conns++
			require.Equal(t, "https", e.Service)
			require.Equal(t, "127.0.0.1", e.Src)
		case KindHTTP:
			reqs++
			require.Equal(t, "allowed.example.test", e.SNI)
		}
	}
	require.Equal(t, 2, conns)
	require.Equal(t, 4, reqs)
}

func TestEchoAndControl(t *testing.T) {
	s := startServer(t, testConfig(t))
	c, err := net.Dial("tcp", s.Addr("echo/0").String())
	require.NoError(t, err)
	_, err = c.Write([]byte("ping\n"))
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "ping\n", string(buf))
	c.Close()

	base := "http://" + s.Addr("control").String()
	resp, err := http.Get(base + "/log")
	require.NoError(t, err)
	var log []Entry
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&log))
	resp.Body.Close()
	require.Len(t, log, 1)
	require.Equal(t, "echo", log[0].Service)

	resp, err = http.Post(base+"/reset", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Empty(t, s.Recorder().Since(0))

	resp, err = http.Get(base + "/ca.crt")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.True(t, bytes.HasPrefix(body, []byte("-----BEGIN CERTIFICATE-----")))
}

func TestEnsureCAKeepsCAAndReissuesLeaf(t *testing.T) {
	dir := t.TempDir()
	_, err := EnsureCA(dir, []string{"a.example.test"}, []net.IP{net.ParseIP("10.220.0.10")})
	require.NoError(t, err)
	ca1, err := os.ReadFile(filepath.Join(dir, CACertFile))
	require.NoError(t, err)
	pair, err := EnsureCA(dir, []string{"a.example.test", "b.example.test"}, nil)
	require.NoError(t, err)
	ca2, err := os.ReadFile(filepath.Join(dir, CACertFile))
	require.NoError(t, err)
	require.Equal(t, ca1, ca2)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: caPool(t, dir), DNSName: "b.example.test"})
	require.NoError(t, err)
	require.Equal(t, x509.ECDSA, leaf.PublicKeyAlgorithm)
}

func TestParsePacket(t *testing.T) {
	ip := make([]byte, 24)
	ip[0] = 0x45
	ip[9] = 6
	copy(ip[12:16], net.ParseIP("172.30.0.5").To4())
	copy(ip[16:20], net.ParseIP("10.220.0.10").To4())
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], 443)
	e, ok := parsePacket(ip)
	require.True(t, ok)
	require.Equal(t, Entry{Kind: KindPacket, Proto: "tcp", Src: "172.30.0.5", Dst: "10.220.0.10", SrcPort: 40000, DstPort: 443}, e)
	_, ok = parsePacket([]byte{0x45})
	require.False(t, ok)
	require.True(t, strings.HasPrefix(protoNames[58], "icmp"))
}
