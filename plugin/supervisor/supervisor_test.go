package supervisor

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
)

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func TestRestartsCrashedSidecarAndLogsOutput(t *testing.T) {
	logger, hook := test.NewNullLogger()
	p := Start(Spec{Name: "sleeper", Path: "/bin/sh", Args: []string{"-c", "echo hello-from-sidecar; exec sleep 30"},
		HealthEvery: 20 * time.Millisecond, MinBackoff: 10 * time.Millisecond}, logrus.NewEntry(logger))
	defer p.Stop(time.Second)
	require.Eventually(t, func() bool { return p.Status().Healthy }, 5*time.Second, 10*time.Millisecond)
	first := p.Status().PID
	require.NoError(t, syscall.Kill(first, syscall.SIGKILL))
	require.Eventually(t, func() bool {
		s := p.Status()
		return s.Healthy && s.PID != first && s.Restarts == 1
	}, 5*time.Second, 10*time.Millisecond, "supervisor restarts a killed sidecar")
	require.Eventually(t, func() bool {
		for _, e := range hook.AllEntries() {
			if e.Message == "hello-from-sidecar" {
				return true
			}
		}
		return false
	}, time.Second, 10*time.Millisecond)
}

func TestHealthCheckFailureMarksUnhealthy(t *testing.T) {
	dir := t.TempDir()
	flag := filepath.Join(dir, "healthy")
	require.NoError(t, os.WriteFile(flag, nil, 0o600))
	p := Start(Spec{Name: "h", Path: "/bin/sleep", Args: []string{"30"}, HealthEvery: 20 * time.Millisecond,
		Health: func(context.Context) error {
			if _, err := os.Stat(flag); err != nil {
				return errors.New("not ready")
			}
			return nil
		}}, quietLog())
	defer p.Stop(time.Second)
	require.Eventually(t, func() bool { return p.Status().Healthy }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, os.Remove(flag))
	require.Eventually(t, func() bool { s := p.Status(); return !s.Healthy && s.LastError == "not ready" }, 5*time.Second, 10*time.Millisecond)
}

func TestStopTerminates(t *testing.T) {
	p := Start(Spec{Name: "s", Path: "/bin/sleep", Args: []string{"30"}}, quietLog())
	require.Eventually(t, func() bool { return p.Status().Running }, 5*time.Second, 10*time.Millisecond)
	pid := p.Status().PID
	start := time.Now()
	p.Stop(2 * time.Second)
	require.Less(t, time.Since(start), 2*time.Second)
	require.Error(t, syscall.Kill(pid, 0), "process is gone after Stop")
}

func TestLineLevel(t *testing.T) {
	for line, want := range map[string]logrus.Level{
		"[INFO] plugin/reload: Running configuration SHA512 = 1":                                  logrus.InfoLevel,
		"[WARNING] plugin/clawker: snapshot unreadable":                                           logrus.WarnLevel,
		"[ERROR] plugin/errors: 2 example.test. A: read udp: i/o timeout":                         logrus.ErrorLevel,
		"[FATAL] plugin/loop: Loop detected":                                                      logrus.ErrorLevel,
		"[DEBUG] plugin/clawker: x":                                                               logrus.DebugLevel,
		"[2026-12-06 23:10:00.000][7][info][main] [source/server/server.cc:1] starting":           logrus.InfoLevel,
		"[2026-12-06 23:10:00.000][7][warning][config] [source/x.cc:2] gRPC config stream closed": logrus.WarnLevel,
		"[2026-12-06 23:10:00.000][7][critical][main] [source/x.cc:3] error initializing":         logrus.ErrorLevel,
		"panic: runtime error: invalid memory address":                                            logrus.ErrorLevel,
		".:15053":        logrus.InfoLevel,
		"CoreDNS-1.15.0": logrus.InfoLevel,
		"a plain line that mentions, after forty bytes, [error] in passing": logrus.InfoLevel,
	} {
		require.Equal(t, want, LineLevel(line), line)
	}
}

func TestSidecarLinesKeepTheirLevel(t *testing.T) {
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.WarnLevel) // CLAWKER_LOG_LEVEL=warn: info lines go, warnings stay
	p := Start(Spec{Name: "levels", Path: "/bin/sh", Args: []string{"-c",
		"echo '[INFO] plugin/x: fine'; echo '[WARNING] plugin/x: careful'; echo '[ERROR] plugin/x: broken'; exec sleep 30"},
		MinBackoff: time.Second}, logrus.NewEntry(logger))
	defer p.Stop(time.Second)
	got := map[string]logrus.Level{}
	require.Eventually(t, func() bool {
		for _, e := range hook.AllEntries() {
			got[e.Message] = e.Level
		}
		return len(got) >= 2
	}, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, map[string]logrus.Level{"[WARNING] plugin/x: careful": logrus.WarnLevel, "[ERROR] plugin/x: broken": logrus.ErrorLevel}, got)
}
