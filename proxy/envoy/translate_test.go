package envoy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTranslateComprehensiveChecks(t *testing.T) {
	snap := comprehensive()
	out, err := Translate(snap, buildModel(t, snap), testOptions(t))
	require.NoError(t, err)
	require.NoError(t, out.Consistent())
	require.NoError(t, Check(out))
}
