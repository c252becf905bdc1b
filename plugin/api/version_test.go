package api

import (
	"runtime"
	"testing"
)

// TestBuildVersionStamped: the linker's stamp wins over the build info.
func TestBuildVersionStamped(t *testing.T) {
	v := BuildVersion()
	if v.GoVersion != runtime.Version() || v.OS != runtime.GOOS {
		t.Fatalf("runtime facts missing: %+v", v)
	}
	buildVersion, buildCommit = "v9.9.9", "abc123"
	defer func() { buildVersion, buildCommit = "", "" }()
	v = BuildVersion()
	if v.Version != "v9.9.9" || v.Commit != "abc123" {
		t.Fatalf("stamp not used: %+v", v)
	}
}
