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

// BuildVersion reads the running binary's version from its build
// information.
func BuildVersion() Version {
	v := Version{Version: "unknown", GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
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
