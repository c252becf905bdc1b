package policy

import (
	"go/ast"
	"go/token"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
)

// entryWriters are the functions allowed to write a policy's entries in
// place, by file and function: the constructors, before the policy they
// build is indexed or shared.
var entryWriters = map[string]bool{
	"dns/snapfile.go:policy": true, // the sidecar's decoder of a policy
}

// inPlace are the calls that rewrite the elements of the slice they are
// given.
var inPlace = map[string]bool{
	"slices.Sort": true, "slices.SortFunc": true, "slices.SortStableFunc": true, "slices.Reverse": true,
	"slices.Delete": true, "slices.DeleteFunc": true, "slices.Insert": true, "slices.Compact": true,
	"slices.CompactFunc": true, "slices.Replace": true, "sort.Slice": true, "sort.SliceStable": true, "copy": true,
}

// TestNoEntryWritesOutsideConstructors: no Go file of the module (tests
// aside) writes an element of a policy's Allows or Denies in place
// (x.Allows[i] = ..., x.Denies[i].Pattern = ..., slices.Sort(x.Allows),
// copy(x.Denies, ...)) outside the constructors. MatchName's name index
// notices the slices replaced, cut or appended to, not an element
// rewritten: such a write after the index was built could hide a deny
// from it. (A write through a pointer taken to an entry is not seen
// here; none exists.)
func TestNoEntryWritesOutsideConstructors(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	entries := func(e ast.Expr) bool { // an element of x.Allows or x.Denies, or a field of one
		for {
			switch x := e.(type) {
			case *ast.SelectorExpr:
				e = x.X
			case *ast.IndexExpr:
				if s, ok := x.X.(*ast.SelectorExpr); ok && (s.Sel.Name == "Allows" || s.Sel.Name == "Denies") {
					return true
				}
				e = x.X
			case *ast.ParenExpr:
				e = x.X
			default:
				return false
			}
		}
	}
	isEntries := func(e ast.Expr) bool {
		s, ok := e.(*ast.SelectorExpr)
		return ok && (s.Sel.Name == "Allows" || s.Sel.Name == "Denies")
	}
	var bad []string
	files, err := testutil.EachModuleFile(root, func(rel string, fset *token.FileSet, f *ast.File) {
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil || entryWriters[rel+":"+fn.Name.Name] {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				var hit ast.Node
				switch x := n.(type) {
				case *ast.AssignStmt:
					for _, l := range x.Lhs {
						if entries(l) {
							hit = x
						}
					}
				case *ast.IncDecStmt:
					if entries(x.X) {
						hit = x
					}
				case *ast.CallExpr:
					name := testutil.CallName(x)
					if inPlace[name] && len(x.Args) > 0 && isEntries(x.Args[0]) {
						hit = x
					}
				}
				if hit != nil {
					bad = append(bad, fset.Position(hit.Pos()).String()+" in "+fn.Name.Name)
				}
				return true
			})
		}
	})
	require.NoError(t, err)
	require.Greater(t, files, 100, "the module's files were not found from %s", root)
	require.Empty(t, bad, "policy entries written in place outside the constructors")
}
