package archtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const mod = "github.com/clawker-fw/clawker-fw"

// cliLibraries are the third-party packages the admin CLI may link besides
// the standard library: cobra and its flag package (what docker, hubble and
// cilium use), and cobra's Windows-only helper.
var cliLibraries = map[string]bool{
	"github.com/spf13/cobra":               true,
	"github.com/spf13/pflag":               true,
	"github.com/inconshreveable/mousetrap": true,
}

// pkg is what the rules need of one package of `go list -deps -json`.
type pkg struct {
	ImportPath string
	Standard   bool
	Deps       []string // transitive
}

// under reports whether path is dir (relative to the module) or inside it.
func under(path, dir string) bool {
	full := mod + "/" + dir
	return path == full || strings.HasPrefix(path, full+"/")
}

func project(path string) bool { return path == mod || strings.HasPrefix(path, mod+"/") }

// violations checks the layering rules over pkgs (import path → package):
//  1. policy (the pure decision core) imports nothing of the project;
//  2. bpf, dns, proxy/... and netguard import nothing under plugin/;
//  3. the proxy verdict proxy/verdict (pure, like policy) imports of the
//     project only policy, and of the rest only the standard library and
//     what policy links;
//  4. the CLI cmd/clawker-fw imports of the project only plugin/api, and
//     otherwise only the standard library and cliLibraries.
func violations(pkgs map[string]pkg) []string {
	var out []string
	for _, p := range pkgs {
		for _, d := range p.Deps {
			switch {
			case under(p.ImportPath, "policy") && project(d) && !under(d, "policy"):
				out = append(out, fmt.Sprintf("%s imports %s: policy imports nothing of the project", p.ImportPath, d))
			case p.ImportPath == mod+"/proxy/verdict" && project(d) && !under(d, "policy"):
				out = append(out, fmt.Sprintf("%s imports %s: the proxy verdict imports only policy of the project", p.ImportPath, d))
			case p.ImportPath == mod+"/proxy/verdict" && !project(d) && !pkgs[d].Standard && !slices.Contains(pkgs[mod+"/policy"].Deps, d):
				out = append(out, fmt.Sprintf("%s imports %s: the proxy verdict is pure (policy and the standard library)", p.ImportPath, d))
			case (under(p.ImportPath, "bpf") || under(p.ImportPath, "dns") || under(p.ImportPath, "proxy") ||
				under(p.ImportPath, "netguard")) && under(d, "plugin"):
				out = append(out, fmt.Sprintf("%s imports %s: nothing below plugin imports plugin", p.ImportPath, d))
			case under(p.ImportPath, "cmd/clawker-fw") && project(d) && !under(d, "plugin/api"):
				out = append(out, fmt.Sprintf("%s imports %s: the CLI imports only plugin/api of the project", p.ImportPath, d))
			case under(p.ImportPath, "cmd/clawker-fw") && !project(d) && !pkgs[d].Standard && !cliLibraries[d]:
				out = append(out, fmt.Sprintf("%s imports %s: the CLI links only the standard library and CLI libraries", p.ImportPath, d))
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestViolations(t *testing.T) {
	std := func(path string) pkg { return pkg{ImportPath: path, Standard: true} }
	// of is a project package; its deps are project paths unless they
	// start with "std:" (the standard library) or "ext:" (third party).
	of := func(path string, deps ...string) pkg {
		for i, d := range deps {
			if s, ok := strings.CutPrefix(d, "std:"); ok {
				deps[i] = s
			} else if s, ok := strings.CutPrefix(d, "ext:"); ok {
				deps[i] = s
			} else {
				deps[i] = mod + "/" + d
			}
		}
		return pkg{ImportPath: mod + "/" + path, Deps: deps}
	}
	tests := []struct {
		name string
		pkgs []pkg
		want []string // substrings, one per violation
	}{
		{"clean layering", []pkg{
			of("policy", "std:net/netip"),
			of("proxy/model", "policy"),
			of("dns", "policy", "proxy/model", "bpf"),
			of("plugin", "policy", "dns", "plugin/api"),
			of("cmd/clawker-fw", "plugin/api", "std:net/http"),
			std("net/netip"), std("net/http"),
		}, nil},
		{"policy imports the project", []pkg{of("policy", "store")}, []string{"policy imports " + mod + "/store"}},
		{"policy imports itself below", []pkg{of("policy", "policy/internal/x")}, nil},
		{"verdict imports policy", []pkg{of("proxy/verdict", "policy", "std:net/netip"), std("net/netip")}, nil},
		{"verdict imports the model", []pkg{of("proxy/verdict", "policy", "proxy/model")}, []string{"proxy/verdict imports " + mod + "/proxy/model"}},
		{"verdict links a library", []pkg{of("proxy/verdict", "ext:github.com/sirupsen/logrus"), {ImportPath: "github.com/sirupsen/logrus"}},
			[]string{"proxy/verdict imports github.com/sirupsen/logrus"}},
		{"verdict links what policy links", []pkg{of("proxy/verdict", "policy", "ext:golang.org/x/net/idna"), of("policy", "ext:golang.org/x/net/idna"),
			{ImportPath: "golang.org/x/net/idna"}}, nil},
		{"verdict's test table may import it", []pkg{of("proxy/verdict/verdicttest", "proxy/verdict", "policy")}, nil},
		{"dns imports plugin", []pkg{of("dns", "plugin/queue")}, []string{"dns imports " + mod + "/plugin/queue"}},
		{"proxy subpackage imports plugin", []pkg{of("proxy/builtin", "plugin")}, []string{"proxy/builtin imports " + mod + "/plugin:"}},
		{"bpf imports plugin/api", []pkg{of("bpf", "plugin/api")}, []string{"bpf imports"}},
		{"netguard imports plugin", []pkg{of("netguard", "plugin/wire")}, []string{"netguard imports"}},
		{"plugin may import plugin", []pkg{of("plugin/wire", "plugin")}, nil},
		{"dnsx is not dns", []pkg{of("dnsx", "plugin")}, nil},
		{"CLI imports the core", []pkg{of("cmd/clawker-fw", "plugin/api", "plugin")}, []string{"cmd/clawker-fw imports " + mod + "/plugin:"}},
		{"CLI imports policy", []pkg{of("cmd/clawker-fw", "policy")}, []string{"imports " + mod + "/policy"}},
		{"CLI links a third-party library", []pkg{of("cmd/clawker-fw", "ext:github.com/sirupsen/logrus"),
			{ImportPath: "github.com/sirupsen/logrus"}}, []string{"imports github.com/sirupsen/logrus"}},
		{"other commands may link anything", []pkg{of("cmd/clawker-fw-plugin", "plugin", "ext:github.com/sirupsen/logrus")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]pkg{}
			for _, p := range tt.pkgs {
				m[p.ImportPath] = p
			}
			got := violations(m)
			require.Len(t, got, len(tt.want), "%q", got)
			for i, w := range tt.want {
				require.Contains(t, got[i], w)
			}
		})
	}
}

// TestLayering checks the rules against the real module.
func TestLayering(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Deps", mod+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list: %s", stderr.String())
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else {
			require.NoError(t, err)
		}
		pkgs[p.ImportPath] = p
	}
	// The rules name these packages: a rename must not make them vacuous.
	for _, dir := range []string{"policy", "bpf", "dns", "proxy/builtin", "proxy/envoy", "proxy/model", "proxy/verdict", "netguard", "cmd/clawker-fw", "plugin/api"} {
		require.Contains(t, pkgs, mod+"/"+dir)
	}
	require.NotEmpty(t, pkgs[mod+"/cmd/clawker-fw"].Deps)
	require.Empty(t, violations(pkgs))
}
