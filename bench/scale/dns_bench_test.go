package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"
	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/bench/internal/scaleenv"
	clawkerdns "github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/policy"
)

// dnsSide is the sidecar side of the scale benchmark's DNS row: the store
// a Watcher loaded from the files the plugin writes, for n endpoints.
type dnsSide struct {
	store *clawkerdns.Store
	snap  *policy.Snapshot
	names []string
	ips   []string
}

func loadDNSSide(tb testing.TB, n int) *dnsSide {
	tb.Helper()
	st, names, err := buildState(n)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	sw := &clawkerdns.SnapshotWriter{Path: filepath.Join(dir, "dns", "snapshot")}
	c, err := commitOnce(st, fwplugin.NewCompiler(), 1, filepath.Join(dir, "snapshot.json"), sw)
	if err != nil {
		tb.Fatal(err)
	}
	s := &dnsSide{store: clawkerdns.NewStore(), snap: c.snap, names: names}
	clawkerdns.NewWatcher(sw.Path, time.Hour, s.store, scaleenv.Quiet{}).Poll()
	if _, ok := s.store.Generation(); !ok {
		tb.Fatal("sidecar loaded no snapshot")
	}
	for i := range n {
		s.ips = append(s.ips, c.snap.Endpoints[uint32(i+1)].IP.String())
	}
	return s
}

func handler(store *clawkerdns.Store) *clawkerdns.Clawker {
	c := clawkerdns.New(store, scaleenv.NopLearner{})
	c.UseNext = true
	c.Next = plugin.HandlerFunc(scaleenv.Answer)
	c.Decisions = func(decisionlog.Record) {}
	return c
}

// copyStore is a store of the 1-endpoint side whose endpoint (its struct,
// label layer and strings) is a copy in memory of its own; the network
// and its base policy are shared, as in one snapshot of many endpoints.
func copyStore(s *dnsSide) *clawkerdns.Store {
	snap, _ := s.store.Load()
	ep := *snap.Endpoints[1]
	ep.ID, ep.NetworkID, ep.MAC = strings.Clone(ep.ID), strings.Clone(ep.NetworkID), strings.Clone(ep.MAC)
	ep.ContainerID, ep.ContainerName = strings.Clone(ep.ContainerID), strings.Clone(ep.ContainerName)
	cp := func(p *policy.Policy) *policy.Policy {
		q := &policy.Policy{Generation: p.Generation, InspectAll: p.InspectAll, Allows: slices.Clone(p.Allows), Denies: slices.Clone(p.Denies)}
		for i := range q.Allows {
			q.Allows[i].Pattern = strings.Clone(q.Allows[i].Pattern)
		}
		for i := range q.Denies {
			q.Denies[i].Pattern = strings.Clone(q.Denies[i].Pattern)
		}
		return q
	}
	base, own := ep.Policy.Layers()
	ep.Labels = cp(own)
	l := *ep.Labels
	l.Base = base
	ep.Policy = l.Indexed()
	st := clawkerdns.NewStore()
	st.Publish(&policy.Snapshot{Generation: snap.Generation, Networks: snap.Networks, Endpoints: map[uint32]*policy.Endpoint{1: &ep}})
	return st
}

var dnsVariants = flag.String("dnsvariants", ",/udpaddr,/udpaddr/warm",
	"BenchmarkDNSAllowedScale: comma-separated variants of each arm (see its comment)")

// BenchmarkDNSAllowedScale is the scale benchmark's DNS row as a Go
// benchmark, for profiles and for finding what its 500/1 ratio measures:
// queries of the network's names (every 10th a label name of the asking
// endpoint) through the clawker plugin's ServeDNS, one at a time, each
// timed; p50-ns is their median. Arms:
//   - endpoints=N: N endpoints, each query from the next one (the row);
//   - endpoints=500/one-source: 500 endpoints, every query from the first;
//   - copies=500: the 1-endpoint snapshot in 500 stores, each with its own
//     copy of the endpoint (struct, label layer, strings; one shared base),
//     each query to the next store: the 1-endpoint work, with the
//     500-endpoint row's rotation through per-endpoint memory.
//
// Variants (-dnsvariants): "" is the row's harness (test.ResponseWriter,
// which parses its RemoteIP string on each of the three RemoteAddr calls
// of a query); /udpaddr answers RemoteAddr with a kept *net.UDPAddr, as
// the server's writer does; /warm also asks, untimed, an AAAA query from
// the same endpoint just before each timed one (its data in cache);
// /warm-who, /warm-policy and /warm-own only read, untimed, its Who, its
// policy's struct, and its own layer's entries. bench/results/scale.txt
// (notes) has runs.
func BenchmarkDNSAllowedScale(b *testing.B) {
	one := loadDNSSide(b, 1)
	many := loadDNSSide(b, 500)
	type arm struct {
		name     string
		side     *dnsSide
		handlers []*clawkerdns.Clawker
		src      func(i int) string
		label    func(i int) int
	}
	copies := make([]*clawkerdns.Clawker, 500)
	for i := range copies {
		copies[i] = handler(copyStore(one))
	}
	arms := []arm{
		{"endpoints=1", one, []*clawkerdns.Clawker{handler(one.store)}, func(int) string { return one.ips[0] }, func(int) int { return 1 }},
		{"endpoints=500", many, []*clawkerdns.Clawker{handler(many.store)}, func(i int) string { return many.ips[i%500] }, func(i int) int { return i%500 + 1 }},
		{"endpoints=500/one-source", many, []*clawkerdns.Clawker{handler(many.store)}, func(int) string { return many.ips[0] }, func(int) int { return 1 }},
		{"copies=500", one, copies, func(int) string { return one.ips[0] }, func(int) int { return 1 }},
	}
	for _, a := range arms {
		for _, v := range strings.Split(*dnsVariants, ",") {
			b.Run(a.name+v, func(b *testing.B) {
				fixed, warm := v != "", strings.HasSuffix(v, "/warm")
				warmWho, warmPol, warmOwn := strings.HasSuffix(v, "-who"), strings.HasSuffix(v, "-policy"), strings.HasSuffix(v, "-own")
				sink := 0
				addrs := map[string]*net.UDPAddr{}
				rng := rand.New(rand.NewPCG(1, 2))
				ctx := context.Background()
				var lat []float64
				allowed := 0
				i := 0
				for b.Loop() {
					name := a.side.names[rng.IntN(len(a.side.names))]
					if i%10 == 9 {
						name = fmt.Sprintf("e%d.agent.test", a.label(i))
					}
					req := new(mdns.Msg)
					req.SetQuestion(name+".", mdns.TypeA)
					var rw mdns.ResponseWriter = &test.ResponseWriter{RemoteIP: a.src(i)}
					if fixed {
						ua := addrs[a.src(i)]
						if ua == nil {
							ua = &net.UDPAddr{IP: net.ParseIP(a.src(i)), Port: 40212}
							addrs[a.src(i)] = ua
						}
						rw = &udpWriter{ResponseWriter: test.ResponseWriter{RemoteIP: a.src(i)}, addr: ua}
					}
					h := a.handlers[i%len(a.handlers)]
					if warm {
						// The asking endpoint's data into the cache,
						// untimed (an AAAA of its label name).
						wq := new(mdns.Msg)
						wq.SetQuestion(fmt.Sprintf("e%d.agent.test.", a.label(i)), mdns.TypeAAAA)
						h.ServeDNS(ctx, rw, wq)
					}
					if warmWho || warmPol || warmOwn {
						snap, _ := h.Store.Load()
						who := snap.WhoIs(netip.MustParseAddr(a.src(i)), time.Now())
						if warmPol || warmOwn {
							p := who.Policy
							sink += len(p.Allows) + len(p.Denies)
							if p.AllowAll || p.Base == nil {
								sink++
							}
							if warmOwn {
								for k := range p.Allows {
									sink += len(p.Allows[k].Pattern) + int(p.Allows[k].Pattern[0]) + p.Allows[k].Prefix.Bits()
								}
								for k := range p.Denies {
									sink += len(p.Denies[k].Pattern) + int(p.Denies[k].Pattern[0]) + p.Denies[k].Prefix.Bits()
								}
							}
						}
					}
					t := time.Now()
					rc, err := h.ServeDNS(ctx, rw, req)
					lat = append(lat, float64(time.Since(t))/1e3)
					if err != nil {
						b.Fatal(err)
					}
					if rc == mdns.RcodeSuccess {
						allowed++
					}
					i++
				}
				if allowed != i {
					b.Fatalf("%d of %d queries allowed", allowed, i)
				}
				if sink == -1 {
					b.Log(sink)
				}
				slices.Sort(lat)
				b.ReportMetric(lat[len(lat)/2]*1e3, "p50-ns")
			})
		}
	}
}

// udpWriter answers RemoteAddr with the address a UDP read returned, as
// the CoreDNS server's writer does (test.ResponseWriter parses its
// RemoteIP string on every call).
type udpWriter struct {
	test.ResponseWriter
	addr *net.UDPAddr
}

func (w *udpWriter) RemoteAddr() net.Addr { return w.addr }
