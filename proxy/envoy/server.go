package envoy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// DefaultNodeID is the Envoy node id the bootstrap sets and the server
// serves snapshots for.
const DefaultNodeID = "clawker-fw"

// ServerConfig configures NewServer.
type ServerConfig struct {
	// NodeID is the Envoy node served (default DefaultNodeID).
	NodeID string
	// Address is where the xDS gRPC server listens: "unix:///path/xds.sock"
	// (the plugin uses <state dir>/envoy/xds.sock) or "127.0.0.1:port".
	Address string
	// Options are passed to Translate on every Update.
	Options Options
	// Log receives go-control-plane's and the server's messages.
	Log *logrus.Entry
}

// Server is the xDS (ADS) server that configures the Envoy sidecar.
// Update publishes a new snapshot; Envoy applies it without restarting.
type Server struct {
	cfg   ServerConfig
	cache cache.SnapshotCache
	grpc  *grpc.Server
	ln    net.Listener
	done  chan struct{}

	mu      sync.Mutex
	lastGen uint64
	rev     int
}

// NewServer starts an ADS server on cfg.Address. Envoy sidecars connect
// with the bootstrap from Bootstrap. Close stops it.
func NewServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		cfg.Log = logrus.NewEntry(l)
	}
	network, addr := splitAddress(cfg.Address)
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, fmt.Errorf("create xds socket dir: %w", err)
		}
		// A socket left by a previous run would make Listen fail.
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale xds socket: %w", err)
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen xds on %s: %w", cfg.Address, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("chmod xds socket: %w", err)
		}
	}
	snapCache := cache.NewSnapshotCache(true, cache.IDHash{}, cfg.Log)
	xds := server.NewServer(ctx, snapCache, nil)
	g := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, xds)
	secretservice.RegisterSecretDiscoveryServiceServer(g, xds)
	s := &Server{cfg: cfg, cache: snapCache, grpc: g, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := g.Serve(ln); err != nil {
			cfg.Log.WithError(err).Warn("xds server stopped")
		}
	}()
	return s, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// splitAddress maps "unix:///p" / "unix:/p" to ("unix", "/p") and anything
// else to ("tcp", addr).
func splitAddress(a string) (string, string) {
	if p, ok := strings.CutPrefix(a, "unix://"); ok {
		return "unix", p
	}
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		return "unix", p
	}
	return "tcp", a
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Update translates a snapshot generation and publishes it: the snapshot
// must pass Check (which runs Consistent) before SetSnapshot, so a bad
// translation never reaches Envoy, which keeps serving the previous one.
//
// Publishing the same generation again (after a CA rotation or to renew
// leaves, which the plugin should do at least daily) gets the version
// "<generation>.<n>" so Envoy notices the change.
func (s *Server) Update(snap *policy.Snapshot, m *model.Model) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	version := strconv.FormatUint(snap.Generation, 10)
	rev := 0
	if snap.Generation == s.lastGen {
		rev = s.rev + 1
		version += "." + strconv.Itoa(rev)
	}
	out, err := Translate(snap, m, s.cfg.Options)
	if err != nil {
		return err
	}
	if rev > 0 {
		out, err = reversion(out, version)
		if err != nil {
			return err
		}
	}
	if err := out.Consistent(); err != nil {
		return fmt.Errorf("publish envoy snapshot %s: %w", version, err)
	}
	if err := Check(out); err != nil {
		return fmt.Errorf("publish envoy snapshot %s: %w", version, err)
	}
	if err := s.cache.SetSnapshot(context.Background(), s.cfg.NodeID, out); err != nil {
		return fmt.Errorf("publish envoy snapshot %s: %w", version, err)
	}
	s.lastGen, s.rev = snap.Generation, rev
	s.cfg.Log.WithField("version", version).Info("envoy snapshot published")
	return nil
}

// reversion rebuilds a snapshot with another version.
func reversion(s *cache.Snapshot, version string) (*cache.Snapshot, error) {
	res := map[resource.Type][]types.Resource{}
	for _, typ := range []resource.Type{resource.ListenerType, resource.ClusterType, resource.RouteType, resource.SecretType} {
		for _, name := range sortedKeys(s.GetResources(typ)) {
			res[typ] = append(res[typ], s.GetResources(typ)[name])
		}
	}
	out, err := cache.NewSnapshot(version, res)
	if err != nil {
		return nil, fmt.Errorf("build envoy snapshot %s: %w", version, err)
	}
	return out, nil
}

// Close stops the server and removes a unix socket.
func (s *Server) Close() {
	s.grpc.Stop()
	<-s.done
	if network, addr := splitAddress(s.cfg.Address); network == "unix" {
		_ = os.Remove(addr)
	}
}
