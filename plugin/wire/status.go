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
	splice         string // how decided flows are relayed (spliceDetail)
}

// spliceDetail says how the proxy relays decided passthrough and tcp flows
// (status, the proxy's line): the kernel splice as set, or why not.
func spliceDetail(s Settings, available bool) string {
	switch {
	case !s.KernelSplice:
		return "kernel splice off (CLAWKER_PROXY_KERNEL_SPLICE=false): flows relayed with splice(2)"
	case !available:
		return "kernel splice unavailable on this kernel (no sockmap): flows relayed with splice(2)"
	}
	what := "kernel splice"
	if !s.KernelSpliceUpload {
		what += " of downloads"
	}
	if s.KernelSpliceAfter == 0 {
		return what + " at once"
	}
	return fmt.Sprintf("%s after %d bytes through the proxy", what, s.KernelSpliceAfter)
}

// components assembles the status of each part.
func (c parts) components() []plugin.Component {
	st := c.coredns.Status()
	dnsC := plugin.Component{Name: "dns", Healthy: st.Healthy, Restarts: st.Restarts, Detail: fmt.Sprintf("pid %d", st.PID)}
	if !st.Healthy {
		dnsC.Detail = st.LastError
	}
	comps := []plugin.Component{dnsC, {Name: "proxy", Healthy: true, Detail: "builtin; " + c.splice}, {Name: "bpf", Healthy: true, Detail: c.mgr.CgroupPath()}}
	if c.envoy != nil {
		st := c.envoy.Status()
		comps = append(comps, plugin.Component{Name: "envoy", Healthy: st.Healthy, Restarts: st.Restarts, Detail: st.LastError})
	}
	comps = append(comps, plugin.Component{Name: "log-limit", Healthy: true, Detail: c.decisions.LimitSummary()})
	hg := c.p.HostGuard()
	comps = append(comps, plugin.Component{Name: "host-guard", Healthy: hg.Err == "", Detail: hg.Summary(time.Now())})
	return append(comps, plugin.Component{Name: "authz", Healthy: true, Detail: c.az.Stats().Summary()})
}
