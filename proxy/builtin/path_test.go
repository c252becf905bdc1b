package builtin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

func TestRawPath(t *testing.T) {
	for target, want := range map[string]string{
		"/a/b?x=1":                     "/a/b",
		"/a%2Fb/..%2f":                 "/a%2Fb/..%2f",
		"/a\\b":                        "/a\\b",
		"//a/b":                        "//a/b",
		"*":                            "*",
		"http://h.test/p/%2e%2e/q?x":   "/p/%2e%2e/q",
		"http://h.test":                "/",
		"http://h.test?x":              "/",
		"https://h.test:8443/a;b/c?/d": "/a;b/c",
	} {
		r := &http.Request{RequestURI: target, URL: &url.URL{}}
		require.Equal(t, want, rawPath(r), target)
	}
}

// What reaches the upstream is the path the client sent, byte for byte,
// over HTTP/1.1 and HTTP/2; every spelling that a reading would move out of
// the allowed prefix (or into a deny) is refused before it gets there.
func TestInspectionForwardsAsSent(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	h.dns.set("open.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{
		allow("api.example.test", policy.ProtoHTTPS, 443, 443, withPaths(policy.Deny,
			policy.PathRule{Path: "/public/secret", Action: policy.Deny},
			policy.PathRule{Path: "/public/", Action: policy.Allow},
		)),
		// No path rules: nothing is decided on the path, and it still goes
		// out as sent.
		allow("open.example.test", policy.ProtoHTTPS, 443, 443, inspected),
	}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	addr := h.webAddr(443)
	tests := []struct {
		host, path string
		ok         bool
	}{
		{"api.example.test", "/public/x", true},
		{"api.example.test", "/public/@scope%2fname", true},
		{"api.example.test", "/public/group%2Fproject/issues?state=open;x", true},
		{"api.example.test", "/public/a%20b/%C3%A9", true},
		{"api.example.test", "/public/a/../b", true},
		{"api.example.test", "/public/a/.%2e/b", true},
		{"api.example.test", "/private/../public/x", false},
		{"api.example.test", "/private/%2e%2e/public/x", false},
		{"api.example.test", "/public/..%2fprivate", false},
		{"api.example.test", "/public/..;/private", false},
		{"api.example.test", "/public/%252e%252e/private", false},
		{"api.example.test", "/public/Secret/x", false},
		{"api.example.test", "/public/SECRET;x/", false},
		{"api.example.test", "/public/%73ecret", false},
		{"api.example.test", "/public/.%2E/secret", false},
		{"api.example.test", "/public/x%00", false},
		{"api.example.test", "/public/%c0%ae%c0%ae/private", false},
		{"api.example.test", "/public/%EF%BC%8E%EF%BC%8E/private", false},
		{"api.example.test", "/public/caf%C3%A9", true},
		{"open.example.test", "/a/../b%2f..%2Fc;x", true},
		{"open.example.test", "/a/%2e%2e/%2F/x", true},
	}
	for _, h2 := range []bool{false, true} {
		cl := h.httpClient("127.0.0.2", addr, h2)
		for _, tt := range tests {
			name := tt.host + tt.path
			if h2 {
				name += " h2"
			}
			t.Run(name, func(t *testing.T) {
				req, err := http.NewRequest("GET", "https://"+tt.host+"/", nil)
				require.NoError(t, err)
				path, query, _ := strings.Cut(tt.path, "?")
				req.URL.Opaque, req.URL.RawQuery = path, query
				resp, err := cl.Do(req)
				require.NoError(t, err)
				body := readAll(t, resp.Body)
				resp.Body.Close()
				if !tt.ok {
					require.Equal(t, 403, resp.StatusCode, body)
					require.Contains(t, resp.Header.Get("X-Clawker-Denied"), "path-rule")
					return
				}
				require.Equal(t, 200, resp.StatusCode, body)
				require.Equal(t, "https GET "+tt.host+" "+tt.path, body, "forwarded byte for byte")
			})
		}
	}
}

// An absolute-form request target is decided on its path, and the path
// goes out as sent.
func TestInspectionAbsoluteForm(t *testing.T) {
	h := newHarness(t)
	h.dns.set("api.example.test", "127.0.0.1")
	pol := &policy.Policy{Allows: []policy.Allowed{
		allow("api.example.test", policy.ProtoHTTPS, 443, 443, withPaths(policy.Deny,
			policy.PathRule{Path: "/public/", Action: policy.Allow})),
	}}
	h.apply(snapshot(1, endpoint(1, "127.0.0.2", pol)))
	for target, want := range map[string]string{
		"https://api.example.test/public/%2e%2e/private": "403",
		"https://api.example.test/public/a%2Fb":          "200 https GET api.example.test /public/a%2Fb",
		"GET *":                                          "403",
		`/public/..\private`:                             "403",
		`/public/a\b`:                                    `200 https GET api.example.test /public/a\b`,
		"/public//x":                                     "200 https GET api.example.test /public//x",
		"//public/x":                                     "403",
		// Go's server answers OPTIONS * itself: nothing is forwarded.
		"OPTIONS *": "200 ",
	} {
		c, err := h.tlsFrom("127.0.0.2", h.webAddr(443), "api.example.test", "http/1.1")
		require.NoError(t, err)
		line := "GET " + target
		if strings.HasSuffix(target, "*") {
			line = target
		}
		_, err = c.Write([]byte(line + " HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n"))
		require.NoError(t, err)
		out := readAll(t, c)
		c.Close()
		code, body, _ := strings.Cut(strings.TrimPrefix(out, "HTTP/1.1 "), " ")
		if code == "200" {
			_, b, _ := strings.Cut(body, "\r\n\r\n")
			code += " " + b
		}
		require.Equal(t, want, code, "%s: %s", target, out)
	}
}

// forwardAsSent puts the path and query on the request line unchanged, or
// forwardable says it cannot (and the request is refused).
func TestForwardAsSent(t *testing.T) {
	for path, ok := range map[string]bool{
		"/a/../b%2f..%2Fc;x": true,
		`/a\b`:               true,
		"/a%zz":              true,
		"*":                  true,
		"//a/b%2F":           true,
		`//a\b`:              false,
	} {
		require.Equal(t, ok, forwardable(path), path)
		if !ok {
			continue
		}
		out := &url.URL{Scheme: "https", Host: "h.test", Path: "/rewritten", RawQuery: "a=1&b"}
		in := &url.URL{RawQuery: "x=%zz;y", ForceQuery: false}
		forwardAsSent(out, in, path)
		require.Equal(t, path+"?x=%zz;y", out.RequestURI(), path)
	}
}

// FuzzForwardAsSent: whatever path the proxy decided on (rawPath of the
// request), the request line it sends upstream carries exactly those bytes,
// or the path is refused as not forwardable.
func FuzzForwardAsSent(f *testing.F) {
	for _, s := range []string{"/public/x", "/public/..%2fprivate", `/a\b`, "//a/b", "/a;b/%2e%2e", "*", "/a%zz", "/@scope%2fname"} {
		f.Add(s, "q=1")
	}
	f.Fuzz(func(t *testing.T, target, query string) {
		if strings.ContainsAny(target, "?#") || strings.Contains(query, "#") {
			return
		}
		r := &http.Request{RequestURI: target, URL: &url.URL{RawQuery: query}}
		path := rawPath(r)
		if !forwardable(path) {
			return
		}
		out := &url.URL{Scheme: "https", Host: "h.test", Path: "/other"}
		forwardAsSent(out, r.URL, path)
		want := path
		if query != "" {
			want += "?" + query
		}
		if path == "" {
			want = "/" + want
		}
		if got := out.RequestURI(); got != want {
			t.Fatalf("decided on %q, would send %q", want, got)
		}
	})
}
