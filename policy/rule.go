package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// MaxPortRange is the widest port range one rule may name. Ranges expand to
// one route (and for tcp/ssh/udp one listener) per port, so they are bounded.
const MaxPortRange = 256

// DefaultPort returns the port a rule of protocol p gets when it names none,
// and false for protocols that have no default (tcp, udp).
func DefaultPort(p Proto) (uint16, bool) {
	switch p {
	case ProtoHTTPS:
		return 443, true
	case ProtoHTTP:
		return 80, true
	case ProtoSSH:
		return 22, true
	}
	return 0, false
}

// ParseProto parses a protocol name (case-insensitive; "tls" is an alias of
// https, empty means https).
func ParseProto(s string) (Proto, error) {
	switch p := Proto(strings.ToLower(s)); p {
	case "", "tls":
		return ProtoHTTPS, nil
	case ProtoHTTPS, ProtoHTTP, ProtoSSH, ProtoTCP, ProtoUDP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want https, tls, http, ssh, tcp or udp)", s)
}

// parseAction parses a rule or path action; empty means allow.
func parseAction(s string) (Action, error) {
	switch a := Action(strings.ToLower(s)); a {
	case "", Allow:
		return Allow, nil
	case Deny:
		return Deny, nil
	}
	return "", fmt.Errorf("unknown action %q (want allow or deny)", s)
}

// isWeb reports whether p carries HTTP (and so may have path rules).
func isWeb(p Proto) bool { return p == ProtoHTTPS || p == ProtoHTTP }

// ParsePortRange parses "443" or "7000-7010" (inclusive). Ports are 1-65535
// and a range may hold at most MaxPortRange ports.
func ParsePortRange(s string) (lo, hi uint16, err error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	if lo, err = parsePort(loS); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = parsePort(hiS); err != nil {
			return 0, 0, err
		}
	}
	return lo, hi, checkRange(lo, hi)
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("empty port")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("invalid port %q (want a number 1-65535 or a range lo-hi)", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > 65535 {
		return 0, fmt.Errorf("port %s out of range 1-65535", s)
	}
	return uint16(n), nil
}

func checkRange(lo, hi uint16) error {
	if lo == 0 {
		return fmt.Errorf("port 0 out of range 1-65535")
	}
	if hi < lo {
		return fmt.Errorf("port range %d-%d is reversed", lo, hi)
	}
	if n := int(hi) - int(lo) + 1; n > MaxPortRange {
		return fmt.Errorf("port range %d-%d holds %d ports; at most %d are allowed per rule", lo, hi, n, MaxPortRange)
	}
	return nil
}

// formatPorts renders a rule's port range as "443" or "7000-7010".
func formatPorts(lo, hi uint16) string {
	if hi == lo || hi == 0 {
		return strconv.Itoa(int(lo))
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

// Normalize validates r and returns its normal form. It is what every rule
// source runs, and it is idempotent. In order:
//
//  1. Dst is normalized by NormalizeDst;
//  2. Proto defaults to https ("tls" is https), Action to allow;
//  3. a missing port takes the protocol's default (https 443, http 80, ssh
//     22); tcp and udp rules must name one; PortEnd == Port for one port;
//     a range holds at most MaxPortRange ports;
//  4. tcp, ssh and udp rules need an exact name or an IP/CIDR, never a
//     wildcard: their listener dials one fixed upstream;
//  5. path rules are only for https/http allow rules; each path is a prefix
//     starting with "/", in canonical form (CanonicalRulePath), or "~regex"
//     (anchored at the start of the path, it must compile); methods are
//     upper-cased tokens; a path action defaults to allow;
//  6. PathDefault defaults to deny when any path rule allows, else allow,
//     and is only allowed with path rules;
//  7. path rules force Inspect on; Inspect is only for https/http allow rules.
//
// A deny keeps its protocol and port for provenance, but covers its name's
// whole subtree (or whole CIDR) on every port.
//
// Errors are *ruleError values naming the sub-field; the rule sources turn
// them into *FieldError.
func Normalize(r EgressRule) (EgressRule, error) {
	dst, _, err := NormalizeDst(r.Dst)
	if err != nil {
		return r, &ruleError{field: "dst", value: r.Dst, reason: err.Error(), err: err}
	}
	r.Dst = dst
	proto, err := ParseProto(string(r.Proto))
	if err != nil {
		return r, &ruleError{field: "proto", value: string(r.Proto), reason: err.Error()}
	}
	action, err := parseAction(string(r.Action))
	if err != nil {
		return r, &ruleError{field: "action", value: string(r.Action), reason: err.Error()}
	}
	r.Proto, r.Action = proto, action
	switch {
	case r.Port == 0 && r.PortEnd != 0:
		return r, ruleErrf("port", formatPorts(r.Port, r.PortEnd), "port range without a start")
	case r.Port == 0:
		p, ok := DefaultPort(r.Proto)
		if !ok {
			return r, ruleErrf("port", "", "%s rules need a port", r.Proto)
		}
		r.Port, r.PortEnd = p, p
	case r.PortEnd == 0:
		r.PortEnd = r.Port
	}
	if err := checkRange(r.Port, r.PortEnd); err != nil {
		return r, ruleErrf("port", formatPorts(r.Port, r.PortEnd), "%s", err)
	}
	if r.Proto.Dedicated() && strings.HasPrefix(r.Dst, ".") {
		return r, ruleErrf("dst", r.Dst, "%s rules need an exact host name, not a wildcard", r.Proto)
	}
	if len(r.Paths) > 0 {
		if !isWeb(r.Proto) {
			return r, ruleErrf("paths", r.Proto.String(), "path rules are only for https and http rules")
		}
		if r.Action != Allow {
			return r, ruleErrf("paths", string(r.Action), "path rules need an allow rule; deny a path with a path rule whose action is deny")
		}
		paths := make([]PathRule, len(r.Paths))
		anyAllow := false
		for i, pr := range r.Paths {
			if paths[i], err = normalizePath(i, pr); err != nil {
				return r, err
			}
			anyAllow = anyAllow || paths[i].Action == Allow
		}
		r.Paths = paths
		switch r.PathDefault {
		case "":
			r.PathDefault = Allow
			if anyAllow {
				r.PathDefault = Deny
			}
		default:
			def, err := parseAction(string(r.PathDefault))
			if err != nil {
				return r, ruleErrf("path_default", string(r.PathDefault), "%s", err)
			}
			r.PathDefault = def
		}
		r.Inspect = true
	} else {
		r.Paths = nil
		if r.PathDefault != "" {
			return r, ruleErrf("path_default", string(r.PathDefault), "path_default needs path rules")
		}
	}
	if r.Inspect && (!isWeb(r.Proto) || r.Action != Allow) {
		return r, ruleErrf("inspect", "true", "inspect is only for https and http allow rules")
	}
	return r, nil
}

// String returns the protocol name.
func (p Proto) String() string { return string(p) }

// normalizePath validates path rule i (step 5 of Normalize); a prefix takes
// its canonical form (CanonicalRulePath).
func normalizePath(i int, pr PathRule) (PathRule, error) {
	field := fmt.Sprintf("paths[%d]", i)
	canon, err := checkPath(pr.Path)
	if err != nil {
		var re *ruleError
		if ok := asRuleError(err, &re); ok {
			re.field = field + ".path"
			return pr, re
		}
		return pr, &ruleError{field: field + ".path", value: pr.Path, reason: err.Error()}
	}
	pr.Path = canon
	var methods []string
	for j, m := range pr.Methods {
		u := strings.ToUpper(m)
		if !isToken(u) {
			return pr, ruleErrf(fmt.Sprintf("%s.methods[%d]", field, j), m, "invalid HTTP method")
		}
		if !slices.Contains(methods, u) {
			methods = append(methods, u)
		}
	}
	pr.Methods = methods
	a, err := parseAction(string(pr.Action))
	if err != nil {
		return pr, ruleErrf(field+".action", string(pr.Action), "%s", err)
	}
	pr.Action = a
	return pr, nil
}

func asRuleError(err error, target **ruleError) bool {
	re, ok := err.(*ruleError)
	if ok {
		*target = re
	}
	return ok
}

// checkPath validates a path prefix or "~regex" and returns its canonical
// form.
func checkPath(p string) (string, error) {
	if re, ok := strings.CutPrefix(p, "~"); ok {
		if re == "" {
			return "", fmt.Errorf("empty regular expression")
		}
		if _, err := CompilePathRegexp(re); err != nil {
			return "", &ruleError{value: p, reason: "invalid regular expression: " + err.Error(), err: err}
		}
		return p, nil
	}
	return CanonicalRulePath(p)
}

// CompilePathRegexp compiles the body of a "~regex" path rule (without the
// "~") anchored at the start of the path: "~/v[0-9]+/" matches "/v1/x" but not
// "/api/v1/". The body must compile on its own, so that an alternation
// cannot escape the anchor.
func CompilePathRegexp(body string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(body); err != nil {
		return nil, err
	}
	return regexp.Compile(`^(?:` + body + `)`)
}

// isToken reports whether s is a non-empty HTTP token (RFC 9110 tchar).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// RuleKey identifies a rule for dedup: the normalized destination verbatim,
// protocol, port range and action. Overlapping destinations are not merged
// here; Compile resolves them.
type RuleKey struct {
	Dst     string
	Proto   Proto
	Port    uint16
	PortEnd uint16
	Action  Action
}

// Key returns r's dedup key. r must be normalized.
func (r EgressRule) Key() RuleKey {
	return RuleKey{Dst: r.Dst, Proto: r.Proto, Port: r.Port, PortEnd: r.PortEnd, Action: r.Action}
}

// sameBody reports whether two rules with the same key also carry the same
// HTTP rules and inspect switch.
func sameBody(a, b EgressRule) bool {
	return a.PathDefault == b.PathDefault && a.Inspect == b.Inspect &&
		slices.EqualFunc(a.Paths, b.Paths, func(x, y PathRule) bool {
			return x.Path == y.Path && x.Action == y.Action && slices.Equal(x.Methods, y.Methods)
		})
}

// Dedup drops every rule that repeats an earlier one (same key, same path
// rules and inspect switch), keeping the first, whose provenance wins. Rules
// with the same key but different path rules are kept: Compile merges them.
// The rules must be normalized.
func Dedup(rules []EgressRule) []EgressRule {
	return dedupInto(make([]EgressRule, 0, len(rules)), rules)
}

// dedupInto appends to out the rules Dedup keeps. out may be rules[:0]
// (in place): a rule is written only at or before its own position, and
// only kept rules, already final, are read back.
func dedupInto(out, rules []EgressRule) []EgressRule {
	d := newDeduper(out, len(rules))
	for _, r := range rules {
		d.add(r)
	}
	return d.out
}

// deduper keeps, one rule at a time, the rules Dedup keeps.
type deduper struct {
	out []EgressRule // the rules kept; starts empty
	// Rules with the same destination are chained (by Dst alone: a string
	// key hashes faster than a RuleKey), and compared by key and body.
	first map[string]int
	next  []int
}

// newDeduper returns a deduper that appends to out (empty, see dedupInto)
// about n rules.
func newDeduper(out []EgressRule, n int) *deduper {
	return &deduper{out: out, first: make(map[string]int, n), next: make([]int, 0, n)}
}

// add keeps r unless it repeats a rule kept before.
func (d *deduper) add(r EgressRule) {
	k := r.Key()
	j, ok := d.first[r.Dst]
	if !ok {
		j = -1
	}
	last := -1
	for ; j >= 0; j = d.next[j] {
		if d.out[j].Key() == k && sameBody(d.out[j], r) {
			return
		}
		last = j
	}
	if last < 0 {
		d.first[r.Dst] = len(d.out)
	} else {
		d.next[last] = len(d.out)
	}
	d.out = append(d.out, r)
	d.next = append(d.next, -1)
}
