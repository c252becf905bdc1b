package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLayeredMatchesMerged: a layered policy (the network's rules compiled
// alone as Base, the labels compiled alone on top) answers every name and
// address as the policy compiled from both does: allowed or not, why, under
// which identity, which deny. Overlaps are the point: label allows inside
// and around network allows, denies of each layer over allows of the other,
// equal patterns in both layers, ports that only one layer's enclosing
// allow opens.
func TestLayeredMatchesMerged(t *testing.T) {
	network := map[string]string{
		"clawker.allow": ".example.com,api.example.com,tcp://db.example.com:5432,.svc.example.com," +
			"shared.test,.wide.test,10.0.0.0/8,10.1.2.0/24,http://plain.example.net,tcp://git.label.test:2222",
		"clawker.deny":  "bad.example.com,.evil.wide.test,10.9.0.0/16",
		"clawker.rules": `[{"dst":"paths.example.com","paths":[{"path":"/v1/"}]}]`,
	}
	labels := map[string]string{
		"clawker.allow": "x.api.example.com,.label.test,shared.test,.deep.svc.example.com,https://example.com:8443," +
			"ok.bad.example.com,sub.evil.wide.test,10.1.0.0/16,10.9.1.0/24,.wide.test,tcp://api.example.com:9000",
		"clawker.deny": "svc.example.com,10.1.2.128/25,secret.label.test",
	}
	ids := NewIdentityTable()
	net, lab := mustOptions(t, network), mustLabels(t, labels)
	merged := mustCompile(t, CompileInput{Network: net, Label: lab}, ids)
	base := mustCompile(t, CompileInput{Network: net}, ids)
	own := mustCompile(t, CompileInput{Label: lab}, ids)
	layered := &Policy{Allows: own.Allows, Denies: own.Denies, Base: base}

	names := []string{"example.com", "api.example.com", "x.api.example.com", "y.x.api.example.com", "db.example.com",
		"svc.example.com", "a.svc.example.com", "deep.svc.example.com", "q.deep.svc.example.com", "shared.test",
		"wide.test", "a.wide.test", "evil.wide.test", "sub.evil.wide.test", "label.test", "git.label.test",
		"secret.label.test", "bad.example.com", "ok.bad.example.com", "plain.example.net", "paths.example.com",
		"nothing.test", "API.Example.COM.", "other.org"}
	ports := []struct {
		port uint16
		l4   L4
	}{{0, 0}, {443, L4TCP}, {8443, L4TCP}, {80, L4TCP}, {5432, L4TCP}, {2222, L4TCP}, {9000, L4TCP}, {53, L4UDP}}
	same := func(what string, want, got Match) {
		t.Helper()
		require.Equal(t, want.Allowed, got.Allowed, what)
		require.Equal(t, want.Reason, got.Reason, what)
		require.Equal(t, want.Entry == nil, got.Entry == nil, what)
		if want.Entry != nil {
			require.Equal(t, want.Entry.Identity, got.Entry.Identity, what)
			require.Equal(t, want.Entry.Pattern, got.Entry.Pattern, what)
		}
		require.Equal(t, want.Deny == nil, got.Deny == nil, what)
		if want.Deny != nil {
			require.Equal(t, want.Deny.Pattern, got.Deny.Pattern, what)
		}
	}
	allowed := 0
	for _, name := range names {
		for _, p := range ports {
			what := fmt.Sprintf("%s port %d/%d", name, p.port, p.l4)
			m := merged.MatchName(name, p.port, p.l4)
			same(what, m, layered.MatchName(name, p.port, p.l4))
			if m.Allowed {
				allowed++
			}
		}
	}
	require.Greater(t, allowed, 20, "the cases must allow some")
	for _, a := range []string{"10.0.0.1", "10.1.2.3", "10.1.2.200", "10.1.9.9", "10.9.0.1", "10.9.1.1", "11.0.0.1"} {
		addr := netip.MustParseAddr(a)
		for _, p := range ports {
			what := fmt.Sprintf("%s port %d/%d", a, p.port, p.l4)
			same(what, merged.MatchIP(addr, p.port, p.l4), layered.MatchIP(addr, p.port, p.l4))
		}
		want, got := merged.DeniedAddr(addr), layered.DeniedAddr(addr)
		require.Equal(t, want == nil, got == nil, a)
		if want != nil {
			require.Equal(t, want.Pattern, got.Pattern, a)
		}
	}
}
