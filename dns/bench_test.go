package dns

import (
	"context"
	"testing"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"
)

// BenchmarkServeDNS measures the handler alone (fake upstream on loopback,
// fake learner); bench/dns measures the real sidecar.
func BenchmarkServeDNS(b *testing.B) {
	for _, tc := range []struct{ name, qname string }{{"allowed", "api.example.test."}, {"denied", "evil.example.test."}} {
		b.Run(tc.name, func(b *testing.B) {
			f := newFixture(b)
			f.h.Log = discardLog{}
			r := new(mdns.Msg)
			r.SetQuestion(tc.qname, mdns.TypeA)
			b.ReportAllocs()
			for b.Loop() {
				w := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: ep1IP})
				f.h.ServeDNS(context.Background(), w, r)
				f.learner.Reset()
			}
		})
	}
}

type discardLog struct{}

func (discardLog) Info(...any)             {}
func (discardLog) Warning(...any)          {}
func (discardLog) Error(...any)            {}
func (discardLog) Debugf(string, ...any)   {}
func (discardLog) Infof(string, ...any)    {}
func (discardLog) Warningf(string, ...any) {}
func (discardLog) Errorf(string, ...any)   {}
