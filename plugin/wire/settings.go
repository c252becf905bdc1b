package wire

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/plugin/metrics"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
)

// Settings are read from the environment (config.json's settable env).
type Settings struct {
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
	// MetricsAddr is where the Prometheus endpoint listens ("" = off).
	MetricsAddr string
	// KernelSplice carries allowed passthrough and tcp flows in the kernel
	// (sockmap) once decided; off, the proxy copies them (splice(2)).
	// KernelSpliceUpload (CLAWKER_PROXY_KERNEL_SPLICE=true, not
	// "download") carries the client-to-upstream direction there too.
	// KernelSpliceAfter is how many bytes a flow first moves through the
	// proxy (read/write) before the hand-over
	// (CLAWKER_PROXY_KERNEL_SPLICE_AFTER).
	KernelSplice       bool
	KernelSpliceUpload bool
	KernelSpliceAfter  int64
	// Scope is the data scope the driver reports (CLAWKER_SCOPE): "local"
	// (the default) or "global", for Swarm nodes: Swarm then allocates
	// each network on a manager through the driver (AllocateNetwork) and
	// hands every node the options the driver echoed.
	Scope string
}

// The kernel splice's defaults (CLAWKER_PROXY_KERNEL_SPLICE and
// CLAWKER_PROXY_KERNEL_SPLICE_AFTER; README says why): on where the kernel
// supports it, both directions, for flows that moved 1 MiB through the
// proxy first. Short flows (handshakes, small requests) never pay for
// the hand-over, and small messages on a kept-alive flow stay off the
// kernel's per-socket work queue, which measured slower for them
// (bench/results/bridge.txt).
const (
	DefaultKernelSplice            = "true"
	DefaultKernelSpliceAfter int64 = 1 << 20
)

func env(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

func ReadSettings() (Settings, error) {
	s := Settings{
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
	if !filepath.IsAbs(s.PinDir) || filepath.Clean(s.PinDir) != s.PinDir || s.PinDir == "/" {
		return s, fmt.Errorf("setting CLAWKER_BPF_PIN_DIR: %q is not a clean absolute path on the host's bpffs (e.g. %s)", s.PinDir, bpf.DefaultPinDir)
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
	if s.MetricsAddr, err = metrics.ParseAddr(env("CLAWKER_METRICS_ADDR", "")); err != nil {
		return s, err
	}
	switch v := env("CLAWKER_PROXY_KERNEL_SPLICE", DefaultKernelSplice); v {
	case "true", "download", "false":
		s.KernelSplice = v != "false"
		s.KernelSpliceUpload = v == "true"
	default:
		return s, fmt.Errorf("setting CLAWKER_PROXY_KERNEL_SPLICE: %q is not true, download or false", v)
	}
	after := env("CLAWKER_PROXY_KERNEL_SPLICE_AFTER", strconv.FormatInt(DefaultKernelSpliceAfter, 10))
	if s.KernelSpliceAfter, err = strconv.ParseInt(after, 10, 64); err != nil || s.KernelSpliceAfter < 0 {
		return s, fmt.Errorf("setting CLAWKER_PROXY_KERNEL_SPLICE_AFTER: %q is not a number of bytes (0: at once)", after)
	}
	switch s.Scope = env("CLAWKER_SCOPE", "local"); s.Scope {
	case "local", "global":
	default:
		return s, fmt.Errorf("setting CLAWKER_SCOPE: %q is not local or global", s.Scope)
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
