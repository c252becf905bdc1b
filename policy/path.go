package policy

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxPathLen bounds the request paths DecidePath reads; a longer path is
// unreadable (denied) where path rules are at stake.
const MaxPathLen = 8 << 10

// A reading is one way an upstream may read a request path. Upstreams
// disagree on every step below, so a path is allowed only when every
// combination of them is allowed (see DecidePath); a path that holds none of
// the bytes a step looks at has one reading, the path as sent.
type reading struct {
	decode   uint8 // 0: escapes kept as sent, 1: decoded once, 2: decoded twice, 3: decoded once and NFKC-normalized
	escSlash bool  // a decoded '/' (%2F) separates segments
	escBack  bool  // a decoded '\' (%5C) separates segments
	rawBack  bool  // a raw '\' separates segments
	params   uint8 // 0: ";params" kept, 1: stripped at a raw ';', 2: also at a decoded one
	merge    bool  // empty segments ("//") dropped before dot segments are resolved
	dots     bool  // "." and ".." segments resolved (RFC 3986 5.2.4)
	trim     bool  // trailing dots and spaces trimmed from each segment (Windows)
}

// item is one byte of a path after decoding.
type item struct {
	b    byte
	kind uint8
}

const (
	itemData = iota // a byte as sent
	itemDec         // a byte decoded from an escape
	itemKept        // an escape left undecoded: rendered %XX
	itemSep         // a segment separator
)

var (
	errNotPath = errors.New("not an origin-form path (it must start with '/')")
	errTooLong = fmt.Errorf("path longer than %d bytes", MaxPathLen)
)

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

// escapeAt decodes the escape at s[i] ('%' followed by two hex digits).
func escapeAt(s string, i int) (byte, bool) {
	if i+2 >= len(s) || s[i] != '%' {
		return 0, false
	}
	h, ok1 := unhex(s[i+1])
	l, ok2 := unhex(s[i+2])
	return h<<4 | l, ok1 && ok2
}

const hexUpper = "0123456789ABCDEF"

// decodeKeepSlashes decodes every escape of s once, except that escaped
// slashes and backslashes stay escaped (upper-cased): the first pass of an
// upstream that decodes twice. A '%' that starts no escape stays as it is.
func decodeKeepSlashes(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c, ok := escapeAt(s, i)
		if !ok {
			b.WriteByte(s[i])
			continue
		}
		i += 2
		if c == '/' || c == '\\' {
			b.WriteByte('%')
			b.WriteByte(hexUpper[c>>4])
			b.WriteByte(hexUpper[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// checkDecoded reports the first problem of a decoded byte string: a
// control byte (NUL included) or bytes that are not UTF-8 (an overlong
// encoding such as %C0%AE for '.', a truncated sequence).
func checkDecoded(dec []byte) error {
	for _, c := range dec {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("escape decodes to the control byte 0x%02x", c)
		}
	}
	if !utf8.Valid(dec) {
		return errors.New("escapes decode to invalid UTF-8 (an overlong or truncated sequence)")
	}
	return nil
}

// decodeAll decodes every escape of s; strict refuses a '%' that starts no
// escape.
func decodeAll(s string, strict bool) ([]byte, error) {
	dec := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			c, ok := escapeAt(s, i)
			if !ok {
				if strict {
					return nil, fmt.Errorf("bad percent-escape %q", s[i:min(i+3, len(s))])
				}
				dec = append(dec, '%')
				continue
			}
			dec = append(dec, c)
			i += 2
			continue
		}
		dec = append(dec, s[i])
	}
	return dec, nil
}

// hasFold reports whether s contains sub, ASCII case-insensitively.
func hasFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), sub)
}

// hasDoubleEscape reports whether s holds "%25" followed by two hex digits
// (an escape of an escape).
func hasDoubleEscape(s string) bool {
	for i := 0; i+4 < len(s); i++ {
		if c, ok := escapeAt(s, i); ok && c == '%' {
			_, ok1 := unhex(s[i+3])
			_, ok2 := unhex(s[i+4])
			if ok1 && ok2 {
				return true
			}
		}
	}
	return false
}

// checkRequestPath refuses what no reading can make sense of. It returns
// the path decoded twice (decodeKeepSlashes), which the readings that
// decode twice start from.
func checkRequestPath(raw string) (string, error) {
	if raw == "" || raw[0] != '/' {
		return "", errNotPath
	}
	if len(raw) > MaxPathLen {
		return "", errTooLong
	}
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c <= ' ' || c == 0x7f:
			return "", fmt.Errorf("control byte or space 0x%02x in the path", c)
		case c >= 0x80:
			return "", fmt.Errorf("raw non-ASCII byte 0x%02x in the path (clients percent-encode it)", c)
		case c == '#':
			return "", errors.New("a fragment ('#') in the request path")
		}
	}
	dec, err := decodeAll(raw, true)
	if err != nil {
		return "", err
	}
	if err := checkDecoded(dec); err != nil {
		return "", err
	}
	twice := decodeKeepSlashes(raw)
	if hasDoubleEscape(twice) {
		return "", errors.New("the path is percent-encoded more than twice")
	}
	dec2, _ := decodeAll(twice, false)
	if err := checkDecoded(dec2); err != nil {
		return "", fmt.Errorf("decoded twice: %w", err)
	}
	return twice, nil
}

// features are the steps of a reading that can change a given string.
type features struct {
	esc, double, slashEsc, backEsc, rawBack, semi, semiEsc, empty, dots, trim bool
	// compat: decoded, the string changes under NFKC (fullwidth '／' '．'
	// '＼', ligatures, ...), as upstreams that normalize Unicode see it.
	compat bool
}

// MaxReadings bounds the readings of one path, and readingBudget the bytes
// read over all of them (a few milliseconds of work): a path that piles up
// ambiguous spellings beyond that is unreadable (denied), so no request can
// make the proxy spend more.
const (
	MaxReadings   = 64
	readingBudget = 256 << 10
)

func (f *features) add(s string) {
	f.esc = f.esc || strings.Contains(s, "%")
	if dec, err := decodeAll(s, false); err == nil && !norm.NFKC.IsNormal(dec) {
		f.compat = true
		// What the normalized reading holds (it is NFKC-normal: no loop).
		f.add(strings.ReplaceAll(norm.NFKC.String(string(dec)), "%", "%25"))
	}
	f.double = f.double || hasFold(s, "%25")
	f.slashEsc = f.slashEsc || hasFold(s, "%2f")
	f.backEsc = f.backEsc || hasFold(s, "%5c")
	f.rawBack = f.rawBack || strings.Contains(s, `\`)
	f.semi = f.semi || strings.Contains(s, ";")
	f.semiEsc = f.semiEsc || hasFold(s, "%3b")
	// Walk the tokens (a byte, or an escape) for the steps that depend on
	// where a byte sits: dot segments, trailing dots, empty segments.
	const (
		other = iota
		sep
		dot
		space
		semi
	)
	class := func(i int) (int, int) {
		if v, ok := escapeAt(s, i); ok {
			switch v {
			case '/', '\\':
				return sep, 3
			case '.':
				return dot, 3
			case ' ':
				return space, 3
			case ';':
				return semi, 3
			}
			return other, 3
		}
		switch s[i] {
		case '/', '\\':
			return sep, 1
		case '.':
			return dot, 1
		case ';':
			return semi, 1
		}
		return other, 1
	}
	prev, runAfterSep := sep, true
	for i := 0; i < len(s); {
		c, n := class(i)
		switch c {
		case sep:
			f.empty = f.empty || prev == sep
			if prev == dot || prev == space {
				f.trim = true
			}
			runAfterSep = true
		case dot:
			f.dots = f.dots || runAfterSep
		case space:
		case semi:
			if prev == dot || prev == space {
				f.trim = true
			}
			runAfterSep = false
		default:
			runAfterSep = false
		}
		prev = c
		i += n
	}
	if prev == dot || prev == space {
		f.trim = true
	}
	f.empty = f.empty || f.semi || f.semiEsc || f.trim
}

func bools(on bool) []bool {
	if on {
		return []bool{false, true}
	}
	return []bool{false}
}

func upto(n uint8) []uint8 {
	out := make([]uint8, n+1)
	for i := range out {
		out[i] = uint8(i)
	}
	return out
}

// readings lists the readings that can differ for strings with features f,
// the reading "as sent" first.
func (f features) readings() []reading {
	var decodes []uint8
	switch {
	case f.double:
		decodes = upto(2)
	case f.esc:
		decodes = upto(1)
	default:
		decodes = upto(0)
	}
	var params uint8
	switch {
	case f.semiEsc:
		params = 2
	case f.semi:
		params = 1
	}
	if f.compat {
		decodes = append(decodes, 3)
	}
	var out []reading
	for _, d := range decodes {
		esc := d == 1 || d == 2
		for _, es := range bools(esc && f.slashEsc) {
			for _, eb := range bools(esc && f.backEsc) {
				for _, rb := range bools(f.rawBack) {
					for _, p := range upto(params) {
						for _, m := range bools(f.empty) {
							for _, dt := range bools(f.dots) {
								for _, tr := range bools(f.trim) {
									out = append(out, reading{decode: d, escSlash: es, escBack: eb, rawBack: rb, params: p, merge: m, dots: dt, trim: tr})
								}
							}
						}
					}
				}
			}
		}
	}
	return out
}

// read renders s (a path as sent, or a canonical rule path) under rd. In
// the result '/' only ever separates segments: a byte that is not decoded
// in this reading, or a decoded '/' or '%' that is data, is written as an
// upper-case %XX escape. twice is s decoded once with slashes kept
// (decodeKeepSlashes), used when rd decodes twice.
func (rd reading) read(s, twice string) string {
	src := s
	switch rd.decode {
	case 2:
		src = twice
	case 3:
		// Decoded, normalized; a '%' is data (re-escaped), and every
		// slash and backslash the normalization leaves separates.
		dec, _ := decodeAll(s, false)
		src = strings.ReplaceAll(norm.NFKC.String(string(dec)), "%", "%25")
	}
	items := make([]item, 0, len(src))
	for i := 0; i < len(src); i++ {
		c := src[i]
		if c == '%' {
			v, ok := escapeAt(src, i)
			switch {
			case !ok:
				// A '%' that starts no escape (possible only in the
				// second pass of a double decode) is a literal '%'.
				items = append(items, item{b: '%', kind: itemKept})
				continue
			case rd.decode == 0:
				items = append(items, item{b: v, kind: itemKept})
			case v == '/' && rd.escSlash, v == '\\' && rd.escBack:
				items = append(items, item{b: '/', kind: itemSep})
			default:
				items = append(items, item{b: v, kind: itemDec})
			}
			i += 2
			continue
		}
		if c == '/' || (c == '\\' && (rd.rawBack || rd.decode == 3)) {
			items = append(items, item{b: '/', kind: itemSep})
			continue
		}
		items = append(items, item{b: c, kind: itemData})
	}
	// Segments as spans of items; items[0] is the leading separator of a
	// checked path.
	segs := make([]span, 0, 16)
	start := 0
	if len(items) > 0 && items[0].kind == itemSep {
		start = 1
	}
	for i := start; i < len(items); i++ {
		if items[i].kind == itemSep {
			segs = append(segs, span{lo: start, hi: i})
			start = i + 1
		}
	}
	segs = append(segs, span{lo: start, hi: len(items)})
	for i := range segs {
		sp := &segs[i]
		if rd.params > 0 {
			for j := sp.lo; j < sp.hi; j++ {
				if it := items[j]; it.b == ';' && (it.kind == itemData || (it.kind == itemDec && rd.params == 2)) {
					sp.hi = j
					break
				}
			}
		}
		if rd.trim {
			sp.trim(items)
		}
		if sp.dots == 0 {
			sp.dots = sp.dotKind(items)
		}
	}
	if rd.merge {
		kept := segs[:0]
		for i, sp := range segs {
			if sp.hi > sp.lo || sp.dots > 0 || i == len(segs)-1 {
				kept = append(kept, sp)
			}
		}
		segs = kept
	}
	if rd.dots {
		segs = resolveDots(segs)
	}
	var b strings.Builder
	b.Grow(len(src) + 8)
	for _, sp := range segs {
		b.WriteByte('/')
		if sp.dots > 0 && sp.hi == sp.lo {
			b.WriteString(".."[:sp.dots])
			continue
		}
		for _, it := range items[sp.lo:sp.hi] {
			switch {
			case it.kind == itemKept, it.b == '/', it.b == '%':
				b.WriteByte('%')
				b.WriteByte(hexUpper[it.b>>4])
				b.WriteByte(hexUpper[it.b&15])
			default:
				b.WriteByte(it.b)
			}
		}
	}
	return b.String()
}

// span is one segment: items[lo:hi], or when trimming left only dots, "."
// (dots 1) or ".." (dots 2) with lo == hi.
type span struct {
	lo, hi int
	dots   int
}

func isDot(it item) bool { return it.b == '.' && it.kind != itemKept }

// trim drops trailing dots and spaces as Windows does; a segment of dots
// and spaces only becomes "." or ".." (so it still climbs).
func (sp *span) trim(items []item) {
	end, dots := sp.hi, 0
	for end > sp.lo && (isDot(items[end-1]) || (items[end-1].b == ' ' && items[end-1].kind != itemKept)) {
		if isDot(items[end-1]) {
			dots++
		}
		end--
	}
	if end == sp.lo && dots > 0 {
		sp.dots = min(dots, 2)
	}
	sp.hi = end
}

// dotKind is 1 for ".", 2 for "..", else 0 (encoded dots count once decoded).
func (sp span) dotKind(items []item) int {
	seg := items[sp.lo:sp.hi]
	switch {
	case len(seg) == 1 && isDot(seg[0]):
		return 1
	case len(seg) == 2 && isDot(seg[0]) && isDot(seg[1]):
		return 2
	}
	return 0
}

// resolveDots removes "." and ".." segments (".." never climbs above the
// root); a path that ended in one keeps its trailing slash.
func resolveDots(segs []span) []span {
	out := make([]span, 0, len(segs))
	for i, sp := range segs {
		last := i == len(segs)-1
		switch sp.dots {
		case 1:
			if last {
				out = append(out, span{})
			}
		case 2:
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, span{})
			}
		default:
			out = append(out, sp)
		}
	}
	if len(out) == 0 {
		out = append(out, span{})
	}
	return out
}

// foldRune maps r to the smallest rune of its simple case folding orbit, so
// runes that differ only in case (in any of the ways Unicode folds: 'K' 'k'
// KELVIN SIGN, 's' 'S' LONG S) map to one rune.
func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		// The orbit of an ASCII letter is its two cases plus runes above
		// ASCII (KELVIN SIGN, LONG S): its upper case is the smallest.
		if r >= 'a' && r <= 'z' {
			r -= 'a' - 'A'
		}
		return r
	}
	m := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		if f < m {
			m = f
		}
	}
	return m
}

// hasPrefixFold reports whether s starts with prefix, case-folded.
func hasPrefixFold(s, prefix string) bool {
	for prefix != "" {
		if s == "" {
			return false
		}
		pr, pn := utf8.DecodeRuneInString(prefix)
		sr, sn := utf8.DecodeRuneInString(s)
		if pr != sr && foldRune(pr) != foldRune(sr) {
			return false
		}
		prefix, s = prefix[pn:], s[sn:]
	}
	return true
}

var regexCache sync.Map // "allow:"/"deny:" + body -> *regexp.Regexp (nil when it does not compile)

// pathRegexp compiles a "~regex" rule body for matching readings: a deny
// rule matches case-insensitively (denies fail closed).
func pathRegexp(body string, deny bool) *regexp.Regexp {
	key := "allow:" + body
	if deny {
		key = "deny:" + body
	}
	if v, ok := regexCache.Load(key); ok {
		return v.(*regexp.Regexp)
	}
	src := body
	if deny {
		src = "(?i)" + body
	}
	re, err := CompilePathRegexp(src)
	if err != nil {
		re = nil
	}
	regexCache.Store(key, re)
	return re
}

// PathVerdict is the decision on one request path.
type PathVerdict struct {
	Allowed bool
	// Rule is the path rule that decided (the one that denied a reading,
	// or for an allowed path the one that allowed it as sent); nil when the
	// default decided or the path could not be read.
	Rule *PathRule
	// Reading is the reading of the path that a rule or the default
	// denied, when it differs from the path as sent.
	Reading string
	// Detail says what decided, for logs and denials: "path /x/ GET allow",
	// "path default deny", "unreadable path: ...", with " (read as
	// /y)" when a reading other than the path as sent was denied.
	Detail string
}

// DecidePath applies an entry's path rules (compiled order; the first rule
// that matches decides, else def) to a request path as sent on the wire
// (from its '/' up to, not including, the query), for method.
//
// An upstream may read the same bytes in several ways, and the proxy
// forwards them as sent, so the request is allowed only if every plausible
// reading of the path is allowed:
//  1. a path that no reading can make sense of is denied: not starting
//     with '/' ("*", an absolute URL), a bad or control-byte escape (NUL
//     included), escapes that decode to invalid UTF-8 (overlong '.' or
//     '/'), raw control, space or non-ASCII bytes, a fragment, encoding
//     more than twice, more than MaxPathLen bytes;
//  2. the readings combine: escapes kept as sent, decoded once, or twice
//     (%252e), or decoded and NFKC-normalized (fullwidth '．' and '／' read
//     as '.' and '/'); a decoded %2F, a decoded %5C and a raw '\' each read as a
//     separator or as data; ";params" kept or stripped from each segment
//     (at a raw ';', and at a decoded one); empty segments kept or merged;
//     dot segments (raw, %2E-encoded, mixed) kept or resolved; trailing
//     dots and spaces of a segment kept or trimmed (a step is combined only
//     when the path or a rule holds what it looks at; more than MaxReadings
//     readings make the path unreadable);
//  3. rule paths are read the same way as the request under each reading
//     (a rule's %2F is a separator exactly where the request's is);
//  4. an allow rule matches a reading exactly (prefix, or "~regex"); a deny
//     rule matches case-folded (Unicode simple folding for prefixes, (?i)
//     for regexes): denies fail closed;
//  5. the first rule whose methods hold method (case-insensitively) and
//     whose path matches decides that reading; else def, where an empty def
//     is deny when any rule allows, else allow;
//  6. one denied reading denies the request.
func DecidePath(rules []PathRule, def Action, path, method string) PathVerdict {
	twice, err := checkRequestPath(path)
	if err != nil {
		return PathVerdict{Detail: "unreadable path: " + err.Error()}
	}
	if def == "" {
		def = Allow
		for _, r := range rules {
			if r.Action != Deny {
				def = Deny
				break
			}
		}
	}
	var f features
	f.add(path)
	f.add(twice)
	for _, r := range rules {
		if !strings.HasPrefix(r.Path, "~") {
			f.add(r.Path)
		}
	}
	rds := f.readings()
	if len(rds) > MaxReadings || len(rds)*len(path) > readingBudget {
		return PathVerdict{Detail: fmt.Sprintf("unreadable path: %d bytes that can be read in %d ways", len(path), len(rds))}
	}
	var first PathVerdict
	var asSent string
	for i, rd := range rds {
		req := rd.read(path, twice)
		if i == 0 {
			asSent = req // the path as sent, escape digits upper-cased
		}
		rule := decideReading(rules, rd, req, method)
		v := PathVerdict{Allowed: def == Allow, Detail: "path default " + string(def)}
		if rule != nil {
			v = PathVerdict{Allowed: rule.Action != Deny, Rule: rule, Detail: DescribePathRule(*rule)}
		}
		if i == 0 {
			first = v
		}
		if !v.Allowed {
			if req != asSent {
				v.Reading = req
				v.Detail += fmt.Sprintf(" (read as %s)", req)
			}
			return v
		}
	}
	return first
}

// decideReading returns the first rule that matches reading req of a
// request path under rd, or nil.
func decideReading(rules []PathRule, rd reading, req, method string) *PathRule {
	for i := range rules {
		r := &rules[i]
		if !methodMatches(r.Methods, method) {
			continue
		}
		deny := r.Action == Deny
		if body, ok := strings.CutPrefix(r.Path, "~"); ok {
			re := pathRegexp(body, deny)
			if re == nil {
				if deny {
					return r // a deny that cannot be evaluated matches
				}
				continue
			}
			if re.MatchString(req) {
				return r
			}
			continue
		}
		rp := rd.read(r.Path, decodeKeepSlashes(r.Path))
		if deny {
			if hasPrefixFold(req, rp) {
				return r
			}
			continue
		}
		if strings.HasPrefix(req, rp) {
			return r
		}
	}
	return nil
}

func methodMatches(methods []string, method string) bool {
	if len(methods) == 0 {
		return true
	}
	for _, m := range methods {
		if strings.EqualFold(m, method) {
			return true
		}
	}
	return false
}

// DescribePathRule renders r for logs and denials: "path /x/ GET,HEAD allow".
func DescribePathRule(r PathRule) string {
	s := "path " + r.Path
	if len(r.Methods) > 0 {
		s += " " + strings.Join(r.Methods, ",")
	}
	a := r.Action
	if a == "" {
		a = Allow
	}
	return s + " " + string(a)
}

// isUnreserved reports RFC 3986 unreserved characters: their escapes mean
// exactly the character to every upstream.
func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// CanonicalRulePath validates a path-rule prefix and returns its canonical
// form, the one DecidePath reads like a request path:
//  1. it starts with '/'; it holds no space, control or non-ASCII byte, no
//     '?' or '#', no '\' and no ';' (raw or escaped: upstreams differ on
//     what they mean);
//  2. every '%' starts an escape of two hex digits; escapes of unreserved
//     characters are decoded ("%7E" is "~"), every other escape is kept
//     with upper-case digits ("%2f" is "%2F": an encoded slash, as in
//     GitLab's "group%2Fproject"); escapes never decode to a control byte,
//     to invalid UTF-8, or to another escape ("%252F" is refused);
//  3. with every slash read as a separator it has no empty segment and no
//     "." or ".." segment (nor one of dots and spaces only).
func CanonicalRulePath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", errors.New("a path must start with '/' (or '~' for a regular expression)")
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c <= ' ' || c == 0x7f:
			return "", fmt.Errorf("invalid character %q in path", rune(c))
		case c >= 0x80:
			return "", fmt.Errorf("non-ASCII byte 0x%02x in path (percent-encode it)", c)
		case c == '?' || c == '#':
			return "", fmt.Errorf("a path rule cannot hold %q (query strings and fragments are not matched)", rune(c))
		case c == '\\':
			return "", errors.New(`a path rule cannot hold '\' (upstreams differ on whether it separates segments)`)
		case c == ';':
			return "", errors.New("a path rule cannot hold ';' (upstreams strip ;parameters from segments)")
		case c != '%':
			b.WriteByte(c)
			continue
		}
		v, ok := escapeAt(p, i)
		if !ok {
			return "", fmt.Errorf("bad percent-escape %q (write %%25 for a literal '%%')", p[i:min(i+3, len(p))])
		}
		i += 2
		switch {
		case v == '\\':
			return "", errors.New(`a path rule cannot hold %5C, an escaped '\' (upstreams differ on whether it separates segments)`)
		case v == ';':
			return "", errors.New("a path rule cannot hold %3B, an escaped ';' (upstreams strip ;parameters from segments)")
		case isUnreserved(v):
			b.WriteByte(v)
		default:
			b.WriteByte('%')
			b.WriteByte(hexUpper[v>>4])
			b.WriteByte(hexUpper[v&15])
		}
	}
	out := b.String()
	dec, err := decodeAll(out, true)
	if err != nil {
		return "", err
	}
	if err := checkDecoded(dec); err != nil {
		return "", err
	}
	if hasDoubleEscape(out) {
		return "", errors.New("a path rule cannot hold a double-encoded escape (%25 followed by two hex digits)")
	}
	segs := strings.Split(string(dec), "/")[1:]
	for i, seg := range segs {
		if seg == "" && i < len(segs)-1 {
			return "", errors.New("a path rule cannot hold an empty segment (\"//\", raw or escaped: upstreams merge them)")
		}
		if seg != "" && strings.Trim(seg, ". ") == "" && strings.Contains(seg, ".") {
			return "", fmt.Errorf("a path rule cannot hold the dot segment %q (raw or %%2E-encoded); write the path it stands for", seg)
		}
	}
	return out, nil
}
