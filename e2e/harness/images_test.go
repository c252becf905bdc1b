package harness

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWithTestCA(t *testing.T) {
	var in bytes.Buffer
	tw := tar.NewWriter(&in)
	for _, f := range []struct{ name, body string }{
		{"./etc/hostname", "x\n"},
		{"./etc/ssl/certs/ca-certificates.crt", "SYSTEM\n"},
	} {
		require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body))}))
		_, err := tw.Write([]byte(f.body))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	src := filepath.Join(t.TempDir(), "in.tar")
	require.NoError(t, os.WriteFile(src, in.Bytes(), 0o644))

	var out bytes.Buffer
	require.NoError(t, withTestCA(src, []byte("TESTCA\n"), &out))
	got := map[string]string{}
	tr := tar.NewReader(&out)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		got[hdr.Name] = string(b)
	}
	require.Equal(t, map[string]string{
		"./etc/hostname":                      "x\n",
		"./etc/ssl/certs/ca-certificates.crt": "SYSTEM\n\nTESTCA\n",
		TestCAPath[1:]:                        "TESTCA\n",
	}, got)
}

func TestMountsUnderOrdersDeepestFirst(t *testing.T) {
	// /proc itself is always mounted; nothing is mounted under a fresh dir.
	require.Empty(t, mountsUnder(t.TempDir()))
	require.Contains(t, mountsUnder("/proc"), "/proc")
}
