// Package testutil holds helpers shared by the project's tests.
package testutil

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true), where a privileged
// suite that cannot run is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequirePrivileged skips t when the process is not root, and fails it
// instead when running in CI: a skipped privileged suite in CI is a red build.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatalf("privileged test needs root (euid %d) and CI=true forbids skipping it", os.Geteuid())
	}
	t.Skipf("privileged test: needs root (euid %d); run as root or with CI=true to enforce", os.Geteuid())
}

// Require fails t in CI and skips it elsewhere when ok is false. Use it for
// environment prerequisites (a binary, a kernel feature) of privileged tests.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s", why)
	}
	t.Skipf("prerequisite missing: %s", why)
}
