package builtin

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// stream is one long-lived TLS echo stream through the proxy.
type stream struct {
	name   string
	tc     *tls.Conn
	br     *bufio.Reader
	closed atomic.Int64 // unix nanos when the client saw it end, 0 while alive
	pings  atomic.Int64
	err    atomic.Value
}

func (s *stream) run(stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		msg := fmt.Sprintf("ping %d\n", i)
		_ = s.tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(s.tc, msg); err != nil {
			s.end(err)
			return
		}
		line, err := s.br.ReadString('\n')
		if err != nil {
			s.end(err)
			return
		}
		if line != msg {
			s.end(fmt.Errorf("echo mismatch: %q != %q", line, msg))
			return
		}
		s.pings.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *stream) end(err error) {
	s.closed.CompareAndSwap(0, time.Now().UnixNano())
	s.err.Store(err)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestHotReload keeps 200 long-lived streams open through the proxy while
// 100 policy changes are applied: unrelated rules churn, web listeners for
// new ports open and close, and at change 50 one destination is removed.
// No stream the changes did not deny may drop; every stream to the removed
// destination must be closed.
func TestHotReload(t *testing.T) {
	h := newHarness(t)
	const nKeep, nDoomed, nChanges = 150, 50, 100
	srcs := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	for _, n := range []string{"keep.example.test", "doomed.example.test"} {
		h.dns.set(n, "127.0.0.1")
	}
	for i := 0; i < nChanges; i++ {
		h.dns.set(fmt.Sprintf("churn%d.example.test", i), "127.0.0.1")
	}
	build := func(gen uint64, change int, doomed bool) *policy.Snapshot {
		var eps []*policy.Endpoint
		for i, src := range srcs {
			pol := &policy.Policy{Allows: []policy.Allowed{allow("keep.example.test", policy.ProtoHTTPS, 443, 443)}}
			if doomed {
				pol.Allows = append(pol.Allows, allow("doomed.example.test", policy.ProtoHTTPS, 443, 443))
			}
			if change >= 0 {
				// This change's churn rule, on 443 and on a port of its own
				// (a web listener that exists for this generation only).
				pol.Allows = append(pol.Allows, allow(fmt.Sprintf("churn%d.example.test", change), policy.ProtoHTTPS, 443, 443,
					withPorts(policy.ProtoHTTPS, uint16(9000+change%10), uint16(9000+change%10))))
			}
			eps = append(eps, endpoint(uint32(i+1), src, pol))
		}
		return snapshot(gen, eps...)
	}
	h.apply(build(1, -1, true))
	addr := h.webAddr(443)

	var streams []*stream
	open := func(src, name string) *stream {
		tc, err := h.tlsFrom(src, addr, name)
		require.NoError(t, err)
		_, err = io.WriteString(tc, "ECHO\n")
		require.NoError(t, err)
		return &stream{name: name, tc: tc, br: bufio.NewReader(tc)}
	}
	for i := 0; i < nKeep; i++ {
		streams = append(streams, open(srcs[i%len(srcs)], "keep.example.test"))
	}
	for i := 0; i < nDoomed; i++ {
		streams = append(streams, open(srcs[i%len(srcs)], "doomed.example.test"))
	}
	t.Cleanup(func() {
		for _, s := range streams {
			s.tc.Close()
		}
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Add(1)
		go s.run(stop, &wg)
	}
	time.Sleep(200 * time.Millisecond)

	var applyDur, effective, decided []time.Duration
	var doomedAt time.Time
	for c := 0; c < nChanges; c++ {
		snap := build(uint64(c+2), c, c < nChanges/2)
		m, err := modelBuild(snap, h)
		require.NoError(t, err)
		start := time.Now()
		require.NoError(t, h.e.Apply(snap, m))
		applied := time.Now()
		applyDur = append(applyDur, applied.Sub(start))
		if applied.Sub(start) > 20*time.Millisecond {
			t.Logf("slow Apply: change %d took %v", c, applied.Sub(start))
		}
		if c == nChanges/2 {
			doomedAt = start
		}
		// Change-to-effective: a new connection to this change's name on
		// the port that only this generation has.
		h.model = m
		tc, err := h.tlsFrom(srcs[c%len(srcs)], h.webAddr(uint16(9000+c%10)), fmt.Sprintf("churn%d.example.test", c))
		require.NoError(t, err, "change %d not effective", c)
		effective = append(effective, time.Since(start))
		name := fmt.Sprintf("churn%d.example.test", c)
		d := h.waitDecision(func(d Decision) bool { return d.Allowed && d.Name == name })
		decided = append(decided, d.Time.Sub(start))
		tc.Close()
		if c > 0 {
			// The previous change's name is denied again at once.
			_, err := h.tlsFrom(srcs[c%len(srcs)], addr, fmt.Sprintf("churn%d.example.test", c-1))
			require.Error(t, err, "change %d: previous churn rule still allowed", c)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Let the streams run a little more after the last change.
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	var dropped []string
	var closeLat []time.Duration
	for _, s := range streams {
		switch s.name {
		case "keep.example.test":
			if at := s.closed.Load(); at != 0 {
				dropped = append(dropped, fmt.Sprint(s.err.Load()))
			}
		case "doomed.example.test":
			at := s.closed.Load()
			require.NotZero(t, at, "stream to the removed destination is still open")
			closeLat = append(closeLat, time.Unix(0, at).Sub(doomedAt))
		}
	}
	require.Empty(t, dropped, "streams dropped that no change denied")
	var pings int64
	for _, s := range streams {
		pings += s.pings.Load()
	}
	t.Logf("hot reload: %d streams, %d changes, %d echoes, 0 dropped", len(streams), nChanges, pings)
	t.Logf("Apply duration: p50 %v p99 %v max %v", percentile(applyDur, .5), percentile(applyDur, .99), percentile(applyDur, 1))
	t.Logf("change-to-effective (Apply start -> new TLS handshake through the new listener done): p50 %v p99 %v max %v",
		percentile(effective, .5), percentile(effective, .99), percentile(effective, 1))
	t.Logf("change-to-decision (Apply start -> the proxy allowed a flow of the new rule, dial included): p50 %v p99 %v max %v",
		percentile(decided, .5), percentile(decided, .99), percentile(decided, 1))
	t.Logf("removed destination: %d streams closed, client saw the close p50 %v max %v after Apply", len(closeLat), percentile(closeLat, .5), percentile(closeLat, 1))

	// Listeners of the churn ports that the last model lacks are gone.
	require.Equal(t, len(h.model.Listeners), h.e.Health().Listeners)
	closedLines := 0
	for _, en := range h.hook.AllEntries() {
		if en.Data[fieldClosedBy] == "policy change" && strings.HasPrefix(fmt.Sprint(en.Data[fieldName]), "doomed") {
			closedLines++
		}
	}
	require.Equal(t, nDoomed, closedLines)
}
