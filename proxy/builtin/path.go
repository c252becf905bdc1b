package builtin

import (
	"regexp"
	"strings"
	"sync"

	"github.com/clawker-fw/clawker-fw/policy"
)

// unhex returns the value of a hex digit and whether c is one.
func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// normalizePath turns a raw request path (as it appeared on the wire, with
// its percent-encoding) into the form path rules are matched against.
//
// It reads the path the way the most lenient upstream could, so that no
// encoding lets a request escape a prefix:
//  1. the query is dropped;
//  2. every percent-escape is decoded, %2F and %5C included, and '\' counts
//     as '/' (an upstream that decodes them sees more segments, never fewer);
//  3. empty segments ("//") are folded;
//  4. dot segments ("." and "..", however they were encoded) are resolved;
//     ".." never climbs above the root.
//
// ok is false for paths that cannot be read at all (a bad escape, a NUL):
// such requests are denied.
func normalizePath(raw string) (string, bool) {
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	var dec []byte
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			if i+2 >= len(raw) {
				return "", false
			}
			h, ok1 := unhex(raw[i+1])
			l, ok2 := unhex(raw[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			c = h<<4 | l
			i += 2
		}
		if c == 0 {
			return "", false
		}
		if c == '\\' {
			c = '/'
		}
		dec = append(dec, c)
	}
	var out []string
	for _, seg := range strings.Split(string(dec), "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	p := "/" + strings.Join(out, "/")
	// Keep a trailing slash: "/repos/" and "/repos" are different prefixes.
	if len(out) > 0 && (strings.HasSuffix(string(dec), "/") || strings.HasSuffix(string(dec), "/.") || strings.HasSuffix(string(dec), "/..")) {
		p += "/"
	}
	return p, true
}

var regexCache sync.Map // string -> *regexp.Regexp (nil on compile error)

func compiled(expr string) *regexp.Regexp {
	if v, ok := regexCache.Load(expr); ok {
		return v.(*regexp.Regexp)
	}
	// Anchor at the start of the path whatever the rule wrote.
	re, err := regexp.Compile(`^(?:` + strings.TrimPrefix(expr, "^") + `)`)
	if err != nil {
		re = nil
	}
	regexCache.Store(expr, re)
	return re
}

// pathMatches reports whether rule r matches the normalized path and method.
func pathMatches(r policy.PathRule, path, method string) bool {
	if len(r.Methods) > 0 {
		found := false
		for _, m := range r.Methods {
			if strings.EqualFold(m, method) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if strings.HasPrefix(r.Path, "~") {
		re := compiled(r.Path[1:])
		return re != nil && re.MatchString(path)
	}
	return strings.HasPrefix(path, r.Path)
}

// decidePath applies an entry's path rules: the first rule that matches
// decides, else PathDefault (allow when unset and no rule allows). It
// returns whether the request is allowed and the rule that decided ("" for
// the default).
func decidePath(rules []policy.PathRule, def policy.Action, rawPath, method string) (bool, string) {
	path, ok := normalizePath(rawPath)
	if !ok {
		return false, "unreadable path"
	}
	for _, r := range rules {
		if pathMatches(r, path, method) {
			return r.Action != policy.Deny, describePathRule(r)
		}
	}
	if def == "" {
		def = policy.Allow
		for _, r := range rules {
			if r.Action != policy.Deny {
				def = policy.Deny
				break
			}
		}
	}
	return def == policy.Allow, "path default " + string(def)
}

func describePathRule(r policy.PathRule) string {
	s := "path " + r.Path
	if len(r.Methods) > 0 {
		s += " " + strings.Join(r.Methods, ",")
	}
	a := r.Action
	if a == "" {
		a = policy.Allow
	}
	return s + " " + string(a)
}
