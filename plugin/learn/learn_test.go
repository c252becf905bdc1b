package learn

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

func TestSafeWildcard(t *testing.T) {
	for _, tc := range []struct {
		parent string
		safe   bool
	}{
		{"com", false},                     // a public suffix
		{"example.com", false},             // directly under one
		{"api.example.com", true},          // two levels below com
		{"amazonaws.com", false},           // directly under com
		{"s3.amazonaws.com", false},        // private section: a public suffix
		{"bucket.s3.amazonaws.com", false}, // directly under s3.amazonaws.com
		{"x.bucket.s3.amazonaws.com", true},
		{"github.io", false},      // private section
		{"user.github.io", false}, // directly under github.io
		{"docs.user.github.io", true},
		{"co.uk", false},
		{"example.co.uk", false},
		{"api.example.co.uk", true},
		{"example.test", false}, // unlisted TLD: the default rule makes "test" a suffix
		{"wild.example.test", true},
		{"", false},
		{"localhost", false},
		{"10.0.0.1", false},
	} {
		t.Run(tc.parent, func(t *testing.T) {
			require.Equal(t, tc.safe, SafeWildcard(tc.parent))
		})
	}
}

func flow(proto, name string, port uint16) api.LearnFlow {
	return api.LearnFlow{Proto: proto, Name: name, Port: port, Count: 1}
}

func req(proto, name string, port uint16, method, path string) api.LearnFlow {
	return api.LearnFlow{Proto: proto, Name: name, Port: port, Inspected: true, Method: method,
		PathPrefix: PathPrefix(path), Path: path, Count: 1}
}

func TestSynthesizeWildcards(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flows []api.LearnFlow
		allow []string
	}{
		{"siblings under a registrable domain stay exact",
			[]api.LearnFlow{flow("https", "a.example.com", 443), flow("https", "b.example.com", 443)},
			[]string{"a.example.com", "b.example.com"}},
		{"siblings deeper collapse",
			[]api.LearnFlow{flow("https", "a.cdn.example.com", 443), flow("https", "b.cdn.example.com", 443), flow("https", "cdn.example.com", 443)},
			[]string{".cdn.example.com"}},
		{"a lone child stays exact",
			[]api.LearnFlow{flow("https", "a.cdn.example.com", 443)},
			[]string{"a.cdn.example.com"}},
		{"github.io users never collapse",
			[]api.LearnFlow{flow("https", "alice.github.io", 443), flow("https", "bob.github.io", 443)},
			[]string{"alice.github.io", "bob.github.io"}},
		{"pages of one github.io user stay exact",
			[]api.LearnFlow{flow("https", "a.alice.github.io", 443), flow("https", "b.alice.github.io", 443)},
			[]string{"a.alice.github.io", "b.alice.github.io"}},
		{"amazonaws buckets never collapse",
			[]api.LearnFlow{flow("https", "one.s3.amazonaws.com", 443), flow("https", "two.s3.amazonaws.com", 443),
				flow("https", "s3.amazonaws.com", 443), flow("https", "ec2.amazonaws.com", 443)},
			[]string{"ec2.amazonaws.com", "one.s3.amazonaws.com", "s3.amazonaws.com", "two.s3.amazonaws.com"}},
		{"other ports and protocols do not merge",
			[]api.LearnFlow{flow("https", "a.x.example.com", 443), flow("https", "b.x.example.com", 8443), flow("http", "c.x.example.com", 80)},
			[]string{"a.x.example.com", "b.x.example.com:8443", "http://c.x.example.com"}},
		{"tcp and ssh stay exact",
			[]api.LearnFlow{flow("tcp", "a.db.example.com", 5432), flow("tcp", "b.db.example.com", 5432), flow("ssh", "git.x.example.com", 22), flow("ssh", "h.x.example.com", 22)},
			[]string{"tcp://a.db.example.com:5432", "tcp://b.db.example.com:5432", "ssh://git.x.example.com", "ssh://h.x.example.com"}},
		{"an address without a name",
			[]api.LearnFlow{{Proto: "tcp", Addr: "192.0.2.7", Port: 5432}},
			[]string{"tcp://192.0.2.7:5432"}},
		{"duplicates",
			[]api.LearnFlow{flow("https", "api.example.com", 443), flow("https", "API.example.com.", 443)},
			[]string{"api.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Synthesize(tc.flows)
			require.ElementsMatch(t, tc.allow, got.Allow)
			require.Empty(t, got.Unruled)
			requireParses(t, got)
		})
	}
}

// requireParses checks that every form of the proposal parses back as
// labels and as network options.
func requireParses(t *testing.T, got api.LearnRules) {
	t.Helper()
	labels := map[string]string{}
	for i := 0; i+1 < len(got.Label); i += 2 {
		require.Equal(t, "--label", got.Label[i])
		k, v, _ := strings.Cut(got.Label[i+1], "=")
		labels[k] = v
	}
	_, err := policy.ParseLabels(labels, "c")
	require.NoError(t, err)
	opts := map[string]string{}
	for i := 0; i+1 < len(got.Option); i += 2 {
		k, v, _ := strings.Cut(got.Option[i+1], "=")
		opts[k] = v
	}
	_, err = policy.ParseNetworkOptions(opts, "n")
	require.NoError(t, err)
	if len(got.Rules) > 0 {
		raw, err := json.Marshal(got.Rules)
		require.NoError(t, err)
		_, err = policy.ParseLabels(map[string]string{"clawker.rules": string(raw)}, "c")
		require.NoError(t, err)
	}
}

func TestSynthesizePaths(t *testing.T) {
	got := Synthesize([]api.LearnFlow{
		req("http", "path.example.test", 80, "GET", "/public/a.txt"),
		req("http", "path.example.test", 80, "GET", "/public/sub/deeper/b?x=1"),
		req("http", "path.example.test", 80, "POST", "/api/v1/items/42"),
		req("http", "path.example.test", 80, "GET", "/"),
		req("https", "api.x.example.com", 443, "GET", "/v1/users/7"),
		flow("https", "open.x.example.com", 443), // passthrough: paths unknown
		req("https", "open.x.example.com", 443, "GET", "/only/seen/once"),
	})
	require.Empty(t, got.Unruled)
	// The siblings under x.example.com collapse; one has path rules, the
	// other's paths were not all seen: the wildcard allows every path.
	require.Equal(t, []string{".x.example.com"}, got.Allow)
	var rules []map[string]any
	raw, _ := json.Marshal(got.Rules)
	require.NoError(t, json.Unmarshal(raw, &rules))
	require.Len(t, rules, 2)
	// "/" swallows every other prefix of path.example.test.
	require.JSONEq(t, `{"dst":"path.example.test","proto":"http","paths":[{"path":"/","methods":["GET","POST"]}]}`, string(got.Rules[0]))
	// The wildcard has a member whose paths were not seen: no path rules.
	require.JSONEq(t, `{"dst":".x.example.com"}`, string(got.Rules[1]))
	require.Equal(t, []string{"api.x.example.com", "open.x.example.com"}, got.Wildcards[".x.example.com"])
	requireParses(t, got)

	got = Synthesize([]api.LearnFlow{
		req("http", "path.example.test", 80, "GET", "/public/a.txt"),
		req("http", "path.example.test", 80, "GET", "/public/sub/deeper/b?x=1"),
		req("http", "path.example.test", 80, "POST", "/api/v1/items/42"),
	})
	require.Len(t, got.PathRules, 1)
	require.JSONEq(t, `{"dst":"path.example.test","proto":"http","paths":[{"path":"/api/v1/","methods":["POST"]},{"path":"/public/","methods":["GET"]}]}`, string(got.PathRules[0]))
	requireParses(t, got)
}

func TestPathPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"/":                  "/",
		"/x":                 "/",
		"/v1/users/42":       "/v1/users/",
		"/v1/":               "/v1/",
		"/a/b/c/d":           "/a/b/",
		"/a/../b/c":          "/",
		"/a/b/c/..":          "/",
		"/a/%2e%2e/b/c":      "/",
		"/a/%252E%252e/b/c":  "/",
		"/a\\..\\b/c/d":      "/",
		"/a/b%zz/c":          "/a/",
		"/a//b/c":            "/a/",
		"/a;x/b":             "/",
		"/repos/o/r?page=2":  "/repos/o/",
		"relative":           "/",
		"/public/%2e%2e/x/y": "/",
		"/a/b%2fc/d":         "/a/",
	} {
		require.Equal(t, want, PathPrefix(in), in)
	}
}

func TestRecorderNamesFromDNS(t *testing.T) {
	r := NewRecorder(10)
	now := time.Now()
	a := netip.MustParseAddr("10.220.0.16")
	r.Resolved("TCP.example.test.", []netip.Addr{a})
	r.Resolved("unused.example.test", nil)
	r.Observe(Observation{Time: now, Proto: ProtoTCP, Addr: a, Port: 5432})
	r.Observe(Observation{Time: now, Proto: ProtoTCP, Addr: a, Port: 5432})
	r.Observe(Observation{Time: now, Proto: ProtoTCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 7})
	r.Observe(Observation{Time: now, Proto: ProtoHTTPS, Name: "allowed.example.test", Addr: netip.MustParseAddr("10.220.0.10"), Port: 443})
	flows, only, dropped := r.Flows()
	require.Equal(t, []string{"unused.example.test"}, only)
	require.Zero(t, dropped)
	require.Equal(t, []api.LearnFlow{
		{Proto: "tcp", Addr: "192.0.2.1", Port: 7, Count: 1, First: now, Last: now},
		{Proto: "https", Name: "allowed.example.test", Port: 443, Count: 1, First: now, Last: now},
		{Proto: "tcp", Name: "tcp.example.test", Addr: "10.220.0.16", Port: 5432, Count: 2, First: now, Last: now},
	}, flows)
	for i := range 20 {
		r.Observe(Observation{Time: now, Proto: ProtoTCP, Addr: a, Port: uint16(1000 + i)})
	}
	_, _, dropped = r.Flows()
	require.Equal(t, 13, dropped)
}

// TestRecorderNamesFlowsSeenBeforeTheirAnswer: DNS records arrive on their
// own socket, so a connect can be observed before the answer that preceded
// it; the flow is named all the same (and merged with a later named one).
func TestRecorderNamesFlowsSeenBeforeTheirAnswer(t *testing.T) {
	r := NewRecorder(10)
	t0 := time.Now()
	t1 := t0.Add(time.Second)
	a := netip.MustParseAddr("10.220.0.15")
	r.Observe(Observation{Time: t0, Proto: ProtoSSH, Addr: a, Port: 22})
	r.Observe(Observation{Time: t0, Proto: ProtoTCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 7})
	r.Resolved("ssh.example.test.", []netip.Addr{a})
	r.Observe(Observation{Time: t1, Proto: ProtoSSH, Addr: a, Port: 22})
	flows, only, _ := r.Flows()
	require.Empty(t, only, "the name was connected to")
	require.Equal(t, []api.LearnFlow{
		{Proto: "tcp", Addr: "192.0.2.1", Port: 7, Count: 1, First: t0, Last: t0},
		{Proto: "ssh", Name: "ssh.example.test", Addr: "10.220.0.15", Port: 22, Count: 2, First: t0, Last: t1},
	}, flows)
}

func TestCheck(t *testing.T) {
	flows := []api.LearnFlow{
		flow("https", "allowed.example.test", 443),
		flow("https", "a.wild.example.test", 443),
		flow("tcp", "tcp.example.test", 5432),
		flow("ssh", "ssh.example.test", 22),
		req("http", "path.example.test", 80, "GET", "/public/x"),
		req("http", "path.example.test", 80, "GET", "/private/x"),
		{Proto: "tcp", Addr: "192.0.2.7", Port: 7000},
		flow("https", "denied.example.test", 443),
		flow("tcp", "alt.example.test", 443),
	}
	labels := map[string]string{
		"clawker.allow": "allowed.example.test,.wild.example.test,tcp://tcp.example.test:5432,ssh://ssh.example.test,tcp://192.0.2.7:7000,alt.example.test",
		"clawker.rules": `[{"dst":"path.example.test","proto":"http","paths":[{"path":"/public/","methods":["GET"]}]}]`,
	}
	rules, err := policy.ParseLabels(labels, "c")
	require.NoError(t, err)
	pol, err := policy.Compile(policy.CompileInput{Label: rules}, policy.NewIdentityTable())
	require.NoError(t, err)
	denied := Check(pol, flows)
	var got []string
	for _, d := range denied {
		got = append(got, describe(d.Flow)+" "+d.Reason+" "+d.Flow.PathPrefix)
	}
	require.Equal(t, []string{
		"http path.example.test:80 path-rule /private/",
		"https denied.example.test:443 no-rule ",
		"tcp alt.example.test:443 proto-mismatch ",
	}, got)

	// The synthesized rules allow every flow they were made from.
	synth := Synthesize(flows)
	raw, err := json.Marshal(synth.Rules)
	require.NoError(t, err)
	rules, err = policy.ParseLabels(map[string]string{"clawker.rules": string(raw)}, "c")
	require.NoError(t, err)
	pol, err = policy.Compile(policy.CompileInput{Label: rules}, policy.NewIdentityTable())
	require.NoError(t, err)
	require.Empty(t, Check(pol, flows))
}
