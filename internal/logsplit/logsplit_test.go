package logsplit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

func TestLevelsGoToTheirStream(t *testing.T) {
	var out, errw bytes.Buffer
	l := logrus.New()
	l.SetFormatter(&logrus.JSONFormatter{})
	l.SetLevel(logrus.DebugLevel)
	Setup(l, &out, &errw)
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	lines := func(b *bytes.Buffer) (msgs, levels []string) {
		for _, s := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			var m map[string]string
			require.NoError(t, json.Unmarshal([]byte(s), &m), "a clean JSON line: %q", s)
			msgs, levels = append(msgs, m["msg"]), append(levels, m["level"])
		}
		return msgs, levels
	}
	msgs, levels := lines(&out)
	require.Equal(t, []string{"d", "i"}, msgs)
	require.Equal(t, []string{"debug", "info"}, levels, "the line keeps its own level")
	msgs, levels = lines(&errw)
	require.Equal(t, []string{"w", "e"}, msgs)
	require.Equal(t, []string{"warning", "error"}, levels)
}
