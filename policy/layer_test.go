package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// layerPool is what random policies draw from: names, wildcards and CIDRs
// that nest in every way Compile distinguishes (an exact name under a
// wildcard, wildcards under wildcards, CIDRs inside CIDRs), on several
// protocols and ports, with path rules.
var layerPool = []string{
	"example.com", ".example.com", "a.example.com", ".a.example.com", "b.a.example.com", ".com",
	"x.test", ".x.test", "y.x.test", "tcp://db.example.com:5432", "ssh://a.example.com:22",
	"tcp://.example.com:7000-7002", "udp://u.x.test:53", "http://a.example.com", "http://.x.test",
	"https://a.example.com:8443", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3",
	"tcp://10.1.0.0/16:22", "192.0.2.0/24",
}

var layerPaths = []string{
	`{"dst":"a.example.com","paths":[{"path":"/v1/","methods":["GET"]}]}`,
	`{"dst":".example.com","paths":[{"path":"/admin/","action":"deny"}],"path_default":"allow"}`,
	`{"dst":"y.x.test","paths":[{"path":"/p/"}]}`,
	`{"dst":".x.test","inspect":true}`,
}

func pick(rng *rand.Rand, from []string, n int) string {
	var out []string
	for range rng.IntN(n + 1) {
		out = append(out, from[rng.IntN(len(from))])
	}
	return strings.Join(out, ",")
}

func dropEmpty(m map[string]string) {
	for k, v := range m {
		if v == "" || v == "[]" {
			delete(m, k)
		}
	}
}

func randomLayers(rng *rand.Rand) (network, label []EgressRule, err error) {
	opts := map[string]string{"clawker.allow": pick(rng, layerPool, 8), "clawker.deny": pick(rng, layerPool, 2)}
	if rng.IntN(2) == 0 {
		opts["clawker.rules"] = "[" + pick(rng, layerPaths, 2) + "]"
	}
	dropEmpty(opts)
	cfg, err := ParseNetworkOptions(opts, "net")
	if err != nil {
		return nil, nil, err
	}
	labels := map[string]string{"clawker.allow": pick(rng, layerPool, 4), "clawker.deny": pick(rng, layerPool, 1)}
	if rng.IntN(3) == 0 {
		labels["clawker.rules"] = "[" + pick(rng, layerPaths, 1) + "]"
	}
	dropEmpty(labels)
	label, err = ParseLabels(labels, "ctr")
	return cfg.Rules, label, err
}

// TestLayerAnswersAsCompile: over random nestings of network and label
// rules, the layered policy (Layer over the network's base) decides every
// name, address and port exactly as Compile of all the rules does, with
// the same entry (identity, ports, paths, inspect, provenance), and its
// Entries are Compile's Allows.
func TestLayerAnswersAsCompile(t *testing.T) {
	names := []string{"example.com", "a.example.com", "b.a.example.com", "c.b.a.example.com", "z.example.com",
		"db.example.com", "x.test", "y.x.test", "u.x.test", "q.y.x.test", "other.org", "com"}
	addrs := []string{"10.0.0.1", "10.1.0.1", "10.1.2.3", "10.1.2.4", "10.2.0.1", "192.0.2.9", "198.51.100.1"}
	ports := []struct {
		port uint16
		l4   L4
	}{{0, L4TCP}, {443, L4TCP}, {80, L4TCP}, {22, L4TCP}, {5432, L4TCP}, {7001, L4TCP}, {8443, L4TCP}, {53, L4UDP}}
	layered := 0
	for seed := range uint64(400) {
		rng := rand.New(rand.NewPCG(seed, 7))
		network, label, err := randomLayers(rng)
		if err != nil {
			continue
		}
		ids := NewIdentityTable()
		merged, err := Compile(CompileInput{Network: network, Label: label}, ids)
		require.NoError(t, err)
		base, err := Compile(CompileInput{Network: network}, ids)
		require.NoError(t, err)
		lay, err := Layer(NewBaseIndex(base), label, 0, ids)
		require.NoError(t, err)
		layered++
		ctx := fmt.Sprintf("seed %d\nnetwork %v\nlabel %v", seed, network, label)

		var entries []Allowed
		for a := range lay.Entries() {
			entries = append(entries, *a)
		}
		require.Equal(t, merged.Allows, slices.Clip(append([]Allowed{}, entries...)), ctx)

		same := func(what string, want, got Match) {
			require.Equal(t, want.Allowed, got.Allowed, "%s allowed\n%s", what, ctx)
			require.Equal(t, want.Reason, got.Reason, "%s reason\n%s", what, ctx)
			require.Equal(t, want.Entry, got.Entry, "%s entry\n%s", what, ctx)
			if want.Deny != nil {
				require.NotNil(t, got.Deny, "%s deny\n%s", what, ctx)
			}
		}
		for _, pt := range ports {
			for _, n := range names {
				same(fmt.Sprintf("%s:%d/%d", n, pt.port, pt.l4), merged.MatchName(n, pt.port, pt.l4), lay.MatchName(n, pt.port, pt.l4))
			}
			for _, s := range addrs {
				a := netip.MustParseAddr(s)
				same(fmt.Sprintf("%s:%d/%d", s, pt.port, pt.l4), merged.MatchIP(a, pt.port, pt.l4), lay.MatchIP(a, pt.port, pt.l4))
				require.Equal(t, merged.DeniedAddr(a) != nil, lay.DeniedAddr(a) != nil, "%s denied\n%s", s, ctx)
			}
		}
	}
	require.Greater(t, layered, 200, "too few random policies parsed")
}
