package learn

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

// target is one proposed allow rule before formatting: a destination
// (exact name, ".wildcard" or address) with its protocol and port, and the
// path rules inspection saw for it.
type target struct {
	dst   string
	proto policy.Proto
	port  uint16
	// paths maps a path prefix to its methods; nil when some flow to the
	// destination was not inspected (its paths are unknown: no path rules).
	paths   map[string]map[string]bool
	unknown bool
	samples [][2]string // method, path of each request shape
	names   []string    // the names a wildcard stands for
}

// Synthesize proposes the smallest rule set that allows every recorded
// flow:
//  1. each named flow becomes an allow of its name, protocol and port
//     (https and http flows by the name the proxy saw, ssh and tcp flows by
//     the name the container resolved to the address it dialed); a flow
//     with no name becomes an address rule (tcp://ADDR:PORT);
//  2. https/http destinations with requests seen (plain HTTP, inspected
//     TLS) get path rules: one prefix per request shape with its methods,
//     prefixes under a shorter one merged into it; a destination with any
//     flow whose requests were not seen gets none (all paths);
//  3. two or more https/http names on one protocol and port that are
//     children of one parent become the wildcard .PARENT, but only where
//     SafeWildcard allows it (never at or directly under a public suffix,
//     private section included); ssh/tcp rules stay exact (the firewall
//     requires it);
//  4. every rule is normalized by the policy package, so what is printed
//     parses back.
func Synthesize(flows []api.LearnFlow) api.LearnRules {
	var out api.LearnRules
	targets := map[string]*target{}
	key := func(dst string, proto policy.Proto, port uint16) string {
		return fmt.Sprintf("%s|%s|%d", proto, dst, port)
	}
	for _, f := range flows {
		proto, err := policy.ParseProto(f.Proto)
		if err != nil {
			out.Unruled = append(out.Unruled, fmt.Sprintf("%s: %v", describe(f), err))
			continue
		}
		dst := f.Name
		if dst == "" {
			a, err := netip.ParseAddr(f.Addr)
			if err != nil {
				out.Unruled = append(out.Unruled, describe(f)+": neither a name nor an address was seen")
				continue
			}
			dst, proto = a.String(), policy.ProtoTCP
		} else if n, err := policy.NormalizeHost(dst); err != nil {
			out.Unruled = append(out.Unruled, fmt.Sprintf("%s: %v", describe(f), err))
			continue
		} else {
			dst = n
		}
		k := key(dst, proto, f.Port)
		t := targets[k]
		if t == nil {
			t = &target{dst: dst, proto: proto, port: f.Port, paths: map[string]map[string]bool{}}
			targets[k] = t
		}
		switch {
		case proto != policy.ProtoHTTPS && proto != policy.ProtoHTTP:
		case !f.Inspected:
			t.unknown = true
		case f.PathPrefix != "":
			m := t.paths[f.PathPrefix]
			if m == nil {
				m = map[string]bool{}
				t.paths[f.PathPrefix] = m
			}
			m[f.Method] = true
			if f.Path != "" {
				t.samples = append(t.samples, [2]string{f.Method, f.Path})
			}
		}
	}
	list := make([]*target, 0, len(targets))
	for _, t := range targets {
		list = append(list, t)
	}
	list = collapse(list)
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if a.dst != b.dst {
			return strings.TrimPrefix(a.dst, ".") < strings.TrimPrefix(b.dst, ".")
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.port < b.port
	})
	for _, t := range list {
		r, err := t.rule()
		if err != nil {
			out.Unruled = append(out.Unruled, fmt.Sprintf("%s %s:%d: %v", t.proto, t.dst, t.port, err))
			continue
		}
		if s, ok := t.refused(r); !ok {
			// Never propose a rule that refuses what it was learned from.
			out.Unruled = append(out.Unruled, fmt.Sprintf("%s %s:%d: path rules dropped (every path allowed): the firewall reads the request %s %s differently", t.proto, t.dst, t.port, s[0], s[1]))
			t.unknown = true
			if r, err = t.rule(); err != nil {
				out.Unruled = append(out.Unruled, fmt.Sprintf("%s %s:%d: %v", t.proto, t.dst, t.port, err))
				continue
			}
		}
		raw := jsonRule(r)
		if c, ok := policy.FormatCompact(r); ok {
			out.Allow = append(out.Allow, c)
		} else {
			out.PathRules = append(out.PathRules, raw)
		}
		out.Rules = append(out.Rules, raw)
		if len(t.names) > 0 {
			if out.Wildcards == nil {
				out.Wildcards = map[string][]string{}
			}
			out.Wildcards[t.dst] = t.names
		}
	}
	if len(out.Allow) > 0 {
		out.Label = append(out.Label, "--label", "clawker.allow="+strings.Join(out.Allow, ","))
		out.Option = append(out.Option, "-o", "clawker.allow="+strings.Join(out.Allow, ","))
	}
	if len(out.PathRules) > 0 {
		js := jsonList(out.PathRules)
		out.Label = append(out.Label, "--label", "clawker.rules="+js)
		out.Option = append(out.Option, "-o", "clawker.rules="+js)
	}
	return out
}

// rule builds and normalizes the allow rule of t.
func (t *target) rule() (policy.EgressRule, error) {
	r := policy.EgressRule{Dst: t.dst, Proto: t.proto, Port: t.port, PortEnd: t.port, Action: policy.Allow}
	if !t.unknown && len(t.paths) > 0 {
		prefixes := make([]string, 0, len(t.paths))
		for p := range t.paths {
			prefixes = append(prefixes, p)
		}
		sort.Strings(prefixes) // a prefix sorts before every path under it
		var kept []string
		for _, p := range prefixes {
			if i := slices.IndexFunc(kept, func(k string) bool { return strings.HasPrefix(p, k) }); i >= 0 {
				for m := range t.paths[p] {
					t.paths[kept[i]][m] = true
				}
				continue
			}
			kept = append(kept, p)
		}
		for _, p := range kept {
			var methods []string
			for m := range t.paths[p] {
				methods = append(methods, m)
			}
			sort.Strings(methods)
			r.Paths = append(r.Paths, policy.PathRule{Path: p, Methods: methods})
		}
	}
	return policy.Normalize(r)
}

// refused returns a request sample r's path rules refuse, and false.
func (t *target) refused(r policy.EgressRule) ([2]string, bool) {
	if len(r.Paths) == 0 {
		return [2]string{}, true
	}
	for _, s := range t.samples {
		if !policy.DecidePath(r.Paths, r.PathDefault, s[1], s[0]).Allowed {
			return s, false
		}
	}
	return [2]string{}, true
}

// collapse replaces two or more sibling https/http names (children of one
// parent, same protocol and port) by the parent's wildcard where
// SafeWildcard allows it. Names further below the parent fold into the
// wildcard too (it covers them).
func collapse(list []*target) []*target {
	type group struct {
		proto policy.Proto
		port  uint16
		par   string
	}
	children := map[group][]*target{}
	for _, t := range list {
		if (t.proto != policy.ProtoHTTPS && t.proto != policy.ProtoHTTP) || strings.HasPrefix(t.dst, ".") {
			continue
		}
		if _, err := netip.ParseAddr(t.dst); err == nil {
			continue
		}
		_, par, ok := strings.Cut(t.dst, ".")
		if !ok {
			continue
		}
		g := group{t.proto, t.port, par}
		children[g] = append(children[g], t)
	}
	gone := map[*target]bool{}
	var out []*target
	groups := make([]group, 0, len(children))
	for g := range children {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].par < groups[j].par })
	for _, g := range groups {
		kids := children[g]
		if len(kids) < 2 || !SafeWildcard(g.par) {
			continue
		}
		w := &target{dst: "." + g.par, proto: g.proto, port: g.port, paths: map[string]map[string]bool{}}
		for _, t := range list {
			if gone[t] || t.proto != g.proto || t.port != g.port || !policy.Covers(w.dst, strings.TrimPrefix(t.dst, ".")) {
				continue
			}
			gone[t] = true
			w.names = append(w.names, t.dst)
			w.unknown = w.unknown || t.unknown
			w.samples = append(w.samples, t.samples...)
			for p, ms := range t.paths {
				if w.paths[p] == nil {
					w.paths[p] = map[string]bool{}
				}
				for m := range ms {
					w.paths[p][m] = true
				}
			}
		}
		sort.Strings(w.names)
		out = append(out, w)
	}
	for _, t := range list {
		if !gone[t] {
			out = append(out, t)
		}
	}
	return out
}

// SafeWildcard reports whether ".parent" may be proposed: parent must be a
// name with a registrable domain strictly above it, so the wildcard is
// neither at a public suffix (".com", ".github.io", ".s3.amazonaws.com")
// nor directly under one (".example.com", ".amazonaws.com",
// ".user.github.io": every name the owner of that domain hands out). The
// public suffix list is golang.org/x/net/publicsuffix, ICANN and private
// sections both; an unlisted top-level domain counts as a public suffix
// (the list's default rule), so ".example.test" is refused too.
func SafeWildcard(parent string) bool {
	parent = strings.TrimPrefix(strings.ToLower(parent), ".")
	if parent == "" || !strings.Contains(parent, ".") {
		return false
	}
	if _, err := netip.ParseAddr(parent); err == nil {
		return false
	}
	etld1, err := publicsuffix.EffectiveTLDPlusOne(parent)
	if err != nil {
		return false // parent is itself a public suffix
	}
	return parent != etld1 && strings.HasSuffix(parent, "."+etld1)
}

func describe(f api.LearnFlow) string {
	who := f.Name
	if who == "" {
		who = f.Addr
	}
	return fmt.Sprintf("%s %s:%d", f.Proto, who, f.Port)
}

// ruleObject is one clawker.rules entry (policy's JSON rule form).
type ruleObject struct {
	Dst   string       `json:"dst"`
	Proto string       `json:"proto,omitempty"`
	Port  string       `json:"port,omitempty"`
	Paths []pathObject `json:"paths,omitempty"`
}

type pathObject struct {
	Path    string   `json:"path"`
	Methods []string `json:"methods,omitempty"`
}

// jsonRule renders a normalized allow rule as a clawker.rules object,
// defaults omitted.
func jsonRule(r policy.EgressRule) json.RawMessage {
	o := ruleObject{Dst: r.Dst}
	if p, err := netip.ParsePrefix(r.Dst); err == nil && p.IsSingleIP() {
		o.Dst = p.Addr().String()
	}
	if r.Proto != policy.ProtoHTTPS {
		o.Proto = string(r.Proto)
	}
	if d, ok := policy.DefaultPort(r.Proto); !ok || r.Port != d {
		o.Port = fmt.Sprint(r.Port)
	}
	for _, p := range r.Paths {
		o.Paths = append(o.Paths, pathObject{Path: p.Path, Methods: p.Methods})
	}
	raw, err := json.Marshal(o)
	if err != nil {
		panic(fmt.Sprintf("learn: encode rule: %v", err)) // strings only: cannot fail
	}
	return raw
}

func jsonList(items []json.RawMessage) string {
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = string(it)
	}
	return "[" + strings.Join(parts, ",") + "]"
}
