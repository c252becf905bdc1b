package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReadSettingsPinDir: CLAWKER_BPF_PIN_DIR takes a clean absolute path
// (each plugin on one kernel has its own); anything else fails the start
// with the setting named.
func TestReadSettingsPinDir(t *testing.T) {
	for _, tc := range []struct {
		dir string
		ok  bool
	}{
		{"/sys/fs/bpf/clawker-fw", true},
		{"/sys/fs/bpf/clawker-fw-node1", true},
		{"clawker-fw", false},
		{"/sys/fs/bpf/../clawker-fw", false},
		{"/sys/fs/bpf/clawker-fw/", false},
		{"/", false},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			t.Setenv("CLAWKER_BPF_PIN_DIR", tc.dir)
			s, err := ReadSettings()
			if tc.ok {
				require.NoError(t, err)
				require.Equal(t, tc.dir, s.PinDir)
				return
			}
			require.ErrorContains(t, err, "CLAWKER_BPF_PIN_DIR")
		})
	}
	t.Setenv("CLAWKER_BPF_PIN_DIR", "")
	s, err := ReadSettings()
	require.NoError(t, err)
	require.Equal(t, "/sys/fs/bpf/clawker-fw", s.PinDir, "default")
}
