package policy

import (
	"net/url"
	"path"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// The oracles below read a path the way concrete upstreams do, written
// independently of DecidePath's readings (standard library where it
// exists). Each reads the rule paths and the request path alike. A path
// DecidePath allows must be allowed under every oracle: the proxy forwards
// the path as sent, so whatever an upstream makes of it is what was decided.
type oracle struct {
	name string
	read func(string) (string, bool)
}

// keepSlash re-adds the trailing slash path.Clean drops, and makes the
// result rooted.
func keepSlash(orig, cleaned string) string {
	if cleaned == "." || cleaned == "" {
		cleaned = "/"
	}
	if !strings.HasPrefix(cleaned, "/") {
		cleaned = "/" + cleaned
	}
	last := orig[strings.LastIndex(orig, "/")+1:]
	if (strings.HasSuffix(orig, "/") || last == "." || last == "..") && !strings.HasSuffix(cleaned, "/") {
		cleaned += "/"
	}
	return cleaned
}

// escapeData re-escapes '/' and '%' inside a decoded segment, so that a
// data slash never reads as a separator.
func escapeData(seg string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(seg)
}

// cleanSegments resolves dot segments of already split segments, keeping
// empty ones (RFC 3986 remove_dot_segments on segments).
func cleanSegments(segs []string) string {
	var out []string
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func upperHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = byte(strings.ToUpper(string(b[i+1]))[0]), byte(strings.ToUpper(string(b[i+2]))[0])
			i += 2
		}
	}
	return string(b)
}

// splitDecode splits p into segments, strips ";params" from each when
// params, decodes each (a decoded '/' is data) and resolves dot segments.
func splitDecode(p string, params bool) (string, bool) {
	segs := strings.Split(p, "/")[1:]
	for i, s := range segs {
		if params {
			s, _, _ = strings.Cut(s, ";")
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return "", false
		}
		segs[i] = escapeData(d)
	}
	return cleanSegments(segs), true
}

var oracles = []oracle{
	// An object store or a router that resolves nothing: the bytes as sent.
	{"raw", func(p string) (string, bool) { return upperHex(p), true }},
	// Go's ServeMux / most frameworks: decode everything, clean.
	{"decode+clean", func(p string) (string, bool) {
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		return keepSlash(d, path.Clean(d)), true
	}},
	// Routers that split first, decode each segment (%2F is data).
	{"split+decode", func(p string) (string, bool) { return splitDecode(p, false) }},
	// Tomcat/Spring: strip ;params per segment, decode, normalize.
	{"tomcat", func(p string) (string, bool) { return splitDecode(p, true) }},
	// nginx: decode (%2F too), merge slashes, resolve dots.
	{"nginx", func(p string) (string, bool) {
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		var segs []string
		for i, s := range strings.Split(d, "/")[1:] {
			if s != "" || i == len(strings.Split(d, "/"))-2 {
				segs = append(segs, escapeData(s))
			}
		}
		if len(segs) == 0 {
			segs = []string{""}
		}
		return cleanSegments(segs), true
	}},
	// IIS/Windows: '\' is '/', decode twice, trailing dots and spaces go.
	{"windows", func(p string) (string, bool) {
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		if d2, err := url.PathUnescape(d); err == nil {
			d = d2
		}
		d = strings.ReplaceAll(d, `\`, "/")
		segs := strings.Split(d, "/")[1:]
		for i, s := range segs {
			t := strings.TrimRight(s, ". ")
			if t == "" && strings.Count(s, ".") >= 2 {
				t = ".."
			} else if t == "" && strings.Contains(s, ".") {
				t = "."
			}
			segs[i] = escapeData(t)
		}
		return cleanSegments(segs), true
	}},
	// Upstreams that normalize Unicode (NFKC) after decoding: fullwidth
	// '．' '／' '＼' become '.' '/' '\'.
	{"nfkc", func(p string) (string, bool) {
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		d = strings.ReplaceAll(norm.NFKC.String(d), `\`, "/")
		return keepSlash(d, path.Clean(d)), true
	}},
	// WHATWG URL parser (browsers, Node's URL): '\' is '/', %2e is a dot
	// in dot segments, nothing else decoded.
	{"whatwg", func(p string) (string, bool) {
		p = strings.ReplaceAll(p, `\`, "/")
		segs := strings.Split(p, "/")[1:]
		for i, s := range segs {
			switch strings.ToLower(s) {
			case ".", "%2e":
				segs[i] = "."
			case "..", ".%2e", "%2e.", "%2e%2e":
				segs[i] = ".."
			default:
				segs[i] = upperHex(s)
			}
		}
		return cleanSegments(segs), true
	}},
}

// foldKey maps every rune to the smallest of its simple folding orbit.
func foldKey(s string) string {
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}

// oracleAllows decides path under o like DecidePath decides one reading.
func oracleAllows(o oracle, rules []PathRule, def Action, p, method string) bool {
	req, ok := o.read(p)
	if !ok {
		return true // this upstream refuses the path: nothing reached
	}
	for _, r := range rules {
		if !methodMatches(r.Methods, method) {
			continue
		}
		deny := r.Action == Deny
		var hit bool
		if body, isRe := strings.CutPrefix(r.Path, "~"); isRe {
			re := pathRegexp(body, deny)
			hit = re == nil && deny || re != nil && re.MatchString(req)
		} else {
			rp, ok := o.read(r.Path)
			if !ok {
				continue
			}
			if deny {
				hit = strings.HasPrefix(foldKey(req), foldKey(rp))
			} else {
				hit = strings.HasPrefix(req, rp)
			}
		}
		if hit {
			return !deny
		}
	}
	if def == "" {
		def = Allow
		for _, r := range rules {
			if r.Action != Deny {
				def = Deny
			}
		}
	}
	return def == Allow
}

// FuzzPathReadings: a request path that DecidePath allows is allowed by the
// same (canonical) rules under every upstream oracle, so the path the proxy
// forwards (as sent) is never read into something the rules deny; and
// CanonicalRulePath is idempotent on every rule it accepts.
func FuzzPathReadings(f *testing.F) {
	for _, s := range []struct{ allow, deny, path string }{
		{"/public/", "/public/secret", "/public/x"},
		{"/public/", "/admin", "/private/../public/x"},
		{"/public/", "/admin", "/private/%2e%2e/public/x"},
		{"/public/", "/admin", "/public/..%2fprivate"},
		{"/public/", "/admin", "/admin;x/"},
		{"/public/", "/Repos/Secret-Org/", "/repos/secret-org/x"},
		{"/public/", "/admin", "/public/@scope%2fname"},
		{"/api/v4/projects/group%2Fproject/", "/x", "/api/v4/projects/group%2fproject/issues"},
		{"/public/", "/admin", "/public/%252e%252e/admin"},
		{"/public/", "/admin", `/public/..\admin`},
		{"/public/", "/admin", "/public/...//admin"},
		{"/", "/admin", "//admin"},
		{"/", "/secret", "/%C5%BFecret"},
		{"/v1.", "/v1/admin", "/v1./admin"},
		{"/public/", "/admin", "/public/%EF%BC%8E%EF%BC%8E/admin"},
		{"/public/", "/admin", "/%EF%BD%81dmin"},
	} {
		f.Add(s.allow, s.deny, s.path, false)
		f.Add(s.allow, s.deny, s.path, true)
	}
	f.Fuzz(func(t *testing.T, allowPath, denyPath, reqPath string, denyFirst bool) {
		var rules []PathRule
		for _, rp := range []struct {
			p string
			a Action
		}{{denyPath, Deny}, {allowPath, Allow}} {
			c, err := CanonicalRulePath(rp.p)
			if err != nil {
				continue
			}
			if again, err := CanonicalRulePath(c); err != nil || again != c {
				t.Fatalf("CanonicalRulePath not idempotent: %q -> %q -> %q (%v)", rp.p, c, again, err)
			}
			rules = append(rules, PathRule{Path: c, Action: rp.a})
		}
		if !denyFirst && len(rules) == 2 {
			rules[0], rules[1] = rules[1], rules[0]
		}
		v := DecidePath(rules, "", reqPath, "GET")
		if !v.Allowed {
			return
		}
		if !utf8.ValidString(reqPath) || !strings.HasPrefix(reqPath, "/") {
			t.Fatalf("allowed an unreadable path %q: %s", reqPath, v.Detail)
		}
		for _, o := range oracles {
			if !oracleAllows(o, rules, "", reqPath, "GET") {
				got, _ := o.read(reqPath)
				t.Fatalf("rules %+v allow %q (%s) but %s reads it as %q, which they deny", rules, reqPath, v.Detail, o.name, got)
			}
		}
	})
}
