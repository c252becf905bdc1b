package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Option and label keys. Rules may come from network options and container
// labels; settings only from network options.
const (
	KeyPrefix      = "clawker."
	KeyAllow       = "clawker.allow"
	KeyDeny        = "clawker.deny"
	KeyRules       = "clawker.rules"
	KeyDNSUpstream = "clawker.dns.upstream"
	KeyTLSInspect  = "clawker.tls.inspect"
	KeyICC         = "clawker.icc"
	// KeyRuntime is the Provenance.Key of rules added through the admin API.
	KeyRuntime = "runtime"
)

// ruleKeys are the keys that carry rules, in the order their rules are
// listed (and so deduplicated).
var ruleKeys = []string{KeyAllow, KeyDeny, KeyRules}

// IsClawkerKey reports whether a label or option key is in the clawker.*
// namespace in any letter case ("Clawker.Allow" too): the checks that ask
// "does this container carry clawker labels" must not miss a spelling that
// ParseLabels would refuse.
func IsClawkerKey(k string) bool {
	return len(k) >= len(KeyPrefix) && strings.EqualFold(k[:len(KeyPrefix)], KeyPrefix)
}

func isSettingKey(k string) bool {
	return k == KeyDNSUpstream || k == KeyTLSInspect || k == KeyICC
}

// ParseCompact parses one compact item "[proto://]dst[:port|:lo-hi]" into a
// normalized rule with the given action. IPv6 literals go in brackets when a
// port follows ("[2001:db8::1]:443"). Path rules need the JSON form.
func ParseCompact(item string, action Action) (EgressRule, error) {
	r := EgressRule{Action: action}
	s := item
	if i := strings.Index(s, "://"); i >= 0 {
		p, err := ParseProto(s[:i])
		if err != nil || s[:i] == "" {
			if err == nil {
				err = errors.New("empty protocol before \"://\"")
			}
			return r, &ruleError{value: item, reason: err.Error()}
		}
		r.Proto = p
		s = s[i+3:]
	}
	host, port, err := splitHostPort(s)
	if err != nil {
		return r, &ruleError{value: item, reason: err.Error()}
	}
	r.Dst = host
	if port != "" {
		if r.Port, r.PortEnd, err = ParsePortRange(port); err != nil {
			return r, &ruleError{value: item, reason: err.Error()}
		}
	}
	return Normalize(r)
}

// splitHostPort splits the destination part of a compact item.
func splitHostPort(s string) (host, port string, err error) {
	if s == "" {
		return "", "", errors.New("empty destination")
	}
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ']' after IPv6 address")
		}
		host, rest := s[1:end], s[end+1:]
		if !strings.Contains(host, ":") {
			return "", "", errors.New("brackets are only for IPv6 addresses")
		}
		if rest == "" {
			return host, "", nil
		}
		if p, ok := strings.CutPrefix(rest, ":"); ok {
			if p == "" {
				return "", "", errors.New("empty port after ':'")
			}
			return host, p, nil
		}
		return "", "", fmt.Errorf("unexpected %q after ']'", rest)
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		if _, err := netip.ParseAddr(s[:i]); err != nil {
			return "", "", errors.New("a compact rule cannot hold a path; use clawker.rules for path rules")
		}
	}
	if strings.Count(s, ":") > 1 {
		// A bare IPv6 address or CIDR: no port without brackets.
		return s, "", nil
	}
	host, port, ok := strings.Cut(s, ":")
	if ok && port == "" {
		return "", "", errors.New("empty port after ':'")
	}
	return host, port, nil
}

// ruleJSON is the JSON form of one full rule (clawker.rules, the admin API).
type ruleJSON struct {
	Dst         string     `json:"dst"`
	Proto       string     `json:"proto,omitempty"`
	Port        *jsonPort  `json:"port,omitempty"`
	Action      string     `json:"action,omitempty"`
	Paths       []pathJSON `json:"paths,omitempty"`
	PathDefault string     `json:"path_default,omitempty"`
	Inspect     bool       `json:"inspect,omitempty"`
}

type pathJSON struct {
	Path    string   `json:"path"`
	Methods []string `json:"methods,omitempty"`
	Action  string   `json:"action,omitempty"`
}

// jsonPort is a port written as a number (443) or a string ("443",
// "7000-7010"). It keeps the text so validation can report it verbatim.
type jsonPort struct{ text string }

func (p *jsonPort) UnmarshalJSON(b []byte) error {
	var s string
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("port must be a number or a \"lo-hi\" string")
		}
		s = n.String()
	}
	p.text = s
	return nil
}

func (p *jsonPort) MarshalJSON() ([]byte, error) {
	if _, err := strconv.Atoi(p.text); err == nil {
		return []byte(p.text), nil
	}
	return json.Marshal(p.text)
}

// ParseRuleJSON parses one full rule in JSON:
//
//	{"dst":"api.example.test","proto":"https","port":443,"action":"allow",
//	 "paths":[{"path":"/v1/","methods":["GET"],"action":"allow"}],
//	 "path_default":"deny","inspect":true}
//
// Only dst is required; port is a number or a "lo-hi" string; unknown fields
// are an error. The result is normalized.
func ParseRuleJSON(data []byte) (EgressRule, error) {
	var in ruleJSON
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return EgressRule{}, &ruleError{value: string(data), reason: `want a JSON object {"dst": ...} (compact items go in clawker.allow or clawker.deny)`}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return EgressRule{}, &ruleError{value: string(data), reason: "invalid JSON rule: " + err.Error(), err: err}
	}
	if dec.More() {
		return EgressRule{}, &ruleError{value: string(data), reason: "invalid JSON rule: data after the rule"}
	}
	r := EgressRule{
		Dst:         in.Dst,
		Proto:       Proto(in.Proto),
		Action:      Action(in.Action),
		PathDefault: Action(in.PathDefault),
		Inspect:     in.Inspect,
	}
	if in.Dst == "" {
		return r, ruleErrf("dst", "", "missing destination")
	}
	if in.Port != nil {
		lo, hi, err := ParsePortRange(in.Port.text)
		if err != nil {
			return r, &ruleError{field: "port", value: in.Port.text, reason: err.Error()}
		}
		r.Port, r.PortEnd = lo, hi
	}
	for _, p := range in.Paths {
		r.Paths = append(r.Paths, PathRule{Path: p.Path, Methods: p.Methods, Action: Action(p.Action)})
	}
	if in.Paths != nil && len(in.Paths) == 0 {
		return r, ruleErrf("paths", "[]", "empty list of path rules")
	}
	return Normalize(r)
}

// parseRulesJSON parses the value of clawker.rules: a JSON list of full rules.
func parseRulesJSON(key, value string, src Provenance) ([]EgressRule, error) {
	var items []json.RawMessage
	dec := json.NewDecoder(strings.NewReader(value))
	if err := dec.Decode(&items); err != nil {
		return nil, &FieldError{Field: key, Value: value, Reason: "want a JSON list of rules: " + err.Error(), Err: err}
	}
	if dec.More() {
		return nil, &FieldError{Field: key, Value: value, Reason: "want a JSON list of rules: data after the list"}
	}
	if len(items) == 0 {
		return nil, &FieldError{Field: key, Value: value, Reason: "empty list of rules"}
	}
	var errs []error
	var out []EgressRule
	for i, raw := range items {
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			buf.Reset()
			buf.Write(raw)
		}
		item := buf.String()
		r, err := ParseRuleJSON(raw)
		if err != nil {
			errs = append(errs, fieldError(fmt.Sprintf("%s[%d]", key, i), item, false, err))
			continue
		}
		out = append(out, sourced(r, src, key, item))
	}
	return out, errors.Join(errs...)
}

// sourced returns r with its provenance: src, from the option or label key,
// as the item was written.
func sourced(r EgressRule, src Provenance, key, item string) EgressRule {
	r.Source = src
	r.Source.Key = key
	r.Source.Item = item
	return r
}

// parseList parses a comma-separated list of compact items.
func parseList(key, value string, action Action, src Provenance) ([]EgressRule, error) {
	if strings.TrimSpace(value) == "" {
		return nil, &FieldError{Field: key, Reason: "empty list of rules"}
	}
	var errs []error
	var out []EgressRule
	for _, item := range strings.Split(value, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			errs = append(errs, &FieldError{Field: key, Value: value, Reason: "empty item in list"})
			continue
		}
		r, err := ParseCompact(item, action)
		if err != nil {
			errs = append(errs, fieldError(key, item, true, err))
			continue
		}
		out = append(out, sourced(r, src, key, item))
	}
	return out, errors.Join(errs...)
}

// parseRuleKey parses the rules of one rule key.
func parseRuleKey(key, value string, src Provenance) ([]EgressRule, error) {
	switch key {
	case KeyAllow:
		return parseList(key, value, Allow, src)
	case KeyDeny:
		return parseList(key, value, Deny, src)
	}
	return parseRulesJSON(key, value, src)
}

// checkConflicts rejects two rules of one source that share a key but carry
// different path rules: the user should write one rule.
func checkConflicts(rules []EgressRule) error {
	var errs []error
	first := make(map[RuleKey]EgressRule, len(rules))
	for _, r := range rules {
		k := r.Key()
		if prev, ok := first[k]; ok && !sameBody(prev, r) {
			errs = append(errs, &FieldError{Field: r.Source.Key, Value: r.Source.Item,
				Reason: fmt.Sprintf("repeats %s %q with different path rules or inspect; merge them into one rule", prev.Source.Key, prev.Source.Item)})
			continue
		}
		if _, ok := first[k]; !ok {
			first[k] = r
		}
	}
	return errors.Join(errs...)
}

// ParseNetworkOptions parses the options of docker network create -o
// (the "com.docker.network.generic" map). Every key must be a known
// clawker.* key: clawker.allow, clawker.deny and clawker.rules carry rules;
// clawker.dns.upstream, clawker.tls.inspect and clawker.icc are network-wide
// settings. Errors are *FieldError values (joined when there are several,
// in key order) naming the option; nothing is returned with an error.
// The rules are normalized and deduplicated.
func ParseNetworkOptions(opts map[string]string, networkID string) (NetworkConfig, error) {
	var cfg NetworkConfig
	var errs []error
	src := Provenance{Kind: SourceOption, Network: networkID}
	for _, k := range sortedKeys(opts) {
		v := opts[k]
		switch {
		case !strings.HasPrefix(k, KeyPrefix):
			errs = append(errs, &FieldError{Field: k, Reason: "unknown option (clawker-fw networks take only clawker.* options)"})
		case isSettingKey(k):
			if err := parseSetting(&cfg.Settings, k, v); err != nil {
				errs = append(errs, err)
			}
		case !slices.Contains(ruleKeys, k):
			errs = append(errs, unknownKey(k))
		}
	}
	for _, k := range ruleKeys {
		if v, ok := opts[k]; ok {
			rules, err := parseRuleKey(k, v, src)
			if err != nil {
				errs = append(errs, err)
			}
			cfg.Rules = append(cfg.Rules, rules...)
		}
	}
	if len(errs) == 0 {
		if err := checkConflicts(cfg.Rules); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return NetworkConfig{}, err
	}
	cfg.Rules = Dedup(cfg.Rules)
	return cfg, nil
}

// ParseLabels parses the rules in a container's labels. Labels that do not
// start with "clawker." (in any case) are ignored; clawker.allow, clawker.deny
// and clawker.rules carry rules; a network-wide setting in a label, a
// clawker key in another letter case ("Clawker.allow": Docker label keys are
// case-sensitive, so it would silently be no rule) and any other clawker.*
// label is an error. Errors are *FieldError values naming the label.
// The rules are normalized and deduplicated.
func ParseLabels(labels map[string]string, containerID string) ([]EgressRule, error) {
	var errs []error
	var out []EgressRule
	src := Provenance{Kind: SourceLabel, Container: containerID}
	for _, k := range sortedKeys(labels) {
		switch {
		case !IsClawkerKey(k), slices.Contains(ruleKeys, k):
		case !strings.HasPrefix(k, KeyPrefix) || slices.Contains(ruleKeys, strings.ToLower(k)):
			errs = append(errs, &FieldError{Field: k, Reason: "clawker keys are lowercase (clawker.allow, clawker.deny, clawker.rules)"})
		case isSettingKey(k):
			errs = append(errs, &FieldError{Field: k, Reason: "network-wide setting; set it with docker network create -o"})
		default:
			errs = append(errs, unknownKey(k))
		}
	}
	for _, k := range ruleKeys {
		if v, ok := labels[k]; ok {
			rules, err := parseRuleKey(k, v, src)
			if err != nil {
				errs = append(errs, err)
			}
			out = append(out, rules...)
		}
	}
	if len(errs) == 0 {
		if err := checkConflicts(out); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return Dedup(out), nil
}

// ParseRuntimeRule parses one rule given to the admin API: a compact item
// (an allow) or a JSON full rule (an object, which may say "action":"deny").
// Errors are *FieldError values whose field is "runtime".
func ParseRuntimeRule(item, networkID string) (EgressRule, error) {
	item = strings.TrimSpace(item)
	var r EgressRule
	var err error
	compact := !strings.HasPrefix(item, "{")
	if compact {
		r, err = ParseCompact(item, Allow)
	} else {
		r, err = ParseRuleJSON([]byte(item))
	}
	if err != nil {
		return EgressRule{}, fieldError(KeyRuntime, item, compact, err)
	}
	r.Source = Provenance{Kind: SourceRuntime, Key: KeyRuntime, Item: item, Network: networkID}
	return r, nil
}

func unknownKey(k string) error {
	return &FieldError{Field: k, Reason: "unknown clawker key (want clawker.allow, clawker.deny, clawker.rules, clawker.dns.upstream, clawker.tls.inspect or clawker.icc)"}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseSetting parses one network-wide setting into s.
func parseSetting(s *NetworkSettings, key, value string) error {
	switch key {
	case KeyDNSUpstream:
		var ups []string
		for _, item := range strings.Split(value, ",") {
			item = strings.TrimSpace(item)
			up, err := NormalizeUpstream(item)
			if err != nil {
				return &FieldError{Field: key, Value: item, Reason: err.Error()}
			}
			ups = append(ups, up)
		}
		s.DNSUpstreams = ups
	case KeyTLSInspect:
		switch strings.ToLower(strings.TrimSpace(value)) {
		case "all":
			s.InspectAll = true
		case "off":
			s.InspectAll = false
		default:
			return &FieldError{Field: key, Value: value, Reason: "want all or off"}
		}
	case KeyICC:
		switch strings.ToLower(strings.TrimSpace(value)) {
		case "true":
			s.ICC = true
		case "false":
			s.ICC = false
		default:
			return &FieldError{Field: key, Value: value, Reason: "want true or false"}
		}
	}
	return nil
}

// NormalizeUpstream parses a DNS resolver address, "ip", "ip:port", "ipv6"
// or "[ipv6]:port" (port 53 by default), into the "ip:port" form every
// consumer dials: the network option clawker.dns.upstream, the plugin-wide
// CLAWKER_DNS_UPSTREAM, the DNS plugin's Corefile and the proxy's resolvers
// all go through it, so one spelling means one resolver everywhere.
func NormalizeUpstream(s string) (string, error) {
	ap, err := parseUpstream(s)
	if err != nil {
		return "", err
	}
	return ap.String(), nil
}

// Upstreams returns the network's own resolvers (clawker.dns.upstream)
// normalized, dropping any that do not parse; nil means the network uses the
// plugin-wide ones. The DNS plugin answers through them and the proxy dials
// through them, so a container's answer and the proxy's dial agree.
func (n *Network) Upstreams() []string {
	if n == nil {
		return nil
	}
	var ups []string
	for _, u := range n.Settings.DNSUpstreams {
		if a, err := NormalizeUpstream(u); err == nil {
			ups = append(ups, a)
		}
	}
	return ups
}

func parseUpstream(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("empty resolver address")
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, errors.New("IPv6 zones are not allowed")
		}
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want ip[:port] ([ipv6]:port for IPv6 with a port)")
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0 out of range 1-65535")
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("IPv6 zones are not allowed")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// FormatRule renders a normalized rule so that it parses back (with
// ParseRuntimeRule) to the identical rule: the compact form
// "[proto://]dst[:port|:lo-hi]" for allow rules without HTTP path rules or
// inspect (defaults omitted, IPv6 in brackets), and a JSON full rule for
// everything else (deny rules included, since the compact form leaves the
// action to the option or label key).
func FormatRule(r EgressRule) string {
	if c, ok := FormatCompact(r); ok && r.Action == Allow {
		return c
	}
	in := ruleJSON{Dst: r.Dst, Action: string(r.Action), Inspect: r.Inspect}
	if r.Proto != ProtoHTTPS {
		in.Proto = string(r.Proto)
	}
	if r.Action == Allow {
		in.Action = ""
	}
	if d, ok := DefaultPort(r.Proto); !ok || r.Port != d || r.PortEnd != d {
		in.Port = &jsonPort{text: formatPorts(r.Port, r.PortEnd)}
	}
	for _, p := range r.Paths {
		pj := pathJSON{Path: p.Path, Methods: p.Methods, Action: string(p.Action)}
		if p.Action == Allow {
			pj.Action = ""
		}
		in.Paths = append(in.Paths, pj)
	}
	if len(r.Paths) > 0 {
		in.PathDefault = string(r.PathDefault)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(in); err != nil {
		// Every field is a string, bool or list of strings: cannot fail.
		panic(fmt.Sprintf("policy: encode rule: %v", err))
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// FormatCompact renders the compact item of a normalized rule, without its
// action (which the option or label key carries), and reports false when the
// rule needs the JSON form (path rules or inspect).
func FormatCompact(r EgressRule) (string, bool) {
	if len(r.Paths) > 0 || r.Inspect || r.PathDefault != "" {
		return "", false
	}
	var b strings.Builder
	if r.Proto != ProtoHTTPS && r.Proto != "" {
		b.WriteString(string(r.Proto))
		b.WriteString("://")
	}
	dst := r.Dst
	if p, err := netip.ParsePrefix(r.Dst); err == nil {
		if p.IsSingleIP() {
			dst = p.Addr().String()
		}
		if p.Addr().Is6() {
			dst = "[" + dst + "]"
		}
	}
	b.WriteString(dst)
	if d, ok := DefaultPort(r.Proto); !ok || r.Port != d || (r.PortEnd != d && r.PortEnd != 0) {
		b.WriteByte(':')
		b.WriteString(formatPorts(r.Port, r.PortEnd))
	}
	return b.String(), true
}
