package builtin

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
	"github.com/clawker-fw/clawker-fw/proxy/verdict/verdicttest"
)

// loopbackOf maps the table's endpoint addresses to loopback sources the
// test can bind.
func loopbackOf(a netip.Addr) netip.Addr {
	b := a.As4()
	return netip.AddrFrom4([4]byte{127, 0, 9, b[3]})
}

// TestVerdictTable runs the shared verdict table (proxy/verdict/verdicttest)
// through the engine on real connections: for every row of a web or
// dedicated listener, the connection (or request) from the row's endpoint
// is decided as the row says, with the decision's reason and mode (or, for
// an allowed request, the upstream's answer). Rows of the transparent
// listener need a redirect (SO_ORIGINAL_DST) and are decided by the same
// verdict.Decide in proxy/verdict's test; ECH rows are TestECH*'s, a row
// whose dedicated listener no endpoint's rules create cannot be reached.
func TestVerdictTable(t *testing.T) {
	table, err := verdicttest.Snapshot()
	require.NoError(t, err)
	snap := &policy.Snapshot{Generation: table.Generation, Networks: table.Networks, Endpoints: map[uint32]*policy.Endpoint{}}
	for idx, ep := range table.Endpoints {
		cp := *ep
		cp.IP = loopbackOf(ep.IP)
		if !cp.BypassUntil.IsZero() {
			cp.BypassUntil = time.Now().Add(time.Hour) // the engine's clock is the real one
		}
		snap.Endpoints[idx] = &cp
	}
	snap.Index()

	h := newHarness(t, func(c *Config) { c.PendingWait = 100 * time.Millisecond })
	for _, name := range []string{"api.example.test", "npm.example.test", "x.npm.example.test", "a.b.npm.example.test",
		"alt.example.test", "plain.example.test", "git.example.test", "inspect.example.test", "foo.example.test", "example.test",
		"bad.npm.example.test", "anything.org", "ssh.example.test", "db.example.test", "ntp.example.test"} {
		h.dns.set(name, "127.0.0.1")
	}
	h.mapPort(80, newPlainUpstream(t, "127.0.0.1"))
	h.apply(snap)

	for _, row := range verdicttest.Rows() {
		fl := row.Flow
		src := loopbackOf(row.Src).String()
		switch {
		case fl.Listener == verdict.Transparent:
			continue
		case fl.ECH != 0:
			continue
		case fl.Listener == verdict.Dedicated:
			if _, ok := h.listenerByKey(dedicatedKey(fl)); !ok {
				continue
			}
		}
		t.Run(row.Name, func(t *testing.T) {
			start := time.Now()
			var got verdicttest.Want
			switch {
			case fl.Listener == verdict.Dedicated:
				got = h.rowDedicated(t, src, fl, start)
			case fl.Content == verdict.TLS:
				got = h.rowTLS(t, src, fl, start)
			default:
				got = h.rowRequest(t, src, fl, start)
			}
			require.Equal(t, row.Want, got)
		})
	}
}

func dedicatedKey(fl verdict.Flow) string { return model.DedicatedKey(fl.Proto, fl.Name, fl.Port) }

// decisionAfter waits for the connection decision of a flow from src that
// started at start.
func (h *harness) decisionAfter(t *testing.T, src string, start time.Time, request bool) verdicttest.Want {
	t.Helper()
	d := h.waitDecision(func(d Decision) bool {
		return d.Source.String() == src && !d.Time.Before(start) && (d.Method != "") == request
	})
	if !d.Allowed {
		require.NotEmpty(t, d.Fix, "every denial has its fix")
		return verdicttest.Want{Reason: d.Reason}
	}
	return verdicttest.Want{Allowed: true, Mode: verdict.Mode(d.Mode), Reason: d.Reason}
}

func (h *harness) rowDedicated(t *testing.T, src string, fl verdict.Flow, start time.Time) verdicttest.Want {
	addr := h.dedicatedAddr(fl.Proto, fl.Name, fl.Port)
	if fl.Proto == policy.ProtoUDP {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("ping"))
		require.NoError(t, err)
	} else {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		if c, err := d.Dial("tcp4", addr); err == nil { // a reset can beat connect(2)'s own completion
			defer c.Close()
		}
	}
	return h.decisionAfter(t, src, start, false)
}

func (h *harness) rowTLS(t *testing.T, src string, fl verdict.Flow, start time.Time) verdicttest.Want {
	if fl.Name == "" { // crypto/tls sends no SNI only to a client that skips verification
		c := tls.Client(dialFrom(t, src, h.webAddr(fl.Port)), &tls.Config{InsecureSkipVerify: true})
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = c.Handshake()
		c.Close()
		return h.decisionAfter(t, src, start, false)
	}
	c, err := h.tlsFrom(src, h.webAddr(fl.Port), fl.Name)
	if err == nil {
		c.Close()
	}
	return h.decisionAfter(t, src, start, false)
}

// rowRequest sends one request (plain, or inside TLS to the request's
// server name) and reads the answer: a 403 carries the denial (the same
// body for plain and inspected requests), a 200 the upstream's answer.
func (h *harness) rowRequest(t *testing.T, src string, fl verdict.Flow, start time.Time) verdicttest.Want {
	req := fl.Request
	var c net.Conn = dialFrom(t, src, h.webAddr(fl.Port))
	if req.TLSName != "" {
		tc, err := h.tlsFrom(src, h.webAddr(fl.Port), req.TLSName)
		require.NoError(t, err)
		c.Close()
		c = tc
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	method := req.Method
	line := fmt.Sprintf("%s %s HTTP/1.1", method, req.Path)
	if req.Tunnel != "" {
		method = "CONNECT"
		line = fmt.Sprintf("CONNECT %s:%d HTTP/1.1", req.Host, fl.Port)
	}
	_, err := fmt.Fprintf(c, "%s\r\nHost: %s\r\nConnection: close\r\n\r\n", line, req.Host)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		mode := verdict.ModeHTTP
		if req.TLSName != "" {
			mode = verdict.ModeInspect
		}
		reason := policy.ReasonAllowed
		if loopbackOf(verdicttest.Bypass).String() == src {
			reason = policy.ReasonBypass
		}
		return verdicttest.Want{Allowed: true, Mode: mode, Reason: reason}
	}
	require.Equal(t, http.StatusForbidden, resp.StatusCode, body)
	w := h.decisionAfter(t, src, start, true)
	require.True(t, strings.HasPrefix(body, "clawker-fw denied "+method+" "), body)
	require.Contains(t, body, ": "+string(w.Reason)+"\n")
	require.Contains(t, resp.Header.Get("X-Clawker-Denied"), "("+string(w.Reason)+"); ")
	return w
}
