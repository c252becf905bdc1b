package envoy

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/proxy/ca"
)

// leafOf parses the certificate of an SDS secret.
func leafOf(t *testing.T, s *cache.Snapshot, name string) *x509.Certificate {
	t.Helper()
	r, ok := s.GetResources(resource.SecretType)[name]
	require.True(t, ok, "secret %s missing", name)
	tc := r.(*tlsv3.Secret).GetTlsCertificate()
	block, _ := pem.Decode(tc.GetCertificateChain().GetInlineBytes())
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	key, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
	require.NotNil(t, key)
	require.Equal(t, "PRIVATE KEY", key.Type)
	return cert
}

func TestSecretsFromCA(t *testing.T) {
	authority, err := ca.Open(t.TempDir())
	require.NoError(t, err)
	opts := testOptions(t)
	opts.Certs = authority
	opts.Now = time.Now
	snap := comprehensive()
	snap.Endpoints[4].BypassUntil = time.Now().Add(time.Hour)
	m := buildModel(t, snap)

	out, err := Translate(snap, m, opts)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(authority.CACertPEM()))

	wild := leafOf(t, out, "leaf:*.npm.example.test")
	require.Equal(t, []string{"npm.example.test", "*.npm.example.test"}, wild.DNSNames)
	for _, name := range []string{"npm.example.test", "registry.npm.example.test"} {
		_, err := wild.Verify(x509.VerifyOptions{DNSName: name, Roots: pool})
		require.NoError(t, err, name)
	}
	exact := leafOf(t, out, "leaf:git.example.test")
	require.Equal(t, []string{"git.example.test"}, exact.DNSNames)

	// After a rotation the next translation carries leaves of the new CA
	// only; Server.Update republishes them under a new version.
	oldPool := pool
	require.NoError(t, authority.Rotate())
	out2, err := Translate(snap, m, opts)
	require.NoError(t, err)
	newPool := x509.NewCertPool()
	require.True(t, newPool.AppendCertsFromPEM(authority.CACertPEM()))
	rotated := leafOf(t, out2, "leaf:git.example.test")
	_, err = rotated.Verify(x509.VerifyOptions{DNSName: "git.example.test", Roots: newPool})
	require.NoError(t, err)
	_, err = rotated.Verify(x509.VerifyOptions{DNSName: "git.example.test", Roots: oldPool})
	require.Error(t, err)
}
