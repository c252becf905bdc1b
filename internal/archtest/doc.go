// Package archtest holds the architecture test: the layering rules of the
// module, checked against `go list -deps` (see arch_test.go). It has no code
// of its own.
package archtest
