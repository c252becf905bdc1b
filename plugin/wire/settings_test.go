package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSettingsScope: CLAWKER_SCOPE is local by default, global on request,
// and anything else fails the start with the setting named.
func TestSettingsScope(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"", "local", ""},
		{"local", "local", ""},
		{"global", "global", ""},
		{"swarm", "", `setting CLAWKER_SCOPE: "swarm" is not local or global`},
		{"Global", "", "setting CLAWKER_SCOPE"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			t.Setenv("CLAWKER_SCOPE", tt.in)
			s, err := ReadSettings()
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, s.Scope)
		})
	}
}

// TestSettingsKernelSplice: CLAWKER_PROXY_KERNEL_SPLICE takes true (both
// directions), download (the direction split) or false, and
// CLAWKER_PROXY_KERNEL_SPLICE_AFTER a byte count; anything else fails the
// start with the setting named.
func TestSettingsKernelSplice(t *testing.T) {
	for _, tt := range []struct {
		splice, after string
		on, upload    bool
		afterN        int64
		err           string
	}{
		{"", "", false, false, DefaultKernelSpliceAfter, ""}, // off by default (README)
		{"true", "0", true, true, 0, ""},
		{"download", "", true, false, DefaultKernelSpliceAfter, ""},
		{"false", "", false, false, DefaultKernelSpliceAfter, ""},
		{"true", "1048576", true, true, 1 << 20, ""},
		{"on", "", false, false, 0, `setting CLAWKER_PROXY_KERNEL_SPLICE: "on" is not true, download or false`},
		{"true", "-1", false, false, 0, "setting CLAWKER_PROXY_KERNEL_SPLICE_AFTER"},
		{"true", "1MiB", false, false, 0, "setting CLAWKER_PROXY_KERNEL_SPLICE_AFTER"},
	} {
		t.Run(tt.splice+"@"+tt.after, func(t *testing.T) {
			t.Setenv("CLAWKER_PROXY_KERNEL_SPLICE", tt.splice)
			t.Setenv("CLAWKER_PROXY_KERNEL_SPLICE_AFTER", tt.after)
			s, err := ReadSettings()
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.on, s.KernelSplice)
			require.Equal(t, tt.upload, s.KernelSpliceUpload)
			require.Equal(t, tt.afterN, s.KernelSpliceAfter)
		})
	}
}
