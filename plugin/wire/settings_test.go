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
