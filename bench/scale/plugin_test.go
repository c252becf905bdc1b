package main

import (
	"net/netip"
	"testing"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
)

// TestPluginRuleAddsSmoke runs the plugin row's measurement on a small
// state: the plugin starts from the state directory the benchmark writes
// (as the plugin itself lays it out) and takes runtime rules.
func TestPluginRuleAddsSmoke(t *testing.T) {
	st, _, err := scaleenv.State(scaleenv.Net{ID: netID, Bridge: "clawker-scale",
		Subnet: netip.MustParsePrefix("10.200.0.0/22"), Gateway: netip.MustParseAddr("10.200.0.1")}, 200, 3)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pluginRuleAdds(st, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("%d measurements, want 2", len(out))
	}
}
