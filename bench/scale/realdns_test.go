package main

import (
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/internal/sidecar"
)

// TestRealDNSSmoke runs the real-sidecar DNS row on a small state: the
// real clawker-coredns answers allowed queries from every endpoint's own
// loopback address, and identifies the endpoint by it (an endpoint's
// label name is allowed from its address only).
func TestRealDNSSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds clawker-coredns")
	}
	bin, err := sidecar.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	up, err := fakeUpstream()
	if err != nil {
		t.Fatal(err)
	}
	defer up.Shutdown()
	a, err := startRealArm(bin, t.TempDir(), up.PacketConn.LocalAddr().String(), 200, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	if err := a.ask(1, "e2.agent.test.", mdns.RcodeSuccess, nil); err != nil {
		t.Errorf("endpoint 2's label name from its address: %v", err)
	}
	if err := a.ask(0, "e2.agent.test.", mdns.RcodeNameError, nil); err != nil {
		t.Errorf("endpoint 2's label name from endpoint 1's address: %v", err)
	}

	r, err := realDNS(bin, 200, 3, 2, 30, 2, 200*time.Millisecond, true)
	if err != nil {
		t.Fatal(err)
	}
	if r.Allowed != r.Asked || r.Asked != 4*2*30 {
		t.Errorf("%d of %d queries allowed, want all of %d", r.Allowed, r.Asked, 4*2*30)
	}
	for i, n := range []int{1, 3, 1, 1} {
		if r.Endpoints[i] != n || r.Sockets[i] != []int{1, 3, 1, 3}[i] || r.P50US[i] <= 0 || r.P99US[i] < r.P50US[i] || r.QPS[i] <= 0 || len(r.RoundP50s[i]) != 2 {
			t.Errorf("arm %d: endpoints %d, p50 %.1f µs, p99 %.1f µs, qps %.0f, rounds %d", i, r.Endpoints[i], r.P50US[i], r.P99US[i], r.QPS[i], len(r.RoundP50s[i]))
		}
	}
	t.Logf("\n%s%s", realMethod(r), realRows(r))
}
