package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The engines the suite runs on (issue 16). EngineDebian is Debian 12's
// docker.io (20.10, API 1.41, runc 1.1); EngineCurrent is the current moby
// engine (API 1.56) with a current runc, built from pinned module versions by
// scripts/engine.sh, with Debian's containerd.
const (
	EngineDebian  = "debian"
	EngineCurrent = "current"
)

// Environment variables that choose the engine.
const (
	// EngineEnv selects the engine: "debian" (default) or "current".
	EngineEnv = "CLAWKER_E2E_ENGINE"
	// EngineBinEnv is the directory holding the current engine's dockerd and
	// runc (what scripts/engine.sh prints). Required for "current".
	EngineBinEnv = "CLAWKER_E2E_ENGINE_BIN"
)

// Engine is the Docker Engine an Env runs.
type Engine struct {
	Name       string // EngineDebian or EngineCurrent
	Dockerd    string // the dockerd binary
	APIVersion string // the engine's API version (what its /version says)
	// BinDir, when set, goes first on dockerd's PATH, so that dockerd, the
	// containerd it starts and the shims find this runc (and not Debian's).
	BinDir string
}

// Current reports whether e is the current engine.
func (e Engine) Current() bool { return e.Name == EngineCurrent }

// SelectedEngine returns the engine chosen by CLAWKER_E2E_ENGINE (and
// CLAWKER_E2E_ENGINE_BIN). A current engine whose binaries are missing is an
// error, never a silent fallback to Debian's.
func SelectedEngine() (Engine, error) {
	switch name := strings.TrimSpace(os.Getenv(EngineEnv)); name {
	case "", EngineDebian:
		return Engine{Name: EngineDebian, Dockerd: Dockerd, APIVersion: "1.41"}, nil
	case EngineCurrent:
		dir := os.Getenv(EngineBinEnv)
		if dir == "" {
			return Engine{}, fmt.Errorf("%s=current needs %s: the directory scripts/engine.sh prints (it builds dockerd and runc)", EngineEnv, EngineBinEnv)
		}
		for _, bin := range []string{"dockerd", "runc"} {
			if fi, err := os.Stat(filepath.Join(dir, bin)); err != nil || fi.Mode()&0o111 == 0 {
				return Engine{}, fmt.Errorf("current engine: no executable %s in %s (run scripts/engine.sh)", bin, dir)
			}
		}
		return Engine{Name: EngineCurrent, Dockerd: filepath.Join(dir, "dockerd"), BinDir: dir, APIVersion: "1.56"}, nil
	default:
		return Engine{}, fmt.Errorf("%s=%q: want %q or %q", EngineEnv, name, EngineDebian, EngineCurrent)
	}
}

// dockerdEnv is the environment of the test dockerd.
func (e Engine) dockerdEnv() []string {
	env := os.Environ()
	if e.BinDir == "" {
		return env
	}
	out := make([]string, 0, len(env)+1)
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
			continue
		}
		out = append(out, kv)
	}
	return append(out, "PATH="+e.BinDir+":"+path)
}
