package wire

import (
	"fmt"
	"time"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
	"github.com/clawker-fw/clawker-fw/plugin/supervisor"
)

// parts are the pieces of the running plugin whose health `clawker-fw
// status` shows.
type parts struct {
	coredns, envoy *supervisor.Process // envoy is nil with the builtin engine
	mgr            *bpf.Manager
	decisions      *decisionlog.Hub
	p              *plugin.Plugin
	az             *authz.Authz
}

// components assembles the status of each part.
func (c parts) components() []plugin.Component {
	st := c.coredns.Status()
	dnsC := plugin.Component{Name: "dns", Healthy: st.Healthy, Restarts: st.Restarts, Detail: fmt.Sprintf("pid %d", st.PID)}
	if !st.Healthy {
		dnsC.Detail = st.LastError
	}
	comps := []plugin.Component{dnsC, {Name: "proxy", Healthy: true, Detail: "builtin"}, {Name: "bpf", Healthy: true, Detail: c.mgr.CgroupPath()}}
	if c.envoy != nil {
		st := c.envoy.Status()
		comps = append(comps, plugin.Component{Name: "envoy", Healthy: st.Healthy, Restarts: st.Restarts, Detail: st.LastError})
	}
	comps = append(comps, plugin.Component{Name: "log-limit", Healthy: true, Detail: c.decisions.LimitSummary()})
	hg := c.p.HostGuard()
	comps = append(comps, plugin.Component{Name: "host-guard", Healthy: hg.Err == "", Detail: hg.Summary(time.Now())})
	return append(comps, plugin.Component{Name: "authz", Healthy: true, Detail: c.az.Stats().Summary()})
}
