package envoy

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Path rules under Envoy. The HTTP connection manager neither normalizes
// nor merges nor unescapes (normalize_path false, merge_slashes false,
// path_with_escaped_slashes_action KEEP_UNCHANGED): Envoy routes on the
// path as sent and forwards it as sent, like the builtin engine. Envoy
// cannot compute the readings of a path (policy.DecidePath), so a virtual
// host with path rules first refuses every path whose readings could differ
// in more than an encoded slash (plainPathRegex); on the rest the readings
// are the path as sent, it decoded with %2F as data, and it decoded with %2F
// as '/', and the routes below decide exactly as DecidePath does:
//   - an allow prefix matches the path as sent (escape digits in any case);
//   - a deny prefix matches when any reading matches it case-folded: each
//     character of the rule, in every case, raw or %-encoded; each '/' as
//     '/' or %2F;
//   - an allow regex matches only paths without escapes (where the readings
//     are one), a deny regex matches case-insensitively, and any escaped
//     path where a deny regex is in force is refused.
//
// So Envoy never allows what the builtin engine refuses, and decides like it
// on every path with no dot or empty segment, ;params, backslash, double or
// malformed encoding, escaped non-ASCII, or trailing dot or space in a
// segment (which Envoy refuses where path rules are at stake).

const hexDigit = `[0-9A-Fa-f]`

// plainPathRegex matches a whole ":path" (query included) whose readings
// differ in encoded slashes at most: segments of characters that are data in
// every reading (raw, or escapes of ASCII other than control, '%', '.',
// '/', ';', '\' and space), with dots and encoded spaces inside a segment
// but never at its end, separated by '/' or %2F, never empty. Escaped
// non-ASCII is refused too: Envoy cannot read it under Unicode
// normalization (fullwidth '．' is '.' under NFKC).
var plainPathRegex = func() string {
	ascii := `%(?:2[1-46-9A-Da-d]|3[0-9AaC-Fc-f]|4[0-9A-Fa-f]|5[0-9ABD-Fabd-f]|6[0-9A-Fa-f]|7[0-9A-Ea-e])`
	raw := "[A-Za-z0-9\\-_~!$&'()*+,=:@\"<>\\[\\]^`{|}]"
	plain := `(?:` + raw + `|` + ascii + `)`
	tail := `(?:\.|%2[Ee]|%20)`
	seg := `(?:(?:` + plain + `|` + tail + `)*` + plain + `)`
	sep := `(?:/|%2[Ff])`
	return `/(?:` + seg + `(?:` + sep + seg + `)*` + sep + `?)?(?:\?.*)?`
}()

// plainPathGuard matches requests whose path is not plain.
func plainPathGuard() *route.RouteMatch {
	return &route.RouteMatch{
		PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `.*`}},
		Headers: []*route.HeaderMatcher{{
			Name:                 ":path",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(plainPathRegex)},
			InvertMatch:          true,
		}},
	}
}

// escapedPath matches a ":path" with an escape before its query.
func escapedPath(invert bool) *route.HeaderMatcher {
	return &route.HeaderMatcher{
		Name:                 ":path",
		HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(`[^?]*%.*`)},
		InvertMatch:          invert,
	}
}

func safeRegex(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// hexClass matches one hex digit in either case.
func hexClass(d byte) string {
	if d >= '0' && d <= '9' {
		return string(d)
	}
	return "[" + strings.ToUpper(string(d)) + strings.ToLower(string(d)) + "]"
}

// escRegex matches the escape of byte b, digits in either case.
func escRegex(b byte) string {
	const hex = "0123456789ABCDEF"
	return "%" + hexClass(hex[b>>4]) + hexClass(hex[b&15])
}

// allowPrefixRegex matches a path starting with the canonical rule prefix p
// as sent: raw characters exactly, escapes with digits in either case.
func allowPrefixRegex(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			v := unhexPair(p[i+1], p[i+2])
			b.WriteString(escRegex(v))
			i += 2
			continue
		}
		b.WriteString(regexp.QuoteMeta(p[i : i+1]))
	}
	return b.String() + `(?s:.*)`
}

func unhexPair(h, l byte) byte {
	v := func(c byte) byte {
		switch {
		case c >= '0' && c <= '9':
			return c - '0'
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10
		}
		return c - 'A' + 10
	}
	return v(h)<<4 | v(l)
}

// denyPrefixRegex matches a path that any reading of makes start with the
// canonical rule prefix p, case-folded: each decoded character of p in every
// case of its simple folding orbit, raw or as escaped UTF-8 bytes; each '/'
// or %2F as either; the trailing dots and spaces of a segment optional (the
// reading that trims them).
func denyPrefixRegex(p string) string {
	// Decode p into separators and bytes.
	type unit struct {
		sep bool
		b   byte
	}
	var units []unit
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '/':
			units = append(units, unit{sep: true})
		case p[i] == '%' && i+2 < len(p):
			v := unhexPair(p[i+1], p[i+2])
			i += 2
			units = append(units, unit{sep: v == '/', b: v})
		default:
			units = append(units, unit{b: p[i]})
		}
	}
	var out strings.Builder
	for i := 0; i < len(units); {
		if units[i].sep {
			out.WriteString(`(?:/|%2[Ff])`)
			i++
			continue
		}
		// One segment's bytes: split off its trailing dots and spaces.
		j := i
		for j < len(units) && !units[j].sep {
			j++
		}
		seg := make([]byte, 0, j-i)
		for _, u := range units[i:j] {
			seg = append(seg, u.b)
		}
		body := strings.TrimRight(string(seg), ". ")
		out.WriteString(foldedRegex(body))
		if trail := string(seg[len(body):]); trail != "" {
			out.WriteString(`(?:` + foldedRegex(trail) + `)?`)
		}
		i = j
	}
	return out.String() + `(?s:.*)`
}

// foldedRegex matches s (UTF-8) with every rune in any case, raw or
// percent-encoded byte by byte.
func foldedRegex(s string) string {
	var b strings.Builder
	for _, r := range s {
		alts := []string{}
		for f := r; ; {
			alts = append(alts, regexp.QuoteMeta(string(f)))
			var enc [utf8.UTFMax]byte
			n := utf8.EncodeRune(enc[:], f)
			e := ""
			for _, c := range enc[:n] {
				e += escRegex(c)
			}
			alts = append(alts, e)
			if f = unicode.SimpleFold(f); f == r {
				break
			}
		}
		b.WriteString(`(?:` + strings.Join(alts, `|`) + `)`)
	}
	return b.String()
}
