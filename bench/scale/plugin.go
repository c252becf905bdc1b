package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sirupsen/logrus"

	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// pluginRuleAdds times the plugin's whole rule-add path: a real
// plugin.Plugin started on st (written as its state.json), then reps
// AddRules calls as the admin API makes them (parse, clone the state,
// validate, commit: compile + model.Build + state.json written durably,
// publish). The consumers (proxy, BPF, host guard, DNS sidecar) are no-ops
// here: what they cost is measured elsewhere (the snapshot encode and write
// above, bench/bpf), so this is the plugin's own work per rule change.
func pluginRuleAdds(st *fwplugin.State, reps int) ([]float64, error) {
	dir, err := os.MkdirTemp("", "clawker-bench-scale-plugin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// Not joined: nothing to re-identify at Start (the policy is compiled
	// for identified endpoints, joined or not).
	st = st.Clone()
	for _, ep := range st.Endpoints {
		ep.Joined = false
	}
	if err := fwplugin.WriteState(dir, st); err != nil {
		return nil, err
	}
	l := logrus.New()
	l.SetOutput(io.Discard)
	p, err := fwplugin.New(fwplugin.Config{StateDir: dir, Log: logrus.NewEntry(l)}, nopKernel{}, nopHost{}, nopPlane{}, nopDocker{})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("start plugin: %w", err)
	}
	var out []float64
	for i := range reps {
		t0 := time.Now()
		if _, err := p.AddRules(netID, []string{fmt.Sprintf("rta%d.example.net", i)}); err != nil {
			return nil, fmt.Errorf("add rule: %w", err)
		}
		out = append(out, ms(time.Since(t0)))
	}
	return out, nil
}

type nopKernel struct{}

func (nopKernel) Enroll(uint64, fwplugin.Enrollment) error { return nil }
func (nopKernel) Unenroll(uint64) error                    { return nil }
func (nopKernel) SyncRoutes(*model.Model) error            { return nil }
func (nopKernel) ForgetEndpoint(uint32) error              { return nil }
func (nopKernel) ForgetWritten()                           {}

type nopHost struct{}

func (nopHost) AddNetwork(*fwplugin.Network) error                         { return nil }
func (nopHost) RemoveNetwork(*fwplugin.Network) error                      { return nil }
func (nopHost) AddEndpoint(*fwplugin.Network, *fwplugin.Endpoint) error    { return nil }
func (nopHost) RemoveEndpoint(*fwplugin.Network, *fwplugin.Endpoint) error { return nil }
func (nopHost) NetnsPid(*fwplugin.Endpoint) (int, bool, bool, error)       { return 0, false, false, nil }
func (nopHost) NetnsCookie(string) (uint64, error)                         { return 0, nil }
func (nopHost) RemoveOrphans(map[string]bool) ([]string, error)            { return nil, nil }
func (nopHost) SetListenerPorts(fwplugin.ListenerPorts, map[string]fwplugin.ListenerPorts) error {
	return nil
}
func (nopHost) Missing(*fwplugin.Network, []*fwplugin.Endpoint) ([]string, error) { return nil, nil }

type nopPlane struct{}

func (nopPlane) Apply(*policy.Snapshot, *model.Model) error { return nil }

type nopDocker struct{}

func (nopDocker) Container(context.Context, string) (fwplugin.Container, bool, error) {
	return fwplugin.Container{}, false, nil
}
func (nopDocker) Running(context.Context) (map[string]bool, error) { return nil, nil }
func (nopDocker) ImageLabels(context.Context, string) (map[string]string, error) {
	return nil, nil
}
