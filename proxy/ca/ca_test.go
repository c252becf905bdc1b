package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clock is an adjustable time source for renewal tests.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func pool(t *testing.T, pemBytes ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, b := range pemBytes {
		require.True(t, p.AppendCertsFromPEM(b))
	}
	return p
}

func verify(leaf *tls.Certificate, roots *x509.CertPool, name string, at time.Time) error {
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{
		DNSName:     name,
		Roots:       roots,
		CurrentTime: at,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func TestOpenCreatesFilesWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	c, err := Open(dir)
	require.NoError(t, err)

	for file, mode := range map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, file))
		require.NoError(t, err)
		require.Equal(t, mode, st.Mode().Perm(), file)
	}
	require.Equal(t, filepath.Join(dir, "ca.crt"), c.CertPath())
	onDisk, err := os.ReadFile(c.CertPath())
	require.NoError(t, err)
	require.Equal(t, onDisk, c.CACertPEM())

	cert := c.Certificate()
	require.True(t, cert.IsCA)
	require.True(t, strings.HasPrefix(cert.Subject.CommonName, "clawker-fw CA "), cert.Subject.CommonName)
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	require.True(t, ok)
	require.Equal(t, elliptic.P256(), pub.Curve)

	// No temp files left behind.
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{"ca.key", "ca.crt"}, names)
}

func TestReuseAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	c1, err := Open(dir)
	require.NoError(t, err)
	leaf, err := c1.Leaf("api.example.test")
	require.NoError(t, err)

	// A loosened key mode is tightened again on load.
	require.NoError(t, os.Chmod(filepath.Join(dir, KeyFile), 0o644))

	c2, err := Open(dir)
	require.NoError(t, err)
	require.Equal(t, c1.CACertPEM(), c2.CACertPEM())
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	// A leaf of the first process verifies against the reopened CA.
	require.NoError(t, verify(leaf, pool(t, c2.CACertPEM()), "api.example.test", time.Now()))
}

func TestOpenRejectsBrokenState(t *testing.T) {
	other := t.TempDir()
	_, err := Open(other)
	require.NoError(t, err)
	otherKey, err := os.ReadFile(filepath.Join(other, KeyFile))
	require.NoError(t, err)

	tests := []struct {
		name    string
		break_  func(dir string)
		wantErr string
	}{
		{"corrupt key", func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage"), 0o600))
		}, "ca.key holds no PEM block"},
		{"corrupt cert", func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, CertFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644))
		}, "parse " + "DIR/ca.crt"},
		{"mismatched pair", func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, KeyFile), otherKey, 0o600))
		}, "the key in DIR/ca.key does not match the certificate in DIR/ca.crt"},
		{"missing cert", func(dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, CertFile)))
		}, "DIR/ca.crt is missing"},
		{"missing key", func(dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, KeyFile)))
		}, "DIR/ca.key is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := Open(dir)
			require.NoError(t, err)
			before := c.CACertPEM()
			tt.break_(dir)

			_, err = Open(dir)
			require.Error(t, err)
			require.Contains(t, err.Error(), strings.ReplaceAll(tt.wantErr, "DIR", dir))
			// Nothing was replaced.
			if _, serr := os.Stat(filepath.Join(dir, CertFile)); serr == nil && tt.name != "corrupt cert" {
				now, err := os.ReadFile(filepath.Join(dir, CertFile))
				require.NoError(t, err)
				require.Equal(t, before, now)
			}
		})
	}
}

func TestLeafVerifiesWithSANs(t *testing.T) {
	c, err := Open(t.TempDir())
	require.NoError(t, err)
	roots := pool(t, c.CACertPEM())

	tests := []struct {
		name     string
		get      func() (*tls.Certificate, error)
		wantDNS  []string
		wantIPs  []string
		verifyOK []string
		verifyNo []string
	}{
		{
			name:     "exact",
			get:      func() (*tls.Certificate, error) { return c.Leaf("API.Example.Test.") },
			wantDNS:  []string{"api.example.test"},
			verifyOK: []string{"api.example.test"},
			verifyNo: []string{"example.test", "x.api.example.test"},
		},
		{
			name:     "wildcard pattern",
			get:      func() (*tls.Certificate, error) { return c.LeafFor(".example.test") },
			wantDNS:  []string{"example.test", "*.example.test"},
			verifyOK: []string{"example.test", "www.example.test"},
			verifyNo: []string{"a.b.example.test", "example.org"},
		},
		{
			name:     "exact pattern",
			get:      func() (*tls.Certificate, error) { return c.LeafFor("db.example.test") },
			wantDNS:  []string{"db.example.test"},
			verifyOK: []string{"db.example.test"},
		},
		{
			name:     "ip",
			get:      func() (*tls.Certificate, error) { return c.Leaf("192.0.2.7") },
			wantIPs:  []string{"192.0.2.7"},
			verifyOK: []string{"192.0.2.7"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := tt.get()
			require.NoError(t, err)
			require.Equal(t, tt.wantDNS, leaf.Leaf.DNSNames)
			var ips []string
			for _, ip := range leaf.Leaf.IPAddresses {
				ips = append(ips, ip.String())
			}
			require.Equal(t, tt.wantIPs, ips)
			pub, ok := leaf.Leaf.PublicKey.(*ecdsa.PublicKey)
			require.True(t, ok)
			require.Equal(t, elliptic.P256(), pub.Curve)
			require.False(t, leaf.Leaf.IsCA)
			require.Equal(t, LeafValidity+backdate, leaf.Leaf.NotAfter.Sub(leaf.Leaf.NotBefore))
			for _, n := range tt.verifyOK {
				require.NoError(t, verify(leaf, roots, n, time.Now()), n)
			}
			for _, n := range tt.verifyNo {
				require.Error(t, verify(leaf, roots, n, time.Now()), n)
			}
		})
	}
}

func TestLeafRejectsBadNames(t *testing.T) {
	c, err := Open(t.TempDir())
	require.NoError(t, err)
	for _, n := range []string{"", ".", "a..b", "exa mple.test", "a/b", strings.Repeat("a", 64) + ".test"} {
		_, err := c.Leaf(n)
		require.Error(t, err, "%q", n)
	}
	_, err = c.LeafFor(".")
	require.Error(t, err)
}

// TestLeafServesTLS proves the leaf works in a real handshake against a
// client that trusts only the CA.
func TestLeafServesTLS(t *testing.T) {
	c, err := Open(t.TempDir())
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) { return c.Leaf(hello.ServerName) },
	})
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = conn.Write([]byte("ok"))
			}()
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "svc.example.test", RootCAs: pool(t, c.CACertPEM())})
	require.NoError(t, err)
	defer conn.Close()
	buf := make([]byte, 2)
	_, err = conn.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "ok", string(buf))
	_, _, err = net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
}

func TestLeafCacheAndSingleflight(t *testing.T) {
	c, err := Open(t.TempDir())
	require.NoError(t, err)

	const n = 32
	got := make([]*tls.Certificate, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leaf, err := c.Leaf("concurrent.example.test")
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = leaf
		}()
	}
	wg.Wait()
	for i := range n {
		require.Same(t, got[0], got[i], "call %d got a different certificate", i)
	}
	again, err := c.Leaf("concurrent.example.test")
	require.NoError(t, err)
	require.Same(t, got[0], again)

	other, err := c.Leaf("other.example.test")
	require.NoError(t, err)
	require.NotSame(t, got[0], other)
}

func TestLeafRenewal(t *testing.T) {
	clk := newClock()
	c, err := Open(t.TempDir(), WithClock(clk.now))
	require.NoError(t, err)

	first, err := c.Leaf("renew.example.test")
	require.NoError(t, err)
	require.True(t, clk.now().Add(LeafValidity).Equal(first.Leaf.NotAfter))

	// More than a day left: the cache answers.
	clk.advance(LeafValidity - LeafRenewBefore - time.Minute)
	same, err := c.Leaf("renew.example.test")
	require.NoError(t, err)
	require.Same(t, first, same)

	// Less than a day left: a new leaf, valid from now.
	clk.advance(2 * time.Minute)
	renewed, err := c.Leaf("renew.example.test")
	require.NoError(t, err)
	require.NotSame(t, first, renewed)
	require.NotEqual(t, first.Leaf.SerialNumber, renewed.Leaf.SerialNumber)
	require.True(t, clk.now().Add(LeafValidity).Equal(renewed.Leaf.NotAfter))
	require.NoError(t, verify(renewed, pool(t, c.CACertPEM()), "renew.example.test", clk.now()))
}

func TestRotate(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir)
	require.NoError(t, err)
	oldPEM := c.CACertPEM()
	oldLeaf, err := c.Leaf("rot.example.test")
	require.NoError(t, err)

	require.NoError(t, c.Rotate())
	newPEM := c.CACertPEM()
	require.NotEqual(t, oldPEM, newPEM)

	prev, err := os.ReadFile(filepath.Join(dir, PrevCertFile))
	require.NoError(t, err)
	require.Equal(t, oldPEM, prev)
	require.Equal(t, append(append([]byte{}, newPEM...), oldPEM...), c.TrustBundlePEM())
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	newLeaf, err := c.Leaf("rot.example.test")
	require.NoError(t, err)
	require.NotSame(t, oldLeaf, newLeaf, "the leaf cache must be dropped")
	require.NoError(t, verify(newLeaf, pool(t, newPEM), "rot.example.test", time.Now()))
	require.Error(t, verify(newLeaf, pool(t, oldPEM), "rot.example.test", time.Now()))
	// Leaves of the old CA still verify against ca.prev.crt (the overlap).
	require.NoError(t, verify(oldLeaf, pool(t, prev), "rot.example.test", time.Now()))

	// The rotated CA is what a restart loads.
	reopened, err := Open(dir)
	require.NoError(t, err)
	require.Equal(t, newPEM, reopened.CACertPEM())
	require.Equal(t, c.TrustBundlePEM(), reopened.TrustBundlePEM())
}

func TestRotateCrashRecovery(t *testing.T) {
	t.Run("between key and cert rename", func(t *testing.T) {
		dir := t.TempDir()
		c, err := Open(dir)
		require.NoError(t, err)
		// Simulate Rotate stopping after renaming the new key: produce a
		// new pair elsewhere, move its key into place and its cert to .next.
		other := t.TempDir()
		n, err := Open(other)
		require.NoError(t, err)
		require.NoError(t, os.Rename(filepath.Join(other, KeyFile), filepath.Join(dir, KeyFile)))
		require.NoError(t, os.Rename(filepath.Join(other, CertFile), filepath.Join(dir, nextCertFile)))

		got, err := Open(dir)
		require.NoError(t, err)
		require.Equal(t, n.CACertPEM(), got.CACertPEM())
		require.NotEqual(t, c.CACertPEM(), got.CACertPEM())
		_, err = os.Stat(filepath.Join(dir, nextCertFile))
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("before renames", func(t *testing.T) {
		dir := t.TempDir()
		c, err := Open(dir)
		require.NoError(t, err)
		other := t.TempDir()
		_, err = Open(other)
		require.NoError(t, err)
		require.NoError(t, os.Rename(filepath.Join(other, KeyFile), filepath.Join(dir, nextKeyFile)))
		require.NoError(t, os.Rename(filepath.Join(other, CertFile), filepath.Join(dir, nextCertFile)))

		got, err := Open(dir)
		require.NoError(t, err)
		require.Equal(t, c.CACertPEM(), got.CACertPEM())
		for _, f := range []string{nextKeyFile, nextCertFile} {
			_, err = os.Stat(filepath.Join(dir, f))
			require.ErrorIs(t, err, os.ErrNotExist)
		}
	})
}

// TestRotateConcurrentWithLeaf runs Leaf and Rotate together (the race
// detector checks the locking) and, after the last Rotate, only leaves of the
// final CA are handed out.
func TestRotateConcurrentWithLeaf(t *testing.T) {
	c, err := Open(t.TempDir())
	require.NoError(t, err)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	cas := [][]byte{c.CACertPEM()}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Leaf("race.example.test"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 5 {
		require.NoError(t, c.Rotate())
		cas = append(cas, c.CACertPEM())
	}
	close(stop)
	wg.Wait()
	leaf, err := c.Leaf("race.example.test")
	require.NoError(t, err)
	require.NoError(t, verify(leaf, pool(t, cas[len(cas)-1]), "race.example.test", time.Now()))
}
