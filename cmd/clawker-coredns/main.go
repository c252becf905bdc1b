// Command clawker-coredns is CoreDNS with only the plugins clawker-fw needs,
// run by the plugin process as a supervised sidecar. Its Corefile is
// rendered by dns.Corefile.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/clawker-fw/clawker-fw/dns"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the execution order. There is deliberately no cache: a cache
// ahead of clawker would serve one endpoint's answers to another, and one
// after it would skip the learned-map writes. forward sits after clawker: it
// serves `upstream next` and Corefiles without the clawker plugin (benchmarks).
var directives = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"clawker",
	"forward",
}

func init() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		panic(err)
	}
}

func main() { coremain.Run() }
