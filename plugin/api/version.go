package api

import (
	"runtime"
	"runtime/debug"
)

// Version is the answer of GET /v1/version, and what `clawker-fw version`
// prints for the CLI itself.
type Version struct {
	// Version is the module version ("(devel)" for a source build).
	Version string `json:"version"`
	// Commit is the VCS revision the binary was built from, with
	// "-dirty" when the tree had changes.
	Commit    string `json:"commit,omitempty"`
	BuildTime string `json:"build_time,omitempty"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	// Engine is the plugin's proxy engine (server only).
	Engine string `json:"engine,omitempty"`
}

// buildVersion and buildCommit are set by the Makefile's linker flags
// (-X .../plugin/api.buildVersion=...): builds that do not stamp VCS
// information (GOFLAGS=-buildvcs=false, -trimpath trees) still say what
// they are.
var buildVersion, buildCommit string

// BuildVersion reads the running binary's version from the linker flags,
// else from its build information.
func BuildVersion() (v Version) {
	v = Version{Version: "unknown", GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	defer func() {
		if buildVersion != "" {
			v.Version = buildVersion
		}
		if buildCommit != "" {
			v.Commit = buildCommit
		}
	}()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = bi.Main.Version
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.BuildTime = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && v.Commit != "" {
		v.Commit += "-dirty"
	}
	return v
}
