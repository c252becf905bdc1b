package wire

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// loadCAs reads the PEM bundle of CLAWKER_EXTRA_CA: the extra roots the
// proxy trusts for upstreams.
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
