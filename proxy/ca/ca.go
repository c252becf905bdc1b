// Package ca is the plugin's certificate authority: it signs the leaf
// certificates the proxy presents when it terminates TLS (inspected rules:
// path rules or clawker.tls.inspect), and hands out its own certificate for
// containers to trust (served at http://<gateway>/ca.crt, and on the host at
// CertPath).
//
// Files, all in the directory given to Open (the plugin uses
// <state dir>/ca):
//
//	ca.key       the CA's ECDSA P-256 private key, PKCS#8 PEM, mode 0600
//	ca.crt       the CA's self-signed certificate, PEM, mode 0644
//	ca.prev.crt  the CA certificate in force before the last Rotate, 0644
//
// Every file is written atomically (temp file, fsync, rename, fsync of the
// directory). The CA is created on the first Open and reused afterwards; a
// key or certificate that does not parse, or a key that does not match the
// certificate, is an error naming the file: the CA is never silently
// replaced, because every container that trusts it would break.
//
// Leaves are issued on demand, cached in memory per name, valid for
// LeafValidity and renewed once less than LeafRenewBefore is left. Data
// planes call Leaf on every handshake (the builtin engine from
// tls.Config.GetCertificate), so Rotate takes effect for new handshakes
// without restarting anything.
//
// Rotation overlap: Rotate keeps the previous CA certificate in ca.prev.crt
// until the next Rotate. Connections established before the rotation keep
// their old leaves until they close, and leaves of the old CA stay valid for
// at most LeafValidity after the rotation; during that window ca.prev.crt
// (and TrustBundlePEM, which holds both certificates) lets an operator
// verify them. Leaves issued after Rotate are signed by the new CA only, so a
// container must fetch the new ca.crt (restart it, or re-run its CA install
// step) before its next intercepted connection.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/clawker-fw/clawker-fw/store"
)

// File names inside the CA directory.
const (
	KeyFile      = "ca.key"
	CertFile     = "ca.crt"
	PrevCertFile = "ca.prev.crt"
	// nextKeyFile and nextCertFile hold a rotation in progress; see Rotate.
	nextKeyFile  = "ca.key.next"
	nextCertFile = "ca.crt.next"
)

// Lifetimes.
const (
	// CAValidity is how long a CA certificate is valid.
	CAValidity = 10 * 365 * 24 * time.Hour
	// LeafValidity is how long a leaf is valid.
	LeafValidity = 7 * 24 * time.Hour
	// LeafRenewBefore: a cached leaf with less than this left is reissued.
	LeafRenewBefore = 24 * time.Hour
	// backdate covers clients whose clocks run a little behind the host's.
	backdate = time.Hour
	// maxCachedLeaves bounds the leaf cache (wildcard rules admit any number
	// of names); past it an arbitrary entry is evicted.
	maxCachedLeaves = 4096
)

// CA is the plugin's certificate authority. It is safe for concurrent use.
type CA struct {
	dir string
	now func() time.Time

	mu      sync.RWMutex
	gen     uint64 // bumped by Rotate; leaves of older generations are dropped
	cert    *x509.Certificate
	certPEM []byte
	prevPEM []byte
	key     *ecdsa.PrivateKey
	leaves  map[string]*tls.Certificate

	flight singleflight.Group
}

// Option configures Open.
type Option func(*CA)

// WithClock replaces time.Now (tests use it to exercise renewal).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// Open loads the CA kept in dir, creating dir and a new CA on first use.
func Open(dir string, opts ...Option) (*CA, error) {
	c := &CA{dir: dir, now: time.Now, leaves: map[string]*tls.Certificate{}}
	for _, o := range opts {
		o(c)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	keyPath, certPath := c.path(KeyFile), c.path(CertFile)
	_, keyErr := os.Stat(keyPath)
	_, certErr := os.Stat(certPath)
	switch {
	case errors.Is(keyErr, fs.ErrNotExist) && errors.Is(certErr, fs.ErrNotExist):
		if err := c.create(); err != nil {
			return nil, err
		}
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("stat %s: %w", keyPath, keyErr)
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("stat %s: %w", certPath, certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("load ca: %s is missing but %s exists; restore the key or remove both to create a new CA", keyPath, certPath)
	case certErr != nil:
		return nil, fmt.Errorf("load ca: %s is missing but %s exists; restore the certificate or remove both to create a new CA", certPath, keyPath)
	default:
		if err := c.load(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *CA) path(name string) string { return filepath.Join(c.dir, name) }

// CertPath is the host path of the CA certificate (<state dir>/ca/ca.crt
// for the plugin).
func (c *CA) CertPath() string { return c.path(CertFile) }

// CACertPEM returns the current CA certificate, PEM encoded.
func (c *CA) CACertPEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return bytes.Clone(c.certPEM)
}

// TrustBundlePEM returns the current CA certificate followed by the previous
// one, if a rotation kept it (see the package comment on the overlap).
func (c *CA) TrustBundlePEM() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := bytes.Clone(c.certPEM)
	return append(out, c.prevPEM...)
}

// Certificate returns the current CA certificate.
func (c *CA) Certificate() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert
}

// create makes a new CA and writes it.
func (c *CA) create() error {
	// The key first: a crash between the two writes leaves a key without a
	// certificate, which Open reports instead of guessing.
	key, cert, certPEM, err := c.writeNewPair(KeyFile, CertFile)
	if err != nil {
		return err
	}
	c.key, c.cert, c.certPEM = key, cert, certPEM
	return nil
}

// writeNewPair makes a new CA key and certificate and writes them, key
// first, to keyFile and certFile in the CA directory.
func (c *CA) writeNewPair(keyFile, certFile string) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, cert, certPEM, err := newCA(c.now())
	if err != nil {
		return nil, nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := writeAtomic(c.path(keyFile), keyPEM, 0o600); err != nil {
		return nil, nil, nil, err
	}
	if err := writeAtomic(c.path(certFile), certPEM, 0o644); err != nil {
		return nil, nil, nil, err
	}
	return key, cert, certPEM, nil
}

// load reads the key and certificate, finishing a rotation that a crash
// interrupted (see Rotate).
func (c *CA) load() error {
	keyPath, certPath := c.path(KeyFile), c.path(CertFile)
	key, err := readKey(keyPath)
	if err != nil {
		return err
	}
	cert, certPEM, err := readCert(certPath)
	if err != nil {
		return err
	}
	if !matches(cert, key) {
		// Rotate renames the new key into place before the new certificate:
		// a crash between the two leaves ca.crt.next holding the certificate
		// of the key in ca.key.
		next, nextPEM, nerr := readCert(c.path(nextCertFile))
		if nerr != nil || !matches(next, key) {
			return fmt.Errorf("load ca: the key in %s does not match the certificate in %s; restore the matching pair or remove both to create a new CA (containers must then fetch the new certificate)", keyPath, certPath)
		}
		if err := os.Rename(c.path(nextCertFile), certPath); err != nil {
			return fmt.Errorf("finish ca rotation: %w", err)
		}
		if err := syncDir(c.dir); err != nil {
			return err
		}
		cert, certPEM = next, nextPEM
	}
	// Leftovers of a rotation that did not get as far as renaming the key
	// are dropped: that rotation never completed.
	for _, f := range []string{nextKeyFile, nextCertFile} {
		if err := os.Remove(c.path(f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", c.path(f), err)
		}
	}
	if err := cert.CheckSignatureFrom(cert); err != nil || !cert.IsCA {
		return fmt.Errorf("load ca: %s is not a self-signed CA certificate", certPath)
	}
	if now := c.now(); now.After(cert.NotAfter) {
		return fmt.Errorf("load ca: %s expired at %s; call Rotate (admin API) or remove %s and %s to create a new CA", certPath, cert.NotAfter.UTC().Format(time.RFC3339), keyPath, certPath)
	}
	// The key must stay private even if someone loosened its mode.
	if err := os.Chmod(keyPath, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", keyPath, err)
	}
	c.key, c.cert, c.certPEM = key, cert, certPEM
	if prev, err := os.ReadFile(c.path(PrevCertFile)); err == nil {
		c.prevPEM = prev
	}
	return nil
}

// Rotate replaces the CA with a new key and certificate, keeps the old
// certificate in ca.prev.crt and drops every cached leaf, so the next
// handshake of every data plane gets a leaf of the new CA.
//
// Crash safety: the new pair is first written to ca.key.next and
// ca.crt.next, then ca.prev.crt, then ca.key.next is renamed to ca.key and
// ca.crt.next to ca.crt. Open finishes a rotation interrupted between the two
// renames and discards one interrupted before them.
func (c *CA) Rotate() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	key, cert, certPEM, err := c.writeNewPair(nextKeyFile, nextCertFile)
	if err != nil {
		return err
	}
	if err := writeAtomic(c.path(PrevCertFile), c.certPEM, 0o644); err != nil {
		return err
	}
	if err := os.Rename(c.path(nextKeyFile), c.path(KeyFile)); err != nil {
		return fmt.Errorf("rotate ca: %w", err)
	}
	if err := os.Rename(c.path(nextCertFile), c.path(CertFile)); err != nil {
		return fmt.Errorf("rotate ca: %w", err)
	}
	if err := syncDir(c.dir); err != nil {
		return err
	}
	c.prevPEM = c.certPEM
	c.key, c.cert, c.certPEM = key, cert, certPEM
	c.gen++
	c.leaves = map[string]*tls.Certificate{}
	return nil
}

// Leaf returns a certificate for serverName (a TLS server name or HTTP host,
// or an IP address), issuing one when none is cached or the cached one is
// close to expiry. Concurrent calls for one name issue one certificate.
func (c *CA) Leaf(serverName string) (*tls.Certificate, error) {
	name, err := normalize(serverName)
	if err != nil {
		return nil, err
	}
	return c.leaf(name, []string{name})
}

// LeafFor returns a certificate for a rule pattern: an exact name gets that
// name, a wildcard ".example.com" gets example.com and *.example.com (which
// covers one label below the apex only, as X.509 wildcards do; deeper names
// need Leaf).
func (c *CA) LeafFor(pattern string) (*tls.Certificate, error) {
	if apex, ok := strings.CutPrefix(pattern, "."); ok {
		name, err := normalize(apex)
		if err != nil {
			return nil, err
		}
		return c.leaf("."+name, []string{name, "*." + name})
	}
	return c.Leaf(pattern)
}

func (c *CA) leaf(cacheKey string, sans []string) (*tls.Certificate, error) {
	c.mu.RLock()
	gen, cached := c.gen, c.leaves[cacheKey]
	c.mu.RUnlock()
	if cached != nil && c.fresh(cached) {
		return cached, nil
	}
	v, err, _ := c.flight.Do(fmt.Sprintf("%d/%s", gen, cacheKey), func() (any, error) {
		return c.issue(cacheKey, sans)
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

func (c *CA) fresh(leaf *tls.Certificate) bool {
	return leaf.Leaf.NotAfter.Sub(c.now()) >= LeafRenewBefore
}

// issue signs a leaf with the current CA and caches it. A call
// that overlaps a Rotate may sign with the CA in force when it started: the
// leaf is then returned (the handshake began before the rotation) but not
// cached, so every call that starts after Rotate returned gets the new CA.
func (c *CA) issue(cacheKey string, sans []string) (*tls.Certificate, error) {
	c.mu.RLock()
	if cached := c.leaves[cacheKey]; cached != nil && c.fresh(cached) {
		c.mu.RUnlock()
		return cached, nil
	}
	caCert, caKey, caGen := c.cert, c.key, c.gen
	c.mu.RUnlock()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key for %s: %w", cacheKey, err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := c.now()
	notAfter := now.Add(LeafValidity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: sans[0]},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %s: %w", cacheKey, err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse leaf for %s: %w", cacheKey, err)
	}
	leaf := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != caGen {
		return leaf, nil
	}
	if len(c.leaves) >= maxCachedLeaves {
		for k := range c.leaves {
			delete(c.leaves, k)
			break
		}
	}
	c.leaves[cacheKey] = leaf
	return leaf, nil
}

// normalize lower-cases a server name, drops one trailing dot and rejects
// what cannot be a host name or IP address (the name comes from a client).
func normalize(name string) (string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("issue leaf: invalid server name %q", name)
	}
	if net.ParseIP(name) != nil {
		return name, nil
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("issue leaf: invalid server name %q", name)
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "", fmt.Errorf("issue leaf: invalid server name %q", name)
			}
		}
	}
	return name, nil
}

func newCA(now time.Time) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate ca key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, nil, err
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "clawker-fw CA " + now.UTC().Format("2006-01-02 15:04:05"),
			Organization: []string{"clawker-fw"},
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	b, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal ca public key: %w", err)
	}
	sum := sha256.Sum256(b)
	return sum[:20], nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal ca key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("load ca: %s holds no PEM block", path)
	}
	var key crypto.PrivateKey
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("load ca: %s holds a %q PEM block, want PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("load ca: parse %s: %w", path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load ca: %s holds a %T, want an ECDSA key", path, key)
	}
	return ec, nil
}

func readCert(path string) (*x509.Certificate, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("load ca: %s holds no PEM CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("load ca: parse %s: %w", path, err)
	}
	return cert, pem.EncodeToMemory(block), nil
}

func matches(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Equal(&key.PublicKey)
}

// writeAtomic writes data to path durably: readers see the old or the new
// content, never a torn file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	return store.WriteFileAtomic(path, data, mode)
}

func syncDir(dir string) error {
	if err := store.SyncDir(dir); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
