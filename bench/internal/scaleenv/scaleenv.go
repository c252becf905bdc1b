// Package scaleenv builds what the scale benchmarks (bench/scale,
// bench/effective) run on bench/scalegen's rules: the plugin state of one
// network and n identified endpoints, the stand-ins the clawker CoreDNS
// plugin needs in-process, and the helpers their side-by-side reports
// share. (bench/scalegen stays free of the plugin: policy's tests use it.)
package scaleenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/scalegen"
	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/policy"
)

// Net is where the generated network lives.
type Net struct {
	ID      string
	Bridge  string
	Subnet  netip.Prefix
	Gateway netip.Addr
}

// ContainerID is endpoint i's container id.
func ContainerID(i int) string { return fmt.Sprintf("c%06d", i) }

// EndpointIP is endpoint i's address: the i-th after the gateway.
func (nw Net) EndpointIP(i int) netip.Addr {
	ip := nw.Gateway
	for range i {
		ip = ip.Next()
	}
	return ip
}

// State is the plugin's persisted state with network nw of about rules
// network rules and n joined, identified endpoints (indexes 1..n), each
// with its label rules. It returns the names the network allows.
func State(nw Net, rules, n int) (*fwplugin.State, []string, error) {
	opts, names := scalegen.NetworkOptionsN(rules)
	cfg, err := policy.ParseNetworkOptions(opts, nw.ID)
	if err != nil {
		return nil, nil, fmt.Errorf("network options: %w", err)
	}
	if rules == scalegen.Rules && len(cfg.Rules) != scalegen.Rules {
		return nil, nil, fmt.Errorf("generated %d network rules, want %d", len(cfg.Rules), scalegen.Rules)
	}
	st := fwplugin.NewState()
	st.Networks[nw.ID] = &fwplugin.Network{ID: nw.ID, Options: opts, Config: cfg, Bridge: nw.Bridge,
		Subnet: nw.Subnet, Gateway: nw.Gateway}
	for i := 1; i <= n; i++ {
		cid := ContainerID(i)
		lr, err := policy.ParseLabels(scalegen.Labels(i), cid)
		if err != nil {
			return nil, nil, fmt.Errorf("labels: %w", err)
		}
		id := fmt.Sprintf("ep%06d", i)
		st.Endpoints[id] = &fwplugin.Endpoint{ID: id, NetworkID: nw.ID, Index: uint32(i), IP: nw.EndpointIP(i),
			Joined: true, ContainerID: cid, ContainerName: fmt.Sprintf("agent%d", i), LabelRules: lr}
		st.NextIndex = uint32(i + 1)
	}
	return st, names, nil
}

// Answer is a DNS upstream for the clawker plugin's Next: one A record
// (192.0.2.10) for any name.
func Answer(_ context.Context, w mdns.ResponseWriter, r *mdns.Msg) (int, error) {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300},
		A: netip.MustParseAddr("192.0.2.10").AsSlice()}}
	return mdns.RcodeSuccess, w.WriteMsg(m)
}

// NopLearner is a dns.Learner that records nothing.
type NopLearner struct{}

// Learn implements dns.Learner.
func (NopLearner) Learn(uint32, netip.Addr, policy.Identity, time.Duration) (int, error) {
	return 0, nil
}

// Quiet is a dns.Logger that drops everything.
type Quiet struct{}

func (Quiet) Info(...any)             {}
func (Quiet) Warning(...any)          {}
func (Quiet) Error(...any)            {}
func (Quiet) Debugf(string, ...any)   {}
func (Quiet) Infof(string, ...any)    {}
func (Quiet) Warningf(string, ...any) {}
func (Quiet) Errorf(string, ...any)   {}

// Check marks a target met or not in a report.
func Check(ok bool, target string) string {
	if ok {
		return target + ": met"
	}
	return target + ": NOT met"
}

// Ratio is a/b, 0 when b is 0.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Child runs this executable again with args (one endpoint count in a
// process of its own, so heap and RSS are its own) and decodes the JSON it
// prints into out; its stderr is this process's.
func Child(out any, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}
