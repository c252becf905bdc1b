package testutil

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
)

// EachModuleFile parses every Go file below root (the module's root
// directory), tests aside, and calls fn with each and its path relative to
// root, with slashes. Hidden directories, build, rootfs and testdata are
// not read. It returns how many files it parsed: the source checks require
// a minimum, so that a wrong root fails them instead of passing on nothing.
func EachModuleFile(root string, fn func(rel string, fset *token.FileSet, f *ast.File)) (int, error) {
	files := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "build" || n == "rootfs" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files++
		fn(filepath.ToSlash(rel), fset, f)
		return nil
	})
	return files, err
}

// CallName is the name a call's function is written as: "f" or "pkg.F"
// ("" for any other form: a method value, a function literal).
func CallName(call *ast.CallExpr) string {
	switch fun := call.Fun.(type) {
	case *ast.Ident:
		return fun.Name
	case *ast.SelectorExpr:
		if pkg, ok := fun.X.(*ast.Ident); ok {
			return pkg.Name + "." + fun.Sel.Name
		}
	}
	return ""
}
