// Command clawker-fw-plugin is the process of the clawker-fw Docker managed
// plugin: network driver and authorization plugin on one socket, supervisor
// of the CoreDNS sidecar, the builtin proxy, and the admin API.
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/netguard"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
	"github.com/clawker-fw/clawker-fw/plugin/supervisor"
	"github.com/clawker-fw/clawker-fw/plugin/wire"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
	"github.com/clawker-fw/clawker-fw/proxy/ca"
	"github.com/clawker-fw/clawker-fw/proxy/envoy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// settings are read from the environment (config.json's settable env).
type settings struct {
	StateDir        string
	PluginSocket    string
	DockerSocket    string
	PinDir          string
	Cgroup          string
	Engine          string
	Upstreams       []string
	TTLFloor        time.Duration
	TTLCeiling      time.Duration
	AllowPrivate    []netip.Prefix
	ExtraCA         string
	LogLevel        logrus.Level
	AuthzOverride   bool
	CoreDNSBinary   string
	DefaultUpstream []string
	// MaxConns and MaxUDPSessions cap one endpoint's concurrent proxied
	// connections and UDP sessions; LogRate is the log lines per second
	// (per endpoint, each of proxy, DNS and socket hooks) relayed through
	// dockerd, with bursts of 10 s worth.
	MaxConns       int
	MaxUDPSessions int
	LogRate        float64
}

func env(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

func readSettings() (settings, error) {
	s := settings{
		StateDir:      env("CLAWKER_STATE_DIR", "/var/lib/clawker-fw"),
		PluginSocket:  env("CLAWKER_PLUGIN_SOCKET", "/run/docker/plugins/clawker-fw.sock"),
		DockerSocket:  env("CLAWKER_DOCKER_SOCKET", "/var/run/docker.sock"),
		PinDir:        env("CLAWKER_BPF_PIN_DIR", bpf.DefaultPinDir),
		Cgroup:        env("CLAWKER_CGROUP2", ""),
		Engine:        env("CLAWKER_PROXY_ENGINE", "builtin"),
		ExtraCA:       env("CLAWKER_EXTRA_CA", ""),
		CoreDNSBinary: env("CLAWKER_COREDNS", "/bin/clawker-coredns"),
		AuthzOverride: env("CLAWKER_AUTHZ_OVERRIDE", "false") == "true",
	}
	var err error
	if s.LogLevel, err = logrus.ParseLevel(env("CLAWKER_LOG_LEVEL", "info")); err != nil {
		return s, fmt.Errorf("setting CLAWKER_LOG_LEVEL: %w", err)
	}
	if s.TTLFloor, err = time.ParseDuration(env("CLAWKER_DNS_TTL_FLOOR", "5m")); err != nil {
		return s, fmt.Errorf("setting CLAWKER_DNS_TTL_FLOOR: %w", err)
	}
	if s.TTLCeiling, err = time.ParseDuration(env("CLAWKER_DNS_TTL_CEILING", "1h")); err != nil {
		return s, fmt.Errorf("setting CLAWKER_DNS_TTL_CEILING: %w", err)
	}
	if s.TTLFloor > s.TTLCeiling {
		return s, fmt.Errorf("setting CLAWKER_DNS_TTL_FLOOR (%s) is above CLAWKER_DNS_TTL_CEILING (%s)", s.TTLFloor, s.TTLCeiling)
	}
	for _, u := range splitList(env("CLAWKER_DNS_UPSTREAM", "1.1.1.2,1.0.0.2")) {
		up, err := policy.NormalizeUpstream(u)
		if err != nil {
			return s, fmt.Errorf("setting CLAWKER_DNS_UPSTREAM: %q: %w", u, err)
		}
		s.Upstreams = append(s.Upstreams, up)
	}
	for _, c := range splitList(env("CLAWKER_ALLOW_PRIVATE_UPSTREAMS", "")) {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return s, fmt.Errorf("setting CLAWKER_ALLOW_PRIVATE_UPSTREAMS: %w", err)
		}
		s.AllowPrivate = append(s.AllowPrivate, p.Masked())
	}
	for _, n := range []struct {
		key string
		def int
		dst *int
	}{
		{"CLAWKER_PROXY_MAX_CONNS", builtin.DefaultMaxConns, &s.MaxConns},
		{"CLAWKER_PROXY_MAX_UDP_SESSIONS", builtin.DefaultMaxUDPSessions, &s.MaxUDPSessions},
	} {
		v, err := strconv.Atoi(env(n.key, strconv.Itoa(n.def)))
		if err != nil || v < 1 {
			return s, fmt.Errorf("setting %s: %q is not a positive number", n.key, env(n.key, ""))
		}
		*n.dst = v
	}
	if s.LogRate, err = strconv.ParseFloat(env("CLAWKER_LOG_RATE", "20"), 64); err != nil || s.LogRate < 0 {
		return s, fmt.Errorf("setting CLAWKER_LOG_RATE: %q is not a number of lines per second (0 turns the limit off)", env("CLAWKER_LOG_RATE", ""))
	}
	if s.Engine != "builtin" && s.Engine != "envoy" {
		return s, fmt.Errorf("setting CLAWKER_PROXY_ENGINE: %q is not builtin or envoy", s.Engine)
	}
	return s, nil
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

func main() {
	logger := logrus.New()
	logger.SetFormatter(&logrus.JSONFormatter{})
	logger.SetOutput(os.Stderr)
	log := logrus.NewEntry(logger).WithField(plugin.FieldComponent, "main")
	if err := run(logger, log); err != nil {
		log.WithError(err).Error("clawker-fw plugin stopped")
		os.Exit(1)
	}
}

func loadCAs(path string) ([]*x509.Certificate, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("setting CLAWKER_EXTRA_CA: %w", err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("setting CLAWKER_EXTRA_CA: parse %s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("setting CLAWKER_EXTRA_CA: no certificate in %s", path)
	}
	return out, nil
}

func run(logger *logrus.Logger, log *logrus.Entry) error {
	s, err := readSettings()
	if err != nil {
		return err
	}
	logger.SetLevel(s.LogLevel)
	root := logrus.NewEntry(logger)
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
	limits := newLogLimits(s.LogRate)
	engine, err := builtin.New(builtin.Config{
		MaxConns:              s.MaxConns,
		MaxUDPSessions:        s.MaxUDPSessions,
		LogLimit:              limits.proxy,
		Log:                   root.WithField(plugin.FieldComponent, "proxy"),
		Registry:              reg,
		Certs:                 authority,
		Resolver:              builtin.UpstreamResolver(s.Upstreams),
		UpstreamCAs:           extra,
		AllowPrivateUpstreams: s.AllowPrivate,
		OnDecision: func(d builtin.Decision) {
			if d.Allowed {
				return
			}
			denials.Add(plugin.Denial{Time: d.Time, Source: "proxy", Index: d.Endpoint, Container: d.Container,
				Destination: firstNonEmpty(d.Name, d.Dst.String()), Port: d.Port, Reason: string(d.Reason), Rule: d.Rule,
				Fix: firstNonEmpty(builtin.FixFor(firstNonEmpty(d.Name, d.Dst.String()), d.Reason),
					plugin.FixFor(firstNonEmpty(d.Name, d.Dst.String()), d.Port, d.Reason, nil))})
		},
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

	docker, err := wire.NewDocker(s.DockerSocket)
	if err != nil {
		return err
	}
	snapPath := filepath.Join(s.StateDir, "snapshot.json")
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
	p, err := plugin.New(plugin.Config{StateDir: s.StateDir, Log: root, Firewalled: markFirewalled, KernelLogLimit: limits.bpf,
		GivenLabels: records.GivenLabels},
		wire.Kernel{M: mgr}, wire.HostNet{H: guard}, plane, docker, wire.SnapshotFile{Path: snapPath})
	if err != nil {
		return err
	}
	p.Denials = denials
	go func() {
		for d := range mgr.Denials() {
			p.RecordKernelDenial(d.Index, d.Addr, d.Port, uint8(d.L4), d.Reason.String())
		}
	}()

	// Publish once so the DNS sidecar finds a snapshot, then start it.
	if err := p.Start(); err != nil {
		log.WithError(err).Warn("restoring state was only partly successful")
	}
	corefile := filepath.Join(s.StateDir, "Corefile")
	if err := os.WriteFile(corefile, []byte(dns.Corefile(dns.CorefileConfig{
		SnapshotPath: snapPath, PinDir: s.PinDir, Upstreams: s.Upstreams,
		TTLFloor: s.TTLFloor, TTLCeiling: s.TTLCeiling,
	})), 0o644); err != nil {
		return fmt.Errorf("write Corefile: %w", err)
	}
	coredns := supervisor.Start(supervisor.Spec{
		Name: "coredns", Path: s.CoreDNSBinary, Args: []string{"-conf", corefile},
		Health: func(ctx context.Context) error { return httpOK(ctx, "http://"+dns.DefaultHealthAddr+"/health") },
		OnLine: func(line string) {
			if d, ok := dnsDenial(line); ok {
				denials.Add(d)
			}
		},
		Keep: limits.keepDNSLine,
	}, root.WithField(plugin.FieldComponent, "coredns"))
	defer coredns.Stop(5 * time.Second)

	// Plugin socket: network driver + authz.
	selfID := ""
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		azLog.WithError(err).Error("read own mounts: authz refuses every plugin disable/rm while networks exist")
	} else if selfID, err = wire.SelfPluginID(string(mi)); err != nil {
		azLog.WithError(err).Error("own plugin id unknown: authz refuses every plugin disable/rm while networks exist")
	}
	az := authz.New(authz.Config{Snapshot: p.Snapshot, Networks: docker.Networks, Container: docker.ResolveContainer,
		Plugin: docker.Plugin, SelfID: selfID, Records: records, VolumeOptions: docker.VolumeOptions,
		Override: s.AuthzOverride, Log: azLog})
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
		Engine: s.Engine,
		Components: func() []plugin.Component {
			st := coredns.Status()
			dnsC := plugin.Component{Name: "dns", Healthy: st.Healthy, Restarts: st.Restarts, Detail: fmt.Sprintf("pid %d", st.PID)}
			if !st.Healthy {
				dnsC.Detail = st.LastError
			}
			comps := []plugin.Component{dnsC, {Name: "proxy", Healthy: true, Detail: "builtin"}, {Name: "bpf", Healthy: true, Detail: mgr.CgroupPath()}}
			if envoyProc != nil {
				st := envoyProc.Status()
				comps = append(comps, plugin.Component{Name: "envoy", Healthy: st.Healthy, Restarts: st.Restarts, Detail: st.LastError})
			}
			comps = append(comps, plugin.Component{Name: "log-limit", Healthy: true, Detail: limits.summary()})
			hg := p.HostGuard()
			comps = append(comps, plugin.Component{Name: "host-guard", Healthy: hg.Err == "", Detail: hg.Summary(time.Now())})
			return append(comps, plugin.Component{Name: "authz", Healthy: true, Detail: az.Stats().Summary()})
		},
		CACertPEM: authority.CACertPEM,
		RotateCA:  authority.Rotate,
	}, root.WithField(plugin.FieldComponent, "admin")), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = admin.Serve(al) }()
	go gcLoop(mgr, root)
	go repairLoop(p, root)
	go limits.reportLoop(root.WithField(plugin.FieldComponent, "log-limit"), logLimitReportEvery)
	log.WithField("socket", s.PluginSocket).WithField("admin", adminPath).WithField("engine", s.Engine).
		WithField("listeners", model.ReservedLo).Info("clawker-fw plugin ready")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	log.Info("stopping: enforcement stays in place (pinned BPF, nftables)")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	_ = admin.Shutdown(ctx)
	p.Close()
	return nil
}

// selfReference logs the plugin's own id and the reference Docker knows it
// by (asked once Docker has finished enabling the plugin).
func selfReference(docker *wire.Docker, id string, log *logrus.Entry) {
	if id == "" {
		return
	}
	for range 10 {
		time.Sleep(3 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, name, found, err := docker.Plugin(ctx, id)
		cancel()
		if err == nil && found {
			log.WithField("plugin_id", id).WithField("plugin", name).Info("plugin identity")
			return
		}
	}
}

// pruneRecords forgets, every 10 minutes, the authz records of containers
// that no longer exist.
func pruneRecords(docker *wire.Docker, records *authz.Records, log *logrus.Entry) {
	for {
		time.Sleep(10 * time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		live, err := docker.ContainerIDs(ctx)
		cancel()
		if err != nil {
			continue
		}
		if n, err := records.Prune(func(id string) bool { return live[id] }, 10*time.Minute); err != nil {
			log.WithError(err).Warn("prune authz records")
		} else if n > 0 {
			log.WithField("removed", n).Debug("pruned authz records")
		}
	}
}

func gcLoop(m *bpf.Manager, log *logrus.Entry) {
	for range time.Tick(30 * time.Second) {
		if n, err := m.GC(time.Now()); err != nil {
			log.WithError(err).Warn("learned-map GC failed")
		} else if n > 0 {
			log.WithField("expired", n).Debug("learned-map GC")
		}
	}
}

// repairLoop notices when something else removed the host guard of a
// network (a firewall reload flushing the nftables ruleset) and restores it.
// Meanwhile the BPF hooks still deny enrolled containers' direct
// connections; the guard adds bridge isolation, anti-spoofing and the
// redirect of not-yet-enrolled endpoints.
func repairLoop(p *plugin.Plugin, log *logrus.Entry) {
	lastErr := ""
	for range time.Tick(guardCheckEvery) {
		repaired, err := p.RepairHost()
		for _, r := range repaired {
			log.WithField("missing", r).Warn("host firewall rules of a clawker-fw network were removed by something else (a firewall reload?); restored")
		}
		// A lasting failure is logged once, not every few seconds.
		switch {
		case err != nil && err.Error() != lastErr:
			log.WithError(err).Error("checking or restoring the host firewall rules failed; `clawker-fw reload` retries")
			lastErr = err.Error()
		case err == nil && lastErr != "":
			log.Info("host firewall rules check works again")
			lastErr = ""
		}
	}
}

// guardCheckEvery is how often repairLoop checks the host guard.
const guardCheckEvery = 5 * time.Second

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" && s != "invalid IP" {
			return s
		}
	}
	return ""
}

// dnsDenial turns the DNS sidecar's decision line
// ("CLAWKER-DNS-DECISION decision=deny endpoint=3 container=x name=a.b. type=A reason=no-rule ...")
// into a recorded denial.
func dnsDenial(line string) (plugin.Denial, bool) {
	i := strings.Index(line, "CLAWKER-DNS-DECISION decision=deny")
	if i < 0 {
		return plugin.Denial{}, false
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(line[i:]) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	var idx uint32
	_, _ = fmt.Sscanf(kv["endpoint"], "%d", &idx)
	name, err := strconv.Unquote(kv["name"])
	if err != nil {
		name = strings.Trim(kv["name"], `"`)
	}
	name = strings.TrimSuffix(name, ".")
	d := plugin.Denial{Time: time.Now(), Source: "dns", Index: idx, Container: kv["container"], Destination: name,
		Reason: kv["reason"] + " (" + kv["type"] + " query answered " + kv["rcode"] + ")"}
	if kv["reason"] == string(dns.ReasonBadName) {
		// No rule can name it: suggesting one would mislead.
		d.Fix = "query names may hold only letters, digits, '-' and '_' between dots; write internationalized names in their xn-- (punycode) form"
	} else {
		d.Fix = plugin.FixFor(name, 0, "", nil)
	}
	return d, true
}

// envoyPlane feeds the Envoy sidecar over xDS; the builtin engine keeps
// serving the transparent and CA listeners, which Envoy does not translate.
type envoyPlane struct {
	builtin *builtin.Engine
	xds     *envoy.Server
}

func (e envoyPlane) Apply(snap *policy.Snapshot, m *model.Model) error {
	own := *m
	own.Listeners = nil
	for _, l := range m.Listeners {
		if l.Kind == model.KindTransparent || l.Kind == model.KindCA {
			own.Listeners = append(own.Listeners, l)
		}
	}
	if err := e.builtin.Apply(snap, &own); err != nil {
		return err
	}
	return e.xds.Update(snap, m)
}

// startEnvoy starts the xDS server and the supervised Envoy sidecar. The
// Envoy engine is validated in Go only (no envoy binary exists on the
// project's machines): see proxy/envoy/README.md.
func startEnvoy(s settings, bin string, engine *builtin.Engine, authority *ca.CA, log *logrus.Entry) (plugin.DataPlane, *supervisor.Process, error) {
	dir := filepath.Join(s.StateDir, "envoy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create envoy dir: %w", err)
	}
	addr := "unix://" + filepath.Join(dir, "xds.sock")
	srv, err := envoy.NewServer(context.Background(), envoy.ServerConfig{Address: addr, Log: log.WithField(plugin.FieldComponent, "xds"),
		Options: envoy.Options{Certs: authority, AllowPrivateUpstreams: len(s.AllowPrivate) > 0}})
	if err != nil {
		return nil, nil, err
	}
	bopts := envoy.BootstrapOptions{XDSAddress: addr}
	boot, err := envoy.Bootstrap(bopts)
	if err != nil {
		return nil, nil, err
	}
	bootPath := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(bootPath, boot, 0o600); err != nil {
		return nil, nil, fmt.Errorf("write envoy bootstrap: %w", err)
	}
	cmd := envoy.Command(context.Background(), bin, bootPath, 0, bopts)
	proc := supervisor.Start(supervisor.Spec{Name: "envoy", Path: cmd.Path, Args: cmd.Args[1:]}, log.WithField(plugin.FieldComponent, "envoy"))
	return envoyPlane{builtin: engine, xds: srv}, proc, nil
}
