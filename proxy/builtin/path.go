package builtin

import (
	"net/http"
	"net/url"
	"strings"
)

// rawPath returns the request path exactly as the client sent it: the
// request target (HTTP/1) or ":path" (HTTP/2) up to the query, the path of
// an absolute-form target ("GET http://host/p"; "/" when it has none), or
// "*" for an asterisk-form target. Path rules decide on it and the proxy
// forwards it byte for byte (forwardAsSent), so what is decided is what is
// sent (invariant 9).
func rawPath(r *http.Request) string {
	t := r.RequestURI
	if t == "" || t == "*" {
		if t == "" {
			return r.URL.EscapedPath()
		}
		return t
	}
	if t[0] != '/' {
		// Absolute form: skip "scheme://authority".
		if i := strings.Index(t, "://"); i >= 0 {
			rest := t[i+3:]
			j := strings.IndexAny(rest, "/?#")
			if j < 0 || rest[j] != '/' {
				return "/"
			}
			t = rest[j:]
		}
	}
	if i := strings.IndexByte(t, '?'); i >= 0 {
		t = t[:i]
	}
	return t
}

// forwardAsSent makes out's request line carry path (from rawPath) and the
// query byte for byte as the client sent them: Go would otherwise re-encode
// a path it considers badly escaped ('\' becomes %5C) and drop query
// parameters it cannot parse. A path starting with "//" cannot go through
// URL.Opaque (Go would read it as an authority), so it is set as Path and
// RawPath; forwardable reports whether out then carries it unchanged.
func forwardAsSent(out *url.URL, in *url.URL, path string) {
	out.RawQuery, out.ForceQuery = in.RawQuery, in.ForceQuery
	if !strings.HasPrefix(path, "//") {
		out.Opaque, out.Path, out.RawPath = path, "", ""
		return
	}
	out.Opaque = ""
	if p, err := url.PathUnescape(path); err == nil {
		out.Path, out.RawPath = p, path
	}
}

// forwardable reports whether forwardAsSent can send path unchanged.
func forwardable(path string) bool {
	var u url.URL
	forwardAsSent(&u, &url.URL{}, path)
	got := u.Opaque
	if got == "" {
		got = u.EscapedPath()
	}
	return got == path
}
