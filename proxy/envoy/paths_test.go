package envoy

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// pathSpellings are request paths in every spelling the policy tests know,
// plain and hostile.
var pathSpellings = []string{
	"/", "/public/x", "/public/", "/public", "/publicx", "/public/@scope%2fname", "/public/@scope%2Fname",
	"/public/group%2Fproject/issues", "/public/a%20b", "/public/%C3%A9t%C3%A9", "/public/./x", "/public/a/../x",
	"/public/x.tar.gz", "/public/.well-known/x", "/private/x", "/private/../public/x", "/private/%2e%2e/public/x",
	"/private/.%2E/public/x", "/public/..", "/public/..%2fprivate", `/public/..\private`, "/public/..%5cprivate",
	"/public/%252e%252e/private", "/public/..;/private", "/public/..%3b/private", "/public/.../private",
	"/public/..%20/private", "/public//../private", "/%70ublic/x", "/public%2Fx", "/public/%zz", "/public/%00",
	"/public/%c0%ae", "/public/%80", "/public/x?q=1", "/public/x?q=%zz;/../",
	"/repos/secret-org/x", "/Repos/Secret-Org/x", "/REPOS/SECRET-ORG/", "/repos/%73ecret-org/x",
	"/repos/%53ECRET-org/x", "/repos/%2573ecret-org/x", "/repos%2Fsecret-org/x", "/repos//secret-org/x",
	"/repos/./secret-org/x", "/admin;x/", "/admin./x", "/adm/in", "/administrator", "/%E2%84%AAey", "/%C5%BFecret",
	"/key", "/secret", "/v1/x", "/v1/%41", "/V2/ADMIN", "/v2/admin", "/v2/%61dmin", "/api/v4/projects/group%2Fproject/x",
	"/api/v4/projects/group/project/x", "/api/v4/projects/group%2fproject/x", "/api/v4/projects/secret%2Frepo/x",
	"/api/v4/projects/secret/repo/x", "/x%2F", "/x/a%2E", "/a%3Ab", "/a:b", "/public/%EF%BC%8E%EF%BC%8E/private",
	"/%EF%BD%81dmin", "/public/cafe%CC%81",
}

// TestPathDecisionsMatchBuiltin is the differential test of the path
// decision: for rule sets covering prefixes, encoded slashes, denies and
// regexes, Envoy (the generated routes, evaluated as Envoy evaluates them)
// never allows a path that policy.DecidePath (the builtin engine) refuses,
// and decides every plain path (one that the guard lets through; without
// escapes where a regex rule is in force) exactly as it does.
func TestPathDecisionsMatchBuiltin(t *testing.T) {
	plain := regexp.MustCompile("^(?:" + plainPathRegex + ")$")
	sets := map[string][]policy.PathRule{
		"only public":         {{Path: "/public/", Action: policy.Allow}},
		"public minus secret": {{Path: "/public/secret", Action: policy.Deny}, {Path: "/public/", Action: policy.Allow}},
		"deny org":            {{Path: "/repos/secret-org/", Action: policy.Deny}, {Path: "/admin", Action: policy.Deny}},
		"deny folded":         {{Path: "/key", Action: policy.Deny}, {Path: "/secret", Action: policy.Deny}},
		"gitlab allow":        {{Path: "/api/v4/projects/group%2Fproject/", Action: policy.Allow}},
		"gitlab deny":         {{Path: "/api/v4/projects/secret%2Frepo/", Action: policy.Deny}},
		"regexes":             {{Path: "~^/v[0-9]+/admin", Action: policy.Deny}, {Path: "~^/v[0-9]+/", Action: policy.Allow}},
		"methods":             {{Path: "/public/", Methods: []string{"GET"}, Action: policy.Allow}},
		"escape rule":         {{Path: "/a%3Ab", Action: policy.Allow}, {Path: "/x/a%2E", Action: policy.Deny}},
	}
	for name, rules := range sets {
		t.Run(name, func(t *testing.T) {
			snap := comprehensive()
			for i := range snap.Endpoints[1].Policy.Allows {
				a := &snap.Endpoints[1].Policy.Allows[i]
				if a.Pattern == "git.example.test" {
					a.Paths, a.PathDefault = rules, ""
				}
			}
			out, err := Translate(snap, buildModel(t, snap), testOptions(t))
			require.NoError(t, err)
			require.NoError(t, Check(out))
			fc := selectChain(listenerByKey(t, out, "web:443"), "git.example.test", "tls", ipA)
			rc := routeByName(t, out, strings.TrimPrefix(outcome(t, fc), "inspect:"))
			for _, method := range []string{"GET", "post"} {
				for _, p := range pathSpellings {
					got := request(t, rc, "git.example.test", method, p)
					envoyOK := !strings.HasPrefix(got, "403")
					raw, _, _ := strings.Cut(p, "?")
					v := policy.DecidePath(rules, "", raw, method)
					if envoyOK {
						require.True(t, v.Allowed, "envoy allows %s %s that the builtin engine refuses (%s)", method, p, v.Detail)
					}
					// Regexes see escaped paths only in the builtin engine.
					if plain.MatchString(p) && !(hasRegex(rules) && strings.Contains(raw, "%")) {
						require.Equal(t, v.Allowed, envoyOK, "plain path %s %s: builtin %s, envoy %s", method, p, v.Detail, got)
					}
				}
			}
		})
	}
}

func hasRegex(rules []policy.PathRule) bool {
	for _, r := range rules {
		if strings.HasPrefix(r.Path, "~") {
			return true
		}
	}
	return false
}

// The guard lets every everyday spelling through and no ambiguous one.
func TestPlainPathRegex(t *testing.T) {
	plain := regexp.MustCompile("^(?:" + plainPathRegex + ")$")
	for _, p := range []string{"/", "/public/x", "/public/", "/public/@scope%2fname", "/api/v4/projects/group%2Fproject/issues",
		"/public/a%20b", "/public/x.tar.gz", "/public/.well-known/x", "/v1/items?x=1;y=../..",
		"/a:b@c!$&'()*+,=~-_", "/a%3Ab", "/x%2F"} {
		require.True(t, plain.MatchString(p), p)
	}
	for _, p := range []string{"", "*", "//x", "/a//b", "/a/%2F/b", "/./x", "/a/..", "/a/.%2e/b", "/a./b", "/a%2E", "/a%20/b",
		"/a;b", "/a%3Bb", `/a\b`, "/a%5Cb", "/a%25", "/a%252e", "/a%zz", "/a%2", "/a%00", "/a%7F", "/a%C0%AE", "/a%80",
		"/a%E0%80%AE", "/a%ED%A0%80", "/a%F4%90%80%80", "/a#b", "/a b", "/\xc3\xa9", "/a%2F%2Fb",
		"/%C3%A9", "/%EF%BC%8E%EF%BC%8E", "/%E2%84%AA"} {
		require.False(t, plain.MatchString(p), p)
	}
}
