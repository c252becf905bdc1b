package plugin

import (
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/plugin/queue"
)

// NetworkStatus is one network in Status (api.NetworkStatus).
type NetworkStatus = api.NetworkStatus

// EPInfo is one endpoint in Status (api.EPInfo).
type EPInfo = api.EPInfo

// Networks reports networks and endpoints (read through the queue).
func (p *Plugin) Networks() ([]NetworkStatus, uint64, error) {
	var out []NetworkStatus
	var gen uint64
	m := p.Model()
	err := p.q.Do(p.ctx, queue.KindRead, func() error {
		gen = p.lastGeneration()
		for _, n := range p.sortedNetworks() {
			ns := NetworkStatus{ID: n.ID, Name: p.NetworkName(n.ID), Bridge: n.Bridge, Subnet: n.Subnet.String(), Gateway: n.Gateway.String(),
				Rules: len(n.Config.Rules), Runtime: len(n.Runtime)}
			for _, ep := range p.st.endpointsOf(n.ID) {
				info := EPInfo{Index: ep.Index, IP: ep.IP.String(), Container: ep.ContainerName, Enrolled: ep.NetnsCookie != 0,
					Pending: ep.Joined && !ep.Identified(), LabelRules: len(ep.LabelRules), LabelError: ep.LabelError}
				if !ep.BypassUntil.IsZero() {
					info.BypassUntil = ep.BypassUntil.Format(time.RFC3339)
					info.Learning = ep.Learn
				}
				if m != nil {
					for _, f := range m.Failures[ep.Index] {
						info.Failures = append(info.Failures, f.String())
					}
				}
				for _, l := range ep.IgnoredLabels {
					info.IgnoredLabels = append(info.IgnoredLabels, l.String())
				}
				ns.Endpoints = append(ns.Endpoints, info)
			}
			out = append(out, ns)
		}
		return nil
	})
	return out, gen, err
}
