package wire

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/netguard"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
	"github.com/clawker-fw/clawker-fw/plugin/supervisor"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
	"github.com/clawker-fw/clawker-fw/proxy/ca"
	"github.com/clawker-fw/clawker-fw/proxy/envoy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Run assembles the plugin process from s: the kernel half (pinned BPF, the
// host guard), the builtin proxy (and the Envoy sidecar when chosen), the
// plugin core, the CoreDNS sidecar, the plugin socket (network driver and
// authz), the admin API and the background loops. It serves until ctx ends,
// then stops serving and leaves enforcement in place.
func Run(ctx context.Context, s Settings, root *logrus.Entry) error {
	log := root.WithField(plugin.FieldComponent, "main")
	var err error
	if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	envoyBin := ""
	if s.Engine == "envoy" {
		// Fail at start, clearly, rather than at the first connection.
		if envoyBin, err = envoy.FindEnvoy(); err != nil {
			return err
		}
	}

	// Kernel half: the host's bpffs and the cgroup2 root.
	if err := bpf.CheckHostBPFFS(filepath.Dir(s.PinDir)); err != nil {
		return err
	}
	unlock, err := bpf.LockPinDir(s.PinDir)
	if err != nil {
		return err
	}
	defer unlock()
	mgr, err := bpf.Open(bpf.Config{PinDir: s.PinDir, CgroupPath: s.Cgroup})
	if err != nil {
		return err
	}
	defer mgr.Close() // leaves pins and links: enforcement holds while we are down
	guard, err := netguard.New(netns.None())
	if err != nil {
		return err
	}
	defer guard.Close()

	authority, err := ca.Open(filepath.Join(s.StateDir, "ca"))
	if err != nil {
		return err
	}
	extra, err := loadCAs(s.ExtraCA)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	denials := plugin.NewDenialLog(500)
	decs := newDecisions(s.LogRate, denials, root)
	var splicer *bpf.Splicer
	if s.KernelSplice {
		// Owned by this process and not pinned: its sockets die with it.
		if splicer, err = bpf.OpenSplicer(); err != nil {
			root.WithError(err).Warn("kernel splice unavailable on this kernel: allowed flows are copied in userspace (splice(2))")
			splicer = nil
		} else {
			defer splicer.Close()
		}
	}
	var learnTo learnSink // learn mode's recorder, fed by the proxy and DNS
	engine, err := builtin.New(builtin.Config{
		Splicer:               splicer,
		SpliceDownloadOnly:    !s.KernelSpliceUpload,
		SpliceAfter:           s.KernelSpliceAfter,
		MaxConns:              s.MaxConns,
		MaxUDPSessions:        s.MaxUDPSessions,
		Record:                decs.Add,
		OnDecision:            learnTo.decision,
		Log:                   root.WithField(plugin.FieldComponent, "proxy"),
		Registry:              reg,
		Certs:                 authority,
		Resolver:              builtin.UpstreamResolver(s.Upstreams),
		UpstreamCAs:           extra,
		AllowPrivateUpstreams: s.AllowPrivate,
	})
	if err != nil {
		return err
	}
	defer engine.Close()

	var plane plugin.DataPlane = engine
	var envoyProc *supervisor.Process
	if s.Engine == "envoy" {
		ep, proc, err := startEnvoy(s, envoyBin, engine, authority, root)
		if err != nil {
			return err
		}
		plane, envoyProc = ep, proc
		defer proc.Stop(10 * time.Second)
	}

	docker, err := NewDocker(s.DockerSocket)
	if err != nil {
		return err
	}
	// The DNS sidecar's snapshot (dns.SnapshotWriter: a head and a file per
	// network base, in their own directory). A plugin before that form
	// wrote one JSON file, snapshot.json, which nothing reads any more.
	snapPath := filepath.Join(s.StateDir, "dns", "snapshot")
	if err := os.Remove(filepath.Join(s.StateDir, "snapshot.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.WithError(err).Warn("remove the older form's DNS snapshot file")
	}
	azLog := root.WithField(plugin.FieldComponent, "authz")
	records, err := authz.OpenRecords(filepath.Join(s.StateDir, "authz-records.jsonl"))
	if err != nil {
		return err
	}
	markFirewalled := func(containerID, networkID string) {
		if err := records.MarkFirewalled(containerID, "identified on the clawker-fw network "+networkID[:min(12, len(networkID))]); err != nil {
			azLog.WithError(err).WithField(plugin.FieldContainer, containerID).Error("record a firewalled container")
		}
	}
	p, err := plugin.New(plugin.Config{StateDir: s.StateDir, Log: root, Firewalled: markFirewalled, Decisions: decs.Add,
		GivenLabels: records.GivenLabels, Names: Names{D: docker}, Scope: s.Scope, EngineWait: 5 * time.Second},
		Kernel{M: mgr}, HostNet{H: guard}, plane, docker, &SnapshotFile{Path: snapPath})
	if err != nil {
		return err
	}
	denials.Enrich = p.EnrichDenial // container and network names, the network in the fix
	p.Denials = denials
	decs.core.Store(p)
	learnTo.p.Store(p)
	go func() {
		for d := range mgr.Denials() {
			p.RecordKernelDenial(d.Index, d.Addr, d.Port, uint8(d.L4), d.Reason.String())
		}
	}()

	// Publish once so the DNS sidecar finds a snapshot, then start it.
	if err := p.Start(); err != nil {
		log.WithError(err).Warn("restoring state was only partly successful")
	}
	// The DNS sidecar's decisions arrive as records on the events socket.
	eventsPath := filepath.Join(s.StateDir, "dns-events.sock")
	events, err := decisionlog.Listen(eventsPath, decisionlog.SourceDNS, learnTo.dns(decs.Add))
	if err != nil {
		return err
	}
	defer events.Close()
	corefile := filepath.Join(s.StateDir, "Corefile")
	if err := os.WriteFile(corefile, []byte(dns.Corefile(dns.CorefileConfig{
		SnapshotPath: snapPath, PinDir: s.PinDir, Upstreams: s.Upstreams,
		TTLFloor: s.TTLFloor, TTLCeiling: s.TTLCeiling, EventsPath: eventsPath,
	})), 0o644); err != nil {
		return fmt.Errorf("write Corefile: %w", err)
	}
	coredns := supervisor.Start(supervisor.Spec{
		Name: "coredns", Path: s.CoreDNSBinary, Args: []string{"-conf", corefile},
		Health: func(ctx context.Context) error { return httpOK(ctx, "http://"+dns.DefaultHealthAddr+"/health") },
	}, root.WithField(plugin.FieldComponent, "coredns"))
	defer coredns.Stop(5 * time.Second)

	// Plugin socket: network driver + authz.
	selfID := ""
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		azLog.WithError(err).Error("read own mounts: authz refuses every plugin disable/rm while networks exist")
	} else if selfID, err = SelfPluginID(string(mi)); err != nil {
		azLog.WithError(err).Error("own plugin id unknown: authz refuses every plugin disable/rm while networks exist")
	}
	az := authz.New(authz.Config{Snapshot: p.Snapshot, Networks: docker.Networks, Container: docker.ResolveContainer,
		Plugin: docker.Plugin, SelfID: selfID, Records: records, VolumeOptions: docker.VolumeOptions, NetworkDriver: docker.NetworkDriver,
		Override: s.AuthzOverride, Log: azLog, Record: decs.Add, GlobalScope: s.Scope == "global"})
	go selfReference(docker, selfID, azLog)
	go pruneRecords(docker, records, azLog)
	if err := os.MkdirAll(filepath.Dir(s.PluginSocket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(s.PluginSocket)
	pl, err := net.Listen("unix", s.PluginSocket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.PluginSocket, err)
	}
	srv := &http.Server{Handler: plugin.Handler(p, az, root.WithField(plugin.FieldComponent, "driver")), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(pl) }()

	// Admin API on the host through the state mount.
	adminPath := filepath.Join(s.StateDir, "admin.sock")
	_ = os.Remove(adminPath)
	al, err := net.Listen("unix", adminPath)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", adminPath, err)
	}
	_ = os.Chmod(adminPath, 0o600)
	admin := &http.Server{Handler: plugin.AdminHandler(p, plugin.AdminHooks{
		Engine:     s.Engine,
		Components: parts{coredns: coredns, envoy: envoyProc, mgr: mgr, decisions: decs.Hub, p: p, az: az, splice: spliceDetail(s, splicer != nil)}.components,
		Decisions:  decs.Recent,
		CACertPEM:  authority.CACertPEM,
		RotateCA:   authority.Rotate,
	}, root.WithField(plugin.FieldComponent, "admin")), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(al) }()
	go gcLoop(mgr, root)
	go repairLoop(p, root)
	go decs.Run(ctx.Done(), dropReportEvery)
	if s.MetricsAddr != "" {
		// A metrics listener that cannot start must not keep the firewall
		// from starting: said loudly, and status shows the rest.
		if addr, err := serveMetrics(ctx, s.MetricsAddr, reg, decs.Hub, mgr, p, az); err != nil {
			log.WithError(err).Error("metrics endpoint (CLAWKER_METRICS_ADDR) not served")
		} else {
			log.WithField("metrics", "http://"+addr.String()+"/metrics").Info("serving metrics")
		}
	}
	log.WithField("socket", s.PluginSocket).WithField("admin", adminPath).WithField("engine", s.Engine).
		WithField("listeners", model.ReservedLo).Info("clawker-fw plugin ready")

	<-ctx.Done()
	log.Info("stopping: enforcement stays in place (pinned BPF, nftables)")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = admin.Shutdown(sctx)
	p.Close()
	return nil
}
