package policy

import (
	"reflect"
	"strings"
	"testing"
)

// fuzzKeys are the option and label keys FuzzParseRules picks from: every
// known key, an unknown clawker key and a foreign one.
var fuzzKeys = []string{KeyAllow, KeyDeny, KeyRules, KeyDNSUpstream, KeyTLSInspect, KeyICC, "clawker.other", "com.docker.network.bridge.name"}

// FuzzParseRules feeds arbitrary option and label values to the parsers. No
// input may panic, and every accepted rule must be normalized (Normalize is a
// no-op on it) and survive parse -> FormatRule -> parse unchanged; compiling
// the accepted rules must account for every allow.
func FuzzParseRules(f *testing.F) {
	keyIndex := func(k string) uint8 {
		for i, fk := range fuzzKeys {
			if fk == k {
				return uint8(i)
			}
		}
		return uint8(len(fuzzKeys) - 1)
	}
	for _, seed := range []struct {
		key, value string
	}{
		{KeyAllow, "github.com,.npmjs.org,ssh://github.com,tcp://db.example.test:5432,10.1.0.0/16,https://api.example.test:8443,tcp://db.example.test:7000-7010"},
		{KeyAllow, "[2001:db8::1]:443, 2001:db8::/32 ,tls://Bücher.example.,http://x.test:8080"},
		{KeyDeny, ".example.com,192.0.2.7,udp://dns.example.test:53"},
		{KeyRules, `[{"dst":"api.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}]`},
		{KeyRules, `[{"dst":"a.test","proto":"tcp","port":"7000-7010","action":"deny"},{"dst":".b.test","inspect":true}]`},
		{KeyRules, `[{"dst":"a.test","paths":[{"path":"~^/v[0-9]+/","action":"deny"}],"path_default":"allow"}]`},
		{KeyDNSUpstream, "192.0.2.53,[2001:db8::53]:5353"},
		{KeyTLSInspect, "all"},
		{KeyICC, "true"},
		{"com.docker.network.bridge.name", "br0"},
		{KeyAllow, "exa mple.com"},
		{KeyAllow, "*.example.com,.10.0.0.1,tcp://.x.test:1,a.test:0-300"},
	} {
		f.Add(keyIndex(seed.key), seed.value, false)
		f.Add(keyIndex(seed.key), seed.value, true)
	}
	indexAll(f) // every compiled and patched policy is name-indexed
	f.Fuzz(func(t *testing.T, keySel uint8, value string, label bool) {
		key := fuzzKeys[int(keySel)%len(fuzzKeys)]
		var rules []EgressRule
		if label {
			r, err := ParseLabels(map[string]string{key: value}, "c")
			if err != nil {
				requireFieldErrorIn(t, err)
				return
			}
			rules = r
		} else {
			cfg, err := ParseNetworkOptions(map[string]string{key: value}, "n")
			if err != nil {
				requireFieldErrorIn(t, err)
				return
			}
			rules = cfg.Rules
		}
		for _, r := range rules {
			checkRoundTrip(t, r)
		}
		// The runtime parser takes one item, compact or JSON.
		if r, err := ParseRuntimeRule(value, "n"); err == nil {
			checkRoundTrip(t, r)
		} else {
			requireFieldErrorIn(t, err)
		}
		p, err := Compile(CompileInput{Network: rules}, NewIdentityTable())
		if err != nil {
			t.Fatalf("compile accepted rules: %v", err)
		}
		// The indexed compile equals the plain reading of its steps.
		if want, err := referenceCompile(CompileInput{Network: rules}, NewIdentityTable()); err != nil || !reflect.DeepEqual(want, p) {
			t.Fatalf("compile differs from referenceCompile (%v):\n%+v\n%+v", err, want, p)
		}
		requireScanAnswers(t, p, probeNames(p), "compiled")
		for _, r := range rules {
			if r.Action != Allow {
				continue
			}
			found := false
			for _, a := range p.Allows {
				found = found || a.Pattern == r.Dst
			}
			for _, o := range p.Overridden {
				found = found || o.Allow.Dst == r.Dst
			}
			if !found {
				t.Fatalf("allow %q neither compiled nor overridden", r.Dst)
			}
		}
		checkPatch(t, rules)
	})
}

// checkPatch: with rules split into network and runtime rules, the base
// Patch derives for the runtime rules, then for all but the first, is the
// base CompileBase compiles (when Patch does not refuse).
func checkPatch(t *testing.T, rules []EgressRule) {
	t.Helper()
	h := len(rules) / 2
	network := rules[:h]
	ids, idsPatch := NewIdentityTable(), NewIdentityTable()
	cur, err := CompileBase(CompileInput{Network: network}, idsPatch)
	if err != nil {
		t.Fatalf("compile base: %v", err)
	}
	if _, err := CompileBase(CompileInput{Network: network}, ids); err != nil {
		t.Fatalf("compile base: %v", err)
	}
	for gen, runtime := range [][]EgressRule{rules[h:], rules[min(h+1, len(rules)):]} {
		in := CompileInput{Network: network, Runtime: runtime, Generation: uint64(gen)}
		want, err := CompileBase(in, ids)
		if err != nil {
			t.Fatalf("compile base: %v", err)
		}
		got, ok := cur.Patch(runtime, in.Generation, idsPatch)
		if !ok {
			got, _ = CompileBase(in, idsPatch)
		}
		requireSameBase(t, want, got, "patch")
		requireScanAnswers(t, got.pol, probeNames(got.pol), "patched")
		cur = got
	}
}

func requireFieldErrorIn(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	if msg == "" || !strings.Contains(msg, ": ") {
		t.Fatalf("unhelpful error %q", msg)
	}
}

// checkRoundTrip asserts that r is normalized and that its formatted form
// parses back to r.
func checkRoundTrip(t *testing.T, r EgressRule) {
	t.Helper()
	r.Source = Provenance{}
	n, err := Normalize(r)
	if err != nil {
		t.Fatalf("accepted rule %+v does not normalize: %v", r, err)
	}
	if !equalRules(n, r) {
		t.Fatalf("accepted rule is not normal:\n got %+v\nwant %+v", n, r)
	}
	s := FormatRule(r)
	back, err := ParseRuntimeRule(s, "")
	if err != nil {
		t.Fatalf("formatted rule %q does not parse: %v", s, err)
	}
	back.Source = Provenance{}
	if !equalRules(back, r) {
		t.Fatalf("round trip of %q:\n got %+v\nwant %+v", s, back, r)
	}
	if c, ok := FormatCompact(r); ok {
		back, err := ParseCompact(c, r.Action)
		if err != nil {
			t.Fatalf("compact %q does not parse: %v", c, err)
		}
		if !equalRules(back, r) {
			t.Fatalf("compact round trip of %q:\n got %+v\nwant %+v", c, back, r)
		}
	}
}

func equalRules(a, b EgressRule) bool {
	return a.Key() == b.Key() && sameBody(a, b) && (len(a.Paths) == 0) == (b.Paths == nil)
}

// FuzzNormalizeHost checks that host and destination normalization never
// panics, is idempotent, and only returns names within DNS limits.
func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"example.com", "API.Example.COM.", "Bücher.example", "xn--bcher-kva.example", "bücher\u3002example",
		".example.com", "*.example.com", "a..b", "exa mple.com", "1.2.3", "0x7f.1", "192.0.2.1", "10.0.0.0/8",
		"2001:db8::1", "::ffff:10.0.0.1", "fe80::1%eth0", "_dmarc.example.com", "-a.com", "xn--zz-.example",
		strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if h, err := NormalizeHost(s); err == nil {
			if len(h) == 0 || len(h) > maxNameLen {
				t.Fatalf("NormalizeHost(%q) = %q: bad length", s, h)
			}
			again, err := NormalizeHost(h)
			if err != nil || again != h {
				t.Fatalf("NormalizeHost(%q) = %q, then %q, %v", s, h, again, err)
			}
			if trimName(h) != h {
				t.Fatalf("NormalizeHost(%q) = %q is not in lookup form", s, h)
			}
			if !Covers(h, h) || !Covers("."+h, h) || Covers(h, "x."+h) {
				t.Fatalf("matching is inconsistent for %q", h)
			}
		}
		if d, p, err := NormalizeDst(s); err == nil {
			again, p2, err := NormalizeDst(d)
			if err != nil || again != d || p2 != p {
				t.Fatalf("NormalizeDst(%q) = %q, then %q, %v", s, d, again, err)
			}
			if p.IsValid() != (strings.Contains(d, "/")) {
				t.Fatalf("NormalizeDst(%q) = %q with prefix %v", s, d, p)
			}
		}
	})
}
