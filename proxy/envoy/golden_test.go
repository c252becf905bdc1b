package envoy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// render turns a snapshot into stable, reviewable JSON: resources by type
// and name, protojson re-indented by encoding/json (which sorts map keys),
// and the random key material of SDS secrets replaced by a placeholder.
func render(t *testing.T, s *cache.Snapshot) []byte {
	t.Helper()
	doc := map[string]any{"version": s.GetVersion(resource.ListenerType)}
	for typ, key := range map[string]string{
		resource.ListenerType: "listeners",
		resource.ClusterType:  "clusters",
		resource.RouteType:    "routes",
		resource.SecretType:   "secrets",
	} {
		var items []any
		res := s.GetResources(typ)
		for _, name := range sortedKeys(res) {
			msg := proto.Clone(res[name])
			if sec, ok := msg.(*tlsv3.Secret); ok {
				tc := sec.GetTlsCertificate()
				tc.CertificateChain = inlineString("<leaf certificate of the plugin CA>")
				tc.PrivateKey = inlineString("<leaf private key>")
			}
			raw, err := protojson.Marshal(msg)
			require.NoError(t, err)
			var v any
			require.NoError(t, json.Unmarshal(raw, &v))
			items = append(items, v)
		}
		doc[key] = items
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	require.NoError(t, err)
	return append(out, '\n')
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./proxy/envoy -run %s -update to create it", t.Name())
	if !bytes.Equal(want, got) {
		require.Equal(t, string(want), string(got), "rendered xDS differs from %s (run with -update if the change is intended)", path)
	}
}

func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		opts func(*Options)
	}{
		{"comprehensive", func(*Options) {}},
		{"comprehensive-filelog", func(o *Options) { o.AccessLogPath = "/var/log/clawker/envoy-access.log" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := comprehensive()
			opts := testOptions(t)
			tt.opts(&opts)
			out, err := Translate(snap, buildModel(t, snap), opts)
			require.NoError(t, err)
			require.NoError(t, Check(out))
			got := render(t, out)
			// Translating twice gives the same bytes (no map-order leaks).
			again, err := Translate(snap, buildModel(t, snap), opts)
			require.NoError(t, err)
			require.Equal(t, string(got), string(render(t, again)))
			golden(t, tt.name, got)
		})
	}
}
