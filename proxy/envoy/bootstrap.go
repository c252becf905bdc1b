package envoy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// XDSCluster is the bootstrap's static cluster pointing at the xDS server.
const XDSCluster = "xds_cluster"

// BootstrapOptions configures Bootstrap.
type BootstrapOptions struct {
	// NodeID and NodeCluster identify the sidecar (defaults DefaultNodeID
	// and "clawker-fw").
	NodeID      string
	NodeCluster string
	// XDSAddress is the server's address as given to ServerConfig.Address:
	// "unix:///path/xds.sock" or "127.0.0.1:port".
	XDSAddress string
	// AdminAddress is the admin interface, always on loopback (default
	// 127.0.0.1:15004; port 0 lets Envoy choose, see AdminAddressPath).
	AdminAddress string
	// AdminAddressPath, when set, is where Envoy writes the admin address
	// it bound (passed as --admin-address-path by Command).
	AdminAddressPath string
}

// MaxRegexProgramSize is the RE2 program size the bootstrap lets a
// regex of the route configuration reach (re2.max_program_size.error_level);
// Check refuses a snapshot with a bigger one.
const MaxRegexProgramSize = 1 << 16

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// DefaultAdminAddress is the Envoy admin interface: loopback only, next to
// the plugin's health port.
var DefaultAdminAddress = model.Loopback(model.EnvoyAdminPort)

// Bootstrap renders the Envoy bootstrap (JSON): node identity, ADS over the
// xDS cluster (gRPC on the unix socket or loopback TCP), listeners and
// clusters from ADS, and the admin interface on loopback.
func Bootstrap(opts BootstrapOptions) ([]byte, error) {
	b, err := bootstrapProto(opts)
	if err != nil {
		return nil, err
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode envoy bootstrap: %w", err)
	}
	// protojson's whitespace is deliberately unstable; re-indent.
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("encode envoy bootstrap: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func bootstrapProto(opts BootstrapOptions) (*bootstrap.Bootstrap, error) {
	if opts.NodeID == "" {
		opts.NodeID = DefaultNodeID
	}
	if opts.NodeCluster == "" {
		opts.NodeCluster = "clawker-fw"
	}
	if opts.AdminAddress == "" {
		opts.AdminAddress = DefaultAdminAddress
	}
	if opts.XDSAddress == "" {
		return nil, fmt.Errorf("render envoy bootstrap: no xds address")
	}
	adminHost, adminPort, err := splitHostPort(opts.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("render envoy bootstrap: admin address: %w", err)
	}
	if ip := net.ParseIP(adminHost); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("render envoy bootstrap: admin address %s is not on loopback", opts.AdminAddress)
	}
	var xdsAddr *core.Address
	if network, addr := splitAddress(opts.XDSAddress); network == "unix" {
		xdsAddr = &core.Address{Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: addr}}}
	} else {
		host, port, err := splitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("render envoy bootstrap: xds address: %w", err)
		}
		xdsAddr = socketAddress(host, port, core.SocketAddress_TCP)
	}
	h2, err := anypb.New(&httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("render envoy bootstrap: %w", err)
	}
	b := &bootstrap.Bootstrap{
		Node: &core.Node{Id: opts.NodeID, Cluster: opts.NodeCluster},
		// The path routes are generated regexes (paths.go) far above RE2's
		// default program size limit of 100.
		LayeredRuntime: &bootstrap.LayeredRuntime{Layers: []*bootstrap.RuntimeLayer{{
			Name: "static",
			LayerSpecifier: &bootstrap.RuntimeLayer_StaticLayer{StaticLayer: mustStruct(map[string]any{
				"re2.max_program_size.error_level": MaxRegexProgramSize,
			})},
		}}},
		Admin: &bootstrap.Admin{
			Address: socketAddress(adminHost, adminPort, core.SocketAddress_TCP),
		},
		DynamicResources: &bootstrap.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:                   core.ApiConfigSource_GRPC,
				TransportApiVersion:       core.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*core.GrpcService{{
					TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}},
				}},
			},
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
		},
		StaticResources: &bootstrap.Bootstrap_StaticResources{
			Clusters: []*cluster.Cluster{{
				Name:                 XDSCluster,
				ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
				ConnectTimeout:       durationpb.New(connectTimeout),
				TypedExtensionProtocolOptions: map[string]*anypb.Any{
					"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
				},
				LoadAssignment: &endpoint.ClusterLoadAssignment{
					ClusterName: XDSCluster,
					Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
						HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: xdsAddr}},
					}}}},
				},
			}},
		},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("render envoy bootstrap: %w", err)
	}
	return b, nil
}

func splitHostPort(a string) (string, uint16, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", port, err)
	}
	return host, uint16(p), nil
}

// EnvoyPaths are where FindEnvoy looks before PATH: the plugin rootfs puts
// the binary at /usr/local/bin/envoy.
var EnvoyPaths = []string{"/usr/local/bin/envoy", "/usr/bin/envoy"}

// FindEnvoy returns the path of the Envoy binary, or an error saying what
// to do instead. No Envoy binary can be obtained where this project's CI
// runs, so selecting the envoy engine there fails here, clearly.
func FindEnvoy() (string, error) {
	for _, p := range EnvoyPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("envoy engine selected but no envoy binary at %s or on PATH; use the builtin engine or put an envoy binary in the plugin rootfs", strings.Join(EnvoyPaths, ", "))
}

// Command builds the command line of the Envoy sidecar for a bootstrap
// file. baseID must differ between Envoys on one host (shared memory);
// drain settings let listener updates drain connections gently instead of
// cutting them (invariant 4).
func Command(ctx context.Context, bin, bootstrapPath string, baseID int, opts BootstrapOptions) *exec.Cmd {
	args := []string{
		"-c", bootstrapPath,
		"--base-id", strconv.Itoa(baseID),
		"--drain-time-s", "600",
		"--drain-strategy", "gradual",
		"--log-level", "info",
	}
	if opts.AdminAddressPath != "" {
		args = append(args, "--admin-address-path", opts.AdminAddressPath)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = filepath.Dir(bootstrapPath)
	return cmd
}
