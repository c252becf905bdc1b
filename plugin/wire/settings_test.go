package wire

import (
	"encoding/json"
	"os"
	"strconv"
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
		{"", "", true, true, 1 << 20, ""}, // on by default, after 1 MiB (README)
		{"true", "0", true, true, 0, ""},
		{"download", "", true, false, 1 << 20, ""},
		{"false", "", false, false, 1 << 20, ""},
		{"false", "0", false, false, 0, ""},
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

// TestConfigJSONKernelSpliceDefaults: the plugin's config.json (what
// `docker plugin install` sets) and ReadSettings' defaults name the same
// kernel splice setting, so an installed plugin runs with the documented
// default either way.
func TestConfigJSONKernelSpliceDefaults(t *testing.T) {
	data, err := os.ReadFile("../../config.json")
	require.NoError(t, err)
	var cfg struct {
		Env []struct{ Name, Value string }
	}
	require.NoError(t, json.Unmarshal(data, &cfg))
	want := map[string]string{
		"CLAWKER_PROXY_KERNEL_SPLICE":       DefaultKernelSplice,
		"CLAWKER_PROXY_KERNEL_SPLICE_AFTER": strconv.FormatInt(DefaultKernelSpliceAfter, 10),
	}
	for _, e := range cfg.Env {
		if w, ok := want[e.Name]; ok {
			require.Equal(t, w, e.Value, "config.json %s", e.Name)
			delete(want, e.Name)
		}
	}
	require.Empty(t, want, "settings missing from config.json")
}

// TestSpliceDetail: status says how decided flows are relayed, for each
// setting, and why not in the kernel where the kernel lacks sockmap.
func TestSpliceDetail(t *testing.T) {
	for _, tt := range []struct {
		s         Settings
		available bool
		want      string
	}{
		{Settings{KernelSplice: true, KernelSpliceUpload: true, KernelSpliceAfter: 1 << 20}, true, "kernel splice after 1048576 bytes through the proxy"},
		{Settings{KernelSplice: true, KernelSpliceUpload: true}, true, "kernel splice at once"},
		{Settings{KernelSplice: true, KernelSpliceAfter: 4097}, true, "kernel splice of downloads after 4097 bytes through the proxy"},
		{Settings{KernelSplice: true, KernelSpliceUpload: true, KernelSpliceAfter: 1 << 20}, false, "kernel splice unavailable on this kernel (no sockmap): flows relayed with splice(2)"},
		{Settings{}, true, "kernel splice off (CLAWKER_PROXY_KERNEL_SPLICE=false): flows relayed with splice(2)"},
	} {
		require.Equal(t, tt.want, spliceDetail(tt.s, tt.available))
	}
}
