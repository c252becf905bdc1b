package envoy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// adsClient is a minimal ADS client: what Envoy does on its xDS stream.
type adsClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
}

func dialADS(t *testing.T, addr, nodeID string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	require.NoError(t, err)
	return &adsClient{t: t, stream: stream, node: &core.Node{Id: nodeID, Cluster: "clawker-fw"}}
}

func (c *adsClient) send(typeURL, version, nonce string, names ...string) {
	c.t.Helper()
	require.NoError(c.t, c.stream.Send(&discovery.DiscoveryRequest{
		Node: c.node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names,
	}))
}

func (c *adsClient) recv() *discovery.DiscoveryResponse {
	c.t.Helper()
	type result struct {
		r   *discovery.DiscoveryResponse
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := c.stream.Recv()
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		require.NoError(c.t, res.err)
		return res.r
	case <-time.After(10 * time.Second):
		c.t.Fatal("no xDS response within 10s")
		return nil
	}
}

// recvType reads responses until one of typeURL arrives (on a change the
// server pushes every subscribed type, in no fixed order).
func (c *adsClient) recvType(typeURL string) *discovery.DiscoveryResponse {
	c.t.Helper()
	for range 8 {
		if r := c.recv(); r.GetTypeUrl() == typeURL {
			return r
		}
	}
	c.t.Fatalf("no %s response", typeURL)
	return nil
}

// names decodes the resources of a response and returns their names.
func names(t *testing.T, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		require.NoError(t, err)
		switch v := m.(type) {
		case *listener.Listener:
			out = append(out, v.GetName())
		case *cluster.Cluster:
			out = append(out, v.GetName())
		default:
			n, ok := m.(interface{ GetName() string })
			require.True(t, ok, "%T has no name", m)
			out = append(out, n.GetName())
		}
	}
	return out
}

func TestServerADS(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "envoy", "xds.sock")
	srv, err := NewServer(context.Background(), ServerConfig{Address: "unix://" + sock, Options: testOptions(t)})
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	st, err := os.Stat(sock)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	snap := comprehensive()
	m := buildModel(t, snap)
	require.NoError(t, srv.Update(snap, m))
	want, err := Translate(snap, m, testOptions(t))
	require.NoError(t, err)

	c := dialADS(t, "unix://"+sock, DefaultNodeID)

	// Listeners.
	c.send(resource.ListenerType, "", "")
	lds := c.recv()
	require.Equal(t, resource.ListenerType, lds.GetTypeUrl())
	require.Equal(t, "7", lds.GetVersionInfo())
	require.ElementsMatch(t, sortedKeys(want.GetResources(resource.ListenerType)), names(t, lds))
	c.send(resource.ListenerType, lds.GetVersionInfo(), lds.GetNonce()) // ACK

	// Clusters.
	c.send(resource.ClusterType, "", "")
	cds := c.recv()
	require.Equal(t, resource.ClusterType, cds.GetTypeUrl())
	require.ElementsMatch(t, sortedKeys(want.GetResources(resource.ClusterType)), names(t, cds))
	c.send(resource.ClusterType, cds.GetVersionInfo(), cds.GetNonce())

	// Routes and secrets are requested by name, as Envoy does for RDS/SDS.
	routeNames := sortedKeys(want.GetResources(resource.RouteType))
	c.send(resource.RouteType, "", "", routeNames...)
	rds := c.recv()
	require.ElementsMatch(t, routeNames, names(t, rds))
	c.send(resource.RouteType, rds.GetVersionInfo(), rds.GetNonce(), routeNames...)
	secretNames := sortedKeys(want.GetResources(resource.SecretType))
	c.send(resource.SecretType, "", "", secretNames...)
	sds := c.recv()
	require.ElementsMatch(t, secretNames, names(t, sds))

	// A new generation reaches the open stream (no Envoy restart): drop
	// endpoint B's rules.
	next := comprehensive()
	next.Generation = 8
	delete(next.Endpoints, 2)
	next.Index()
	require.NoError(t, srv.Update(next, buildModel(t, next)))
	lds2 := c.recvType(resource.ListenerType)
	require.Equal(t, resource.ListenerType, lds2.GetTypeUrl())
	require.Equal(t, "8", lds2.GetVersionInfo())

	// Republishing generation 8 (CA rotation, leaf renewal) gets a new
	// version, so Envoy applies it.
	c.send(resource.ListenerType, lds2.GetVersionInfo(), lds2.GetNonce())
	require.NoError(t, srv.Update(next, buildModel(t, next)))
	lds3 := c.recvType(resource.ListenerType)
	require.Equal(t, "8.1", lds3.GetVersionInfo())
}

func TestServerRejectsBadSnapshot(t *testing.T) {
	srv, err := NewServer(context.Background(), ServerConfig{Address: "127.0.0.1:0", Options: testOptions(t)})
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	require.True(t, strings.HasPrefix(srv.Addr().String(), "127.0.0.1:"))

	snap := comprehensive()
	require.NoError(t, srv.Update(snap, buildModel(t, snap)))
	bad := comprehensive()
	bad.Generation = 8
	bad.Endpoints[1].Policy.Allows[1].Paths[1].Path = "~("
	require.Error(t, srv.Update(bad, buildModel(t, bad)))

	// The previous snapshot is still served.
	c := dialADS(t, srv.Addr().String(), DefaultNodeID)
	c.send(resource.ListenerType, "", "")
	require.Equal(t, "7", c.recv().GetVersionInfo())
}

func TestBootstrap(t *testing.T) {
	tests := []struct {
		name    string
		opts    BootstrapOptions
		wantErr string
		check   func(t *testing.T, b *bootstrap.Bootstrap)
	}{
		{
			name: "unix socket",
			opts: BootstrapOptions{XDSAddress: "unix:///var/lib/clawker-fw/envoy/xds.sock"},
			check: func(t *testing.T, b *bootstrap.Bootstrap) {
				require.Equal(t, DefaultNodeID, b.GetNode().GetId())
				require.Equal(t, "clawker-fw", b.GetNode().GetCluster())
				xds := b.GetStaticResources().GetClusters()[0]
				require.Equal(t, XDSCluster, xds.GetName())
				addr := xds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
				require.Equal(t, "/var/lib/clawker-fw/envoy/xds.sock", addr.GetPipe().GetPath())
				require.Contains(t, xds.GetTypedExtensionProtocolOptions(), "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
				ads := b.GetDynamicResources().GetAdsConfig()
				require.Equal(t, core.ApiConfigSource_GRPC, ads.GetApiType())
				require.Equal(t, XDSCluster, ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName())
				require.NotNil(t, b.GetDynamicResources().GetLdsConfig().GetAds())
				require.NotNil(t, b.GetDynamicResources().GetCdsConfig().GetAds())
				admin := b.GetAdmin().GetAddress().GetSocketAddress()
				require.Equal(t, "127.0.0.1", admin.GetAddress())
				require.EqualValues(t, 15004, admin.GetPortValue())
			},
		},
		{
			name: "tcp",
			opts: BootstrapOptions{XDSAddress: "127.0.0.1:18000", NodeID: "n1", AdminAddress: "127.0.0.1:0"},
			check: func(t *testing.T, b *bootstrap.Bootstrap) {
				require.Equal(t, "n1", b.GetNode().GetId())
				sa := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
				require.Equal(t, "127.0.0.1", sa.GetAddress())
				require.EqualValues(t, 18000, sa.GetPortValue())
			},
		},
		{name: "admin off loopback", opts: BootstrapOptions{XDSAddress: "127.0.0.1:1", AdminAddress: "0.0.0.0:9901"}, wantErr: "not on loopback"},
		{name: "no xds", opts: BootstrapOptions{}, wantErr: "no xds address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := Bootstrap(tt.opts)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.True(t, json.Valid(raw))
			var b bootstrap.Bootstrap
			require.NoError(t, protojson.Unmarshal(raw, &b))
			require.NoError(t, b.ValidateAll())
			tt.check(t, &b)
		})
	}
	raw, err := Bootstrap(BootstrapOptions{XDSAddress: "unix:///var/lib/clawker-fw/envoy/xds.sock"})
	require.NoError(t, err)
	golden(t, "bootstrap", raw)
}

func TestFindEnvoy(t *testing.T) {
	old := EnvoyPaths
	t.Cleanup(func() { EnvoyPaths = old })
	dir := t.TempDir()
	EnvoyPaths = []string{filepath.Join(dir, "envoy")}
	t.Setenv("PATH", t.TempDir())

	_, err := FindEnvoy()
	require.EqualError(t, err, "envoy engine selected but no envoy binary at "+EnvoyPaths[0]+
		" or on PATH; use the builtin engine or put an envoy binary in the plugin rootfs")

	require.NoError(t, os.WriteFile(EnvoyPaths[0], []byte("#!/bin/sh\n"), 0o755))
	p, err := FindEnvoy()
	require.NoError(t, err)
	require.Equal(t, EnvoyPaths[0], p)
}

func TestCommand(t *testing.T) {
	cmd := Command(context.Background(), "/usr/local/bin/envoy", "/state/envoy/bootstrap.json", 7,
		BootstrapOptions{AdminAddressPath: "/state/envoy/admin"})
	require.Equal(t, []string{"/usr/local/bin/envoy", "-c", "/state/envoy/bootstrap.json", "--base-id", "7",
		"--drain-time-s", "600", "--drain-strategy", "gradual", "--log-level", "info",
		"--admin-address-path", "/state/envoy/admin"}, cmd.Args)
}
