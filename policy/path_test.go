package policy

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// onlyPublic allows /public/ (every method) and nothing else.
var onlyPublic = []PathRule{{Path: "/public/", Action: Allow}}

// denySecret denies a prefix and allows the rest.
var denySecret = []PathRule{{Path: "/repos/secret-org/", Action: Deny}, {Path: "/admin", Action: Deny}}

func TestDecidePathSpellings(t *testing.T) {
	tests := []struct {
		name  string
		rules []PathRule
		path  string
		ok    bool
	}{
		// Controls: plain and legitimately encoded paths.
		{"plain", onlyPublic, "/public/x", true},
		{"prefix itself", onlyPublic, "/public/", true},
		{"npm scoped package", onlyPublic, "/public/@scope%2fname", true},
		{"npm scoped upper", onlyPublic, "/public/@scope%2Fname", true},
		{"gitlab project", onlyPublic, "/public/api/v4/projects/group%2Fproject/issues", true},
		{"encoded space", onlyPublic, "/public/a%20b", true},
		{"utf-8 escape", onlyPublic, "/public/%C3%A9t%C3%A9", true},
		{"harmless dot segment", onlyPublic, "/public/./x", true},
		{"dot segment staying inside", onlyPublic, "/public/a/../x", true},
		{"file extension", onlyPublic, "/public/x.tar.gz", true},
		{"hidden file", onlyPublic, "/public/.well-known/x", true},
		{"outside", onlyPublic, "/private/x", false},
		{"root", onlyPublic, "/", false},

		// Dot segments that change the prefix, in every spelling.
		{"raw dots", onlyPublic, "/private/../public/x", false},
		{"encoded dots", onlyPublic, "/private/%2e%2e/public/x", false},
		{"encoded dots upper", onlyPublic, "/private/%2E%2E/public/x", false},
		{"mixed dots", onlyPublic, "/private/.%2e/public/x", false},
		{"mixed dots 2", onlyPublic, "/private/%2e./public/x", false},
		{"climb out raw", onlyPublic, "/public/../private", false},
		{"climb out trailing", onlyPublic, "/public/..", false},
		{"climb out encoded slash", onlyPublic, "/public/..%2fprivate", false},
		{"climb out encoded slash upper", onlyPublic, "/public/..%2Fprivate", false},
		{"climb out backslash", onlyPublic, `/public/..\private`, false},
		{"climb out encoded backslash", onlyPublic, "/public/..%5cprivate", false},
		{"double-encoded dots", onlyPublic, "/public/%252e%252e/private", false},
		{"double-encoded slash", onlyPublic, "/public/..%252fprivate", false},
		{"triple-encoded", onlyPublic, "/public/%25252e%25252e/private", false},
		{"params dot segment (tomcat)", onlyPublic, "/public/..;/private", false},
		{"encoded params dot segment", onlyPublic, "/public/..%3b/private", false},
		{"trailing dots (windows)", onlyPublic, "/public/.../private", false},
		{"dots and space (windows)", onlyPublic, "/public/..%20/private", false},
		{"empty segments then dots", onlyPublic, "/public//../private", false},
		{"encoded first segment", onlyPublic, "/%70ublic/x", false},
		{"encoded slash in prefix", onlyPublic, "/public%2Fx", false},
		{"backslash prefix", onlyPublic, `/public\x`, false},

		// Unicode compatibility forms (NFKC): fullwidth dots and slashes.
		{"fullwidth dots", onlyPublic, "/public/%EF%BC%8E%EF%BC%8E/private", false},
		{"fullwidth slash", onlyPublic, "/public/..%EF%BC%8Fprivate", false},
		{"fullwidth backslash", onlyPublic, "/public/..%EF%BC%BCprivate", false},
		{"two dot leader", onlyPublic, "/public/%E2%80%A5/private", false},
		{"decomposed accent", onlyPublic, "/public/cafe%CC%81", true},

		// Unreadable paths fail closed.
		{"bad escape", onlyPublic, "/public/%zz", false},
		{"truncated escape", onlyPublic, "/public/%2", false},
		{"unicode escape", onlyPublic, "/public/%u002e", false},
		{"nul", onlyPublic, "/public/%00", false},
		{"newline", onlyPublic, "/public/%0a", false},
		{"double-encoded nul", onlyPublic, "/public/%2500", false},
		{"overlong dot", onlyPublic, "/public/%c0%ae%c0%ae/private", false},
		{"overlong slash", onlyPublic, "/public/..%c0%afprivate", false},
		{"lone continuation byte", onlyPublic, "/public/%80", false},
		{"raw non-ascii", onlyPublic, "/public/\xc3\xa9", false},
		{"fragment", onlyPublic, "/public/x#y", false},
		{"asterisk", onlyPublic, "*", false},
		{"absolute", onlyPublic, "http://h/public/x", false},
		{"empty", onlyPublic, "", false},
		{"too long", onlyPublic, "/public/" + strings.Repeat("a", MaxPathLen), false},
		{"too ambiguous", onlyPublic, "/public/" + strings.Repeat(`a%252e.;%3b\%5c%2f//%20`, 3), false},
		{"long but plain", onlyPublic, "/public/" + strings.Repeat("a/", 4000), true},

		// Denies: case-folded, every spelling, ;params.
		{"deny control", denySecret, "/repos/other/x", true},
		{"deny plain", denySecret, "/repos/secret-org/x", false},
		{"deny case", denySecret, "/Repos/Secret-Org/x", false},
		{"deny upper", denySecret, "/REPOS/SECRET-ORG/", false},
		{"deny encoded letter", denySecret, "/repos/%73ecret-org/x", false},
		{"deny encoded upper letter", denySecret, "/repos/%53ECRET-org/x", false},
		{"deny double-encoded letter", denySecret, "/repos/%2573ecret-org/x", false},
		{"deny encoded slash", denySecret, "/repos%2Fsecret-org/x", false},
		{"deny backslash", denySecret, `/repos\secret-org\x`, false},
		{"deny empty segment", denySecret, "/repos//secret-org/x", false},
		{"deny leading empty segment", denySecret, "//admin", false},
		{"deny dot segment", denySecret, "/repos/./secret-org/x", false},
		{"deny dots", denySecret, "/repos/x/../secret-org/x", false},
		{"deny params", denySecret, "/admin;x/", false},
		{"deny params mid", denySecret, "/repos;x=1/secret-org/x", false},
		{"deny encoded params", denySecret, "/repos%3bx/secret-org/y", false},
		{"deny trailing dot (windows)", denySecret, "/admin./x", false},
		{"deny kelvin sign", []PathRule{{Path: "/key", Action: Deny}}, "/%E2%84%AAey", false},
		{"deny long s", []PathRule{{Path: "/secret", Action: Deny}}, "/%C5%BFecret", false},
		{"deny prefix not a segment", denySecret, "/administrator", false},
		{"deny neighbour", denySecret, "/adm/in", true},
		{"deny fullwidth letter", denySecret, "/%EF%BD%81dmin", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := DecidePath(tt.rules, "", tt.path, "GET")
			require.Equal(t, tt.ok, v.Allowed, "%s: %s", tt.path, v.Detail)
			require.NotEmpty(t, v.Detail)
		})
	}
}

func TestDecidePathRulesAndMethods(t *testing.T) {
	rules := []PathRule{
		{Path: "/repos/private", Action: Deny},
		{Path: "~^/v[0-9]+/admin", Action: Deny},
		{Path: "/repos/", Methods: []string{"GET", "HEAD"}, Action: Allow},
		{Path: "~^/v[0-9]+/search", Methods: []string{"POST"}, Action: Allow},
	}
	tests := []struct {
		method, path string
		ok           bool
		detail       string
	}{
		{"GET", "/repos/x", true, "path /repos/ GET,HEAD allow"},
		{"get", "/repos/x", true, "path /repos/ GET,HEAD allow"},
		{"POST", "/repos/x", false, "path default deny"},
		{"GET", "/repos/private/x", false, "path /repos/private deny"},
		{"GET", "/repos/%70rivate", false, "path /repos/private deny (read as /repos/private)"},
		{"GET", "/repos/a/%2e%2e/private", false, "path /repos/private deny (read as /repos/private)"},
		{"GET", "/repos/..%2f..%2fadmin", false, "path default deny (read as /admin)"},
		{"POST", "/v2/search", true, "path ~^/v[0-9]+/search POST allow"},
		{"POST", "/v2/search/../../v2/admin", false, "path ~^/v[0-9]+/admin deny (read as /v2/admin)"},
		{"GET", "/V2/ADMIN", false, "path ~^/v[0-9]+/admin deny"},
		{"POST", "/x/v2/search", false, "path default deny"},
		{"GET", "/other", false, "path default deny"},
		{"GET", "*", false, "unreadable path: not an origin-form path (it must start with '/')"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			v := DecidePath(rules, "", tt.path, tt.method)
			require.Equal(t, tt.ok, v.Allowed, v.Detail)
			require.Equal(t, tt.detail, v.Detail)
		})
	}
	v := DecidePath([]PathRule{{Path: "/admin", Action: Deny}}, "", "/x", "GET")
	require.True(t, v.Allowed, "default is allow when no rule allows")
	v = DecidePath(nil, Deny, "/x", "GET")
	require.False(t, v.Allowed)
}

// A rule's encoded slash is read like the request's: GitLab project paths.
func TestDecidePathEncodedSlashRule(t *testing.T) {
	allow := []PathRule{{Path: "/api/v4/projects/group%2Fproject/", Action: Allow}}
	for path, ok := range map[string]bool{
		"/api/v4/projects/group%2Fproject/issues":              true,
		"/api/v4/projects/group%2fproject/issues":              true,
		"/api/v4/projects/group/project/issues":                false, // as sent it is another path
		"/api/v4/projects/other%2Fproject/issues":              false,
		"/api/v4/projects/group%2Fproject/..%2F..%2Fother%2Fx": false,
	} {
		require.Equal(t, ok, DecidePath(allow, "", path, "GET").Allowed, path)
	}
	deny := []PathRule{{Path: "/api/v4/projects/secret%2Frepo/", Action: Deny}}
	for path, ok := range map[string]bool{
		"/api/v4/projects/secret%2Frepo/x": false,
		"/api/v4/projects/secret/repo/x":   false,
		"/api/v4/projects/SECRET%2frepo/x": false,
		"/api/v4/projects/secret%2Fother":  true,
	} {
		require.Equal(t, ok, DecidePath(deny, "", path, "GET").Allowed, path)
	}
}

func TestCanonicalRulePath(t *testing.T) {
	good := map[string]string{
		"/":                         "/",
		"/public/":                  "/public/",
		"/%70ublic/":                "/public/",
		"/a%7eb":                    "/a~b",
		"/api/group%2fproject/":     "/api/group%2Fproject/",
		"/a%3ab":                    "/a%3Ab",
		"/files/100%25":             "/files/100%25",
		"/%C3%A9":                   "/%C3%A9",
		"/v1.2/":                    "/v1.2/",
		"/.well-known/":             "/.well-known/",
		"/x/..y":                    "/x/..y",
		"/@scope%2Fname":            "/@scope%2Fname",
		"/repos/my-org/":            "/repos/my-org/",
		"/a:b@c!$&'()*+,=":          "/a:b@c!$&'()*+,=",
		"/%41%42":                   "/AB",
		"/trailing/slash/":          "/trailing/slash/",
		"/percent%25zz":             "/percent%25zz",
		"/a%2E%2Eb":                 "/a..b",
		"/%E2%82%AC":                "/%E2%82%AC",
		"/sp%20ace":                 "/sp%20ace",
		"/q%3Fmark":                 "/q%3Fmark",
		"/h%23sh":                   "/h%23sh",
		"/a/b/c/d/e/f/g/h/i/j/k/l/": "/a/b/c/d/e/f/g/h/i/j/k/l/",
	}
	for in, want := range good {
		got, err := CanonicalRulePath(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		again, err := CanonicalRulePath(got)
		require.NoError(t, err)
		require.Equal(t, got, again, "idempotent")
	}
	bad := map[string]string{
		"public":      "must start with '/'",
		"/a%zz":       "bad percent-escape",
		"/a%2":        "bad percent-escape",
		"/a%00":       "control byte",
		"/a%0A":       "control byte",
		"/a%C0%AE":    "invalid UTF-8",
		"/a%80":       "invalid UTF-8",
		"/a\\b":       `cannot hold '\'`,
		"/a%5Cb":      "%5C",
		"/a;b":        "cannot hold ';'",
		"/a%3bb":      "%3B",
		"/a/../b":     "dot segment",
		"/a/./b":      "dot segment",
		"/a/%2e%2E/b": "dot segment",
		"/a/.%2e":     "dot segment",
		"/a/...":      "dot segment",
		"/a/.":        "dot segment",
		"/a//b":       "empty segment",
		"//a":         "empty segment",
		"/a%2F%2Fb":   "empty segment",
		"/a/%2Fb":     "empty segment",
		"/a%252e":     "double-encoded",
		"/a%252F":     "double-encoded",
		"/a b":        "invalid character",
		"/a?b":        "query strings",
		"/a#b":        "fragments",
		"/\xc3\xa9":   "non-ASCII",
	}
	for in, want := range bad {
		_, err := CanonicalRulePath(in)
		require.ErrorContains(t, err, want, in)
	}
}

// Normalize stores the canonical path and names the field of a bad one.
func TestNormalizePathRule(t *testing.T) {
	r, err := Normalize(EgressRule{Dst: "a.test", Paths: []PathRule{{Path: "/%70ublic/"}, {Path: "/x%2fy", Action: Deny}}})
	require.NoError(t, err)
	require.Equal(t, "/public/", r.Paths[0].Path)
	require.Equal(t, "/x%2Fy", r.Paths[1].Path)
	_, err = ParseLabels(map[string]string{KeyRules: `[{"dst":"a.test","paths":[{"path":"/ok/"},{"path":"/a/%2e%2e/b"}]}]`}, "c")
	require.EqualError(t, err, `clawker.rules[0].paths[1].path: "/a/%2e%2e/b": a path rule cannot hold the dot segment ".." (raw or %2E-encoded); write the path it stands for`)
	_, err = ParseLabels(map[string]string{KeyRules: `[{"dst":"a.test","paths":[{"path":"/a%zz"}]}]`}, "c")
	require.EqualError(t, err, `clawker.rules[0].paths[0].path: "/a%zz": bad percent-escape "%zz" (write %25 for a literal '%')`)
}
