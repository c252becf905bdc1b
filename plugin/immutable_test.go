package plugin

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/internal/testutil"
	"github.com/clawker-fw/clawker-fw/policy"
)

// networkConfigWriters are the functions allowed to write a network's
// Options or Config in place, by file and function ("plugin/x.go:name"):
// constructors, before the Network they build is stored. None needs to:
// CreateNetwork and decodeState build the options and the configuration
// apart (policy.ParseNetworkOptions, a JSON decode into a value of their
// own) and store them whole.
var networkConfigWriters = map[string]bool{}

// configWriteCalls are the calls that write into the map or the slice
// (its elements or the array past its length) given as their first
// argument.
var configWriteCalls = map[string]bool{
	"append": true, "copy": true, "delete": true, "clear": true,
	"maps.Copy": true, "maps.DeleteFunc": true, "maps.Insert": true,
	"slices.Sort": true, "slices.SortFunc": true, "slices.SortStableFunc": true, "slices.Reverse": true,
	"slices.Delete": true, "slices.DeleteFunc": true, "slices.Insert": true, "slices.Compact": true,
	"slices.CompactFunc": true, "slices.Replace": true,
	"sort.Slice": true, "sort.SliceStable": true, "sort.Strings": true, "sort.Sort": true, "sort.Stable": true,
}

// throughConfig reports whether e is memory of a network's Options or
// Config: an entry, a field, an element, at any depth. With self, the
// selector x.Options or x.Config itself counts too (its address taken, or
// given to a call that writes into it); without, it does not (assigned:
// replaced whole). Selectors are matched by name (the check has no types):
// an Options or Config field of another type counts too.
func throughConfig(e ast.Expr, self bool) bool {
	outer := true
	for {
		switch x := e.(type) {
		case *ast.ParenExpr:
			e = x.X
			continue
		case *ast.SelectorExpr:
			if (x.Sel.Name == "Options" || x.Sel.Name == "Config") && (self || !outer) {
				return true
			}
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.SliceExpr:
			e = x.X
		case *ast.StarExpr:
			e = x.X
		default:
			return false
		}
		outer = false
	}
}

// configWrite is one in-place write found.
type configWrite struct {
	pos  token.Position
	fn   string
	what string
}

// configWrites lists the in-place writes of a network's Options or Config
// in f (file rel of the module) outside the functions of writers:
//
//  1. an assignment (=, op=, ++, --, a range's key or value) to memory
//     inside them: x.Options[k] = v, x.Config.Rules = r,
//     x.Config.Rules[i].Paths[j].Methods[k] = m, x.Config.Settings.ICC = b;
//  2. a call of configWriteCalls on them or memory inside them:
//     delete(x.Options, k), append(x.Config.Rules, r),
//     slices.Sort(x.Config.Settings.DNSUpstreams), copy(x.Config.Rules[1:], r);
//  3. their address, or an address inside them, taken (&x.Config,
//     &x.Config.Rules[i]): whoever holds the pointer can write through it
//     (json.Unmarshal(raw, &x.Config) reuses the arrays it finds).
//
// Replacing them whole (x.Options = m, x.Config = c) is how they change.
// Not seen: writes through a copy of a slice or map taken first
// (rules := x.Config.Rules; rules[0] = r): the rule is stated on Network.
func configWrites(fset *token.FileSet, f *ast.File, rel string, writers map[string]bool) []configWrite {
	var out []configWrite
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Body == nil || writers[rel+":"+fn.Name.Name] {
			continue
		}
		hit := func(n ast.Node, what string) {
			out = append(out, configWrite{fset.Position(n.Pos()), fn.Name.Name, what})
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.AssignStmt:
				if x.Tok == token.DEFINE {
					break
				}
				for _, l := range x.Lhs {
					if throughConfig(l, false) {
						hit(x, "assignment")
					}
				}
			case *ast.IncDecStmt:
				if throughConfig(x.X, false) {
					hit(x, x.Tok.String())
				}
			case *ast.RangeStmt:
				if x.Tok == token.ASSIGN {
					for _, l := range []ast.Expr{x.Key, x.Value} {
						if l != nil && throughConfig(l, false) {
							hit(x, "range assignment")
						}
					}
				}
			case *ast.UnaryExpr:
				if x.Op == token.AND && throughConfig(x.X, true) {
					hit(x, "address taken")
				}
			case *ast.CallExpr:
				name := testutil.CallName(x)
				if configWriteCalls[name] && len(x.Args) > 0 && throughConfig(x.Args[0], true) {
					hit(x, name)
				}
			}
			return true
		})
	}
	return out
}

// TestNoNetworkConfigWrites: no Go file of the module (tests aside) writes
// a network's Options or Config in place outside networkConfigWriters
// (see configWrites for what counts). They are immutable (see Network):
// state clones share them, and the StateEncoder knows a configuration it
// encoded by its identity, so a write in place would change every state
// holding it, and leave the configuration file state.json names stale.
func TestNoNetworkConfigWrites(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	var bad []string
	files, err := testutil.EachModuleFile(root, func(rel string, fset *token.FileSet, f *ast.File) {
		for _, w := range configWrites(fset, f, rel, networkConfigWriters) {
			bad = append(bad, w.pos.String()+" in "+w.fn+": "+w.what)
		}
	})
	require.NoError(t, err)
	require.Greater(t, files, 100, "the module's files were not found from %s", root)
	require.Empty(t, bad, "a network's Options or Config written in place (they are immutable, see Network: replace them whole; "+
		"a constructor writing a value not yet stored goes in networkConfigWriters)")
}

// configWritesSrc has one in-place write on each line marked "caught", and
// reads and whole replacements on the lines marked "allowed".
const configWritesSrc = `package x

func f(n *Network, st *State, cfg policy.NetworkConfig, r policy.EgressRule, rs []policy.EgressRule, other map[string]string) {
	n.Options["clawker.allow"] = "a.example.com" // caught
	(n.Options)["k"] = "v"                       // caught
	delete(n.Options, "clawker.allow")           // caught
	clear(n.Options)                             // caught
	maps.Copy(n.Options, other)                  // caught
	n.Config.Rules = nil                         // caught
	n.Config.Settings.ICC = true                 // caught
	n.Config.Rules[0].Dst = "x.example.com"      // caught
	n.Config.Rules[0].Paths[0].Methods[0] = "GET" // caught
	st.Networks["a"].Config.Rules[0].Port++      // caught
	n.Config.Settings.DNSUpstreams[0] += ":53"   // caught
	rules := append(n.Config.Rules[:1], r)       // caught
	copy(n.Config.Rules, rs)                     // caught
	slices.SortFunc(n.Config.Rules, byDst)       // caught
	sort.Strings(n.Config.Settings.DNSUpstreams) // caught
	p := &n.Config                               // caught
	q := &n.Config.Rules[0]                      // caught
	json.Unmarshal(raw, &n.Options)              // caught
	for _, n.Config.Rules[0].Dst = range names { // caught
	}

	n.Options = map[string]string{"k": "v"}                 // allowed
	n.Config = cfg                                          // allowed
	st.Networks["a"].Config = policy.NetworkConfig{}        // allowed
	n.Options, n.Config = cfg.Options, cfg.Config           // allowed
	v := n.Options["k"]                                     // allowed
	more := append(slices.Clone(n.Config.Rules), r)         // allowed
	for _, r := range n.Config.Rules {                      // allowed
	}
	cfg.Rules[0].Dst = "x.example.com"                      // allowed: a value of its own, not stored yet
	n.Runtime = append(n.Runtime, r)                        // allowed
	c := n.Config.Clone()                                   // allowed
	c.Rules = append(c.Rules, r)                            // allowed
	use(len(n.Options), n.Config.Settings.ICC, rules, more) // allowed
}

func constructor(n *Network) {
	n.Options["named"] = "in writers" // allowed: a constructor named in the writers
}
`

// TestConfigWritesCaught: configWrites finds every in-place write planted
// in configWritesSrc, on its own line, and nothing else.
func TestConfigWritesCaught(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", configWritesSrc, 0)
	require.NoError(t, err)
	var want, got []int
	for i, line := range strings.Split(configWritesSrc, "\n") {
		if strings.HasSuffix(line, "// caught") {
			want = append(want, i+1)
		}
	}
	require.Len(t, want, 19)
	for _, w := range configWrites(fset, f, "x/x.go", map[string]bool{"x/x.go:constructor": true}) {
		require.Equal(t, "f", w.fn)
		got = append(got, w.pos.Line)
	}
	got = slices.Compact(got) // a line may hold two writes
	require.Equal(t, want, got)
	unnamed := 0
	for _, w := range configWrites(fset, f, "x/x.go", nil) {
		if w.fn == "constructor" {
			unnamed++
		}
	}
	require.Equal(t, 1, unnamed, "the constructor's write is not seen unless it is named")
}

// TestNetworkConfigTypesHaveNoWriters: no type reachable from a network's
// Config (policy.NetworkConfig, its rules, path rules, settings...) has a
// method that could write it in place, which configWrites would not see
// (n.Config.Rules[0].Set(...)): no pointer-receiver method, and no method
// at all on a slice or map type.
func TestNetworkConfigTypesHaveNoWriters(t *testing.T) {
	types := map[string]reflect.Kind{} // policy's named types, by name
	var walk func(reflect.Type)
	walk = func(ty reflect.Type) {
		if ty.PkgPath() == reflect.TypeFor[policy.NetworkConfig]().PkgPath() && ty.Name() != "" {
			if _, ok := types[ty.Name()]; ok {
				return
			}
			types[ty.Name()] = ty.Kind()
		}
		switch ty.Kind() {
		case reflect.Struct:
			for i := range ty.NumField() {
				walk(ty.Field(i).Type)
			}
		case reflect.Slice, reflect.Array, reflect.Pointer:
			walk(ty.Elem())
		case reflect.Map:
			walk(ty.Key())
			walk(ty.Elem())
		}
	}
	walk(reflect.TypeFor[policy.NetworkConfig]())
	for _, name := range []string{"NetworkConfig", "NetworkSettings", "EgressRule", "PathRule", "Provenance"} {
		require.Contains(t, types, name)
	}
	paths, err := filepath.Glob("../policy/*.go")
	require.NoError(t, err)
	methods := 0
	for _, path := range paths {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv == nil || len(fn.Recv.List) == 0 {
				continue
			}
			recv, ptr := fn.Recv.List[0].Type, false
			if s, ok := recv.(*ast.StarExpr); ok {
				recv, ptr = s.X, true
			}
			id, ok := recv.(*ast.Ident)
			if !ok {
				continue
			}
			kind, ok := types[id.Name]
			if !ok {
				continue
			}
			methods++
			require.False(t, ptr, "policy.%s.%s has a pointer receiver: it could write a network's Config in place", id.Name, fn.Name.Name)
			require.False(t, kind == reflect.Slice || kind == reflect.Map,
				"policy.%s.%s is a method of a %s type: it could write a network's Config in place", id.Name, fn.Name.Name, kind)
		}
	}
	require.NotZero(t, methods, "no method of the configuration's types found in ../policy")
}
