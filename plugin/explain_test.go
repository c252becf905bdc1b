package plugin

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/policy"
)

func TestParseDestination(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want destination
	}{
		{"https://api.example.com/v1/x", destination{Name: "api.example.com", Port: 443, Proto: policy.ProtoHTTPS, Path: "/v1/x"}},
		{"HTTPS://API.Example.com", destination{Name: "api.example.com", Port: 443, Proto: policy.ProtoHTTPS}},
		{"https://user:pw@api.example.com:8443/a%2Fb?q=1#f", destination{Name: "api.example.com", Port: 8443, Proto: policy.ProtoHTTPS, Path: "/a%2Fb"}},
		{"https://api.example.com?q=1", destination{Name: "api.example.com", Port: 443, Proto: policy.ProtoHTTPS}},
		{"http://h.example.com/p", destination{Name: "h.example.com", Port: 80, Proto: policy.ProtoHTTP, Path: "/p"}},
		{"http://h.example.com:8080", destination{Name: "h.example.com", Port: 8080, Proto: policy.ProtoHTTP}},
		{"tcp://db:5432", destination{Name: "db", Port: 5432, Proto: policy.ProtoTCP}},
		{"udp://ntp.example.com:123", destination{Name: "ntp.example.com", Port: 123, Proto: policy.ProtoUDP}},
		{"ssh://github.com", destination{Name: "github.com", Port: 22, Proto: policy.ProtoSSH}},
		{"10.1.2.3:443", destination{Addr: netip.MustParseAddr("10.1.2.3"), Port: 443, Proto: policy.ProtoHTTPS}},
		{"tcp://10.1.2.3:5432", destination{Addr: netip.MustParseAddr("10.1.2.3"), Port: 5432, Proto: policy.ProtoTCP}},
		{"[2001:db8::1]:443", destination{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443, Proto: policy.ProtoHTTPS}},
		{"api.example.com", destination{Name: "api.example.com", Port: 443, Proto: policy.ProtoHTTPS}},
		{"api.example.com.", destination{Name: "api.example.com", Port: 443, Proto: policy.ProtoHTTPS}},
		{"api.example.com:8443", destination{Name: "api.example.com", Port: 8443, Proto: policy.ProtoHTTPS}},
		{" bücher.example ", destination{Name: "xn--bcher-kva.example", Port: 443, Proto: policy.ProtoHTTPS}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseDestination(tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	for _, bad := range []string{"", "   ", "ftp://x.example.com", "://x", ".example.com", "tcp://db:5432-5440",
		"10.1.0.0/16", "exa mple.com", "tcp://db", "https://", "x.example.com:0", "x.example.com:99999", "https://[::1"} {
		t.Run("bad "+bad, func(t *testing.T) {
			_, err := parseDestination(bad)
			require.Error(t, err)
		})
	}
}

// explainRig: network agents allows plain HTTP to net.example.test, tcp to
// db:5432 and https to 10.1.2.0/24, denies bad.example.test; the container
// agent adds api.example.test and path rules for path.example.test.
func explainRig(t *testing.T) *rig {
	r, _ := namesRig(t)
	r.p.Close()
	r.start(t)
	require.NoError(t, r.p.DeleteNetwork(netA))
	require.NoError(t, r.p.CreateNetwork(NetworkRequest{ID: netA, Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24", Options: map[string]string{
		"clawker.allow": "http://net.example.test,tcp://db.example.test:5432,10.1.2.0/24",
		"clawker.deny":  "bad.example.test"}}))
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 101, Container{ID: cid(1), Name: "agent", Labels: map[string]string{
		"clawker.allow": "api.example.test",
		"clawker.rules": `[{"dst":"path.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}]`}})
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, r.policyOf(t, "10.230.0.2").LabelError)
	return r
}

func TestExplain(t *testing.T) {
	r := explainRig(t)
	ctx := context.Background()
	explain := func(dst string) api.ExplainResponse {
		t.Helper()
		ex, err := r.p.Explain(ctx, api.ExplainRequest{Container: "agent", Destination: dst})
		require.NoError(t, err)
		require.Equal(t, "agent", ex.Container)
		require.Equal(t, netA, ex.Network)
		require.Equal(t, "agents", ex.NetworkName)
		return ex
	}
	for _, tc := range []struct {
		dst, reason, mode string
		rule              *api.ExplainRule
		fix               string // the suggested rule; "" for none
	}{
		{"api.example.test", "allowed", "passthrough",
			&api.ExplainRule{Rule: "api.example.test", Origin: api.OriginLabel, Key: "clawker.allow", Item: "api.example.test"}, ""},
		{"https://api.example.test/anything", "allowed", "passthrough",
			&api.ExplainRule{Rule: "api.example.test", Origin: api.OriginLabel, Key: "clawker.allow", Item: "api.example.test"}, ""},
		{"http://net.example.test/p", "allowed", "http",
			&api.ExplainRule{Rule: "http://net.example.test", Origin: api.OriginOption, Key: "clawker.allow", Item: "http://net.example.test"}, ""},
		{"tcp://db.example.test:5432", "allowed", "tcp",
			&api.ExplainRule{Rule: "tcp://db.example.test:5432", Origin: api.OriginOption, Key: "clawker.allow", Item: "tcp://db.example.test:5432"}, ""},
		{"10.1.2.3:443", "allowed", "ip",
			&api.ExplainRule{Rule: "10.1.2.0/24", Origin: api.OriginOption, Key: "clawker.allow", Item: "10.1.2.0/24"}, ""},
		{"https://path.example.test/v1/repos", "allowed", "inspect",
			&api.ExplainRule{Rule: `{"dst":"path.example.test","paths":[{"path":"/v1/","methods":["GET"]}],"path_default":"deny","inspect":true}`,
				Origin: api.OriginLabel, Key: "clawker.rules", Item: `{"dst":"path.example.test","paths":[{"path":"/v1/","methods":["GET"]}]}`, Path: "path /v1/ GET allow"}, ""},
		{"https://other.example.test/x", "no-rule", "", nil, "other.example.test"},
		{"tcp://db.example.test:5433", "port-not-allowed", "",
			&api.ExplainRule{Rule: "tcp://db.example.test:5432", Origin: api.OriginOption, Key: "clawker.allow", Item: "tcp://db.example.test:5432"}, "tcp://db.example.test:5433"},
		{"api.example.test:8443", "port-not-allowed", "",
			&api.ExplainRule{Rule: "api.example.test", Origin: api.OriginLabel, Key: "clawker.allow", Item: "api.example.test"}, "api.example.test:8443"},
		{"10.9.9.9:443", "no-rule", "", nil, "tcp://10.9.9.9:443"},
		{"https://www.bad.example.test", "deny-rule", "",
			&api.ExplainRule{Rule: `{"dst":"bad.example.test","action":"deny"}`, Origin: api.OriginOption, Key: "clawker.deny", Item: "bad.example.test"}, ""},
		{"https://path.example.test/admin", "path-rule", "", nil,
			`{"dst":"path.example.test","paths":[{"path":"/admin","methods":["GET"]}],"path_default":"deny","inspect":true}`},
	} {
		t.Run(tc.dst, func(t *testing.T) {
			ex := explain(tc.dst)
			require.Equal(t, tc.reason, ex.Reason, "%+v", ex)
			require.Equal(t, tc.reason == "allowed", ex.Allowed)
			require.Equal(t, tc.mode, ex.Mode)
			require.NotEmpty(t, ex.Detail)
			if tc.rule != nil {
				require.Equal(t, tc.rule, ex.Rule)
			}
			if ex.Allowed {
				require.Nil(t, ex.Fix)
				return
			}
			require.NotNil(t, ex.Fix)
			require.Equal(t, tc.fix, ex.Fix.Rule)
			if tc.fix == "" {
				require.NotEmpty(t, ex.Fix.Note, "says what to do when no rule can")
				return
			}
			require.Contains(t, ex.Fix.Command, "clawker-fw rules add agents ")

			// The suggested rule, added as a runtime rule, allows it.
			_, err := r.p.AddRules(netA, []string{tc.fix})
			require.NoError(t, err)
			after := explain(tc.dst)
			require.True(t, after.Allowed, "%+v", after)
			require.NotNil(t, after.Rule)
			if tc.reason != "path-rule" {
				require.Equal(t, api.OriginRuntime, after.Rule.Origin, "%+v", after.Rule)
			}
			require.NoError(t, r.p.RemoveRules(netA, []string{tc.fix}))
		})
	}

	ex := explain("https://www.bad.example.test")
	require.Contains(t, ex.Fix.Note, "remove the deny")
	require.Contains(t, ex.Fix.Note, "recreate the network")
	ex = explain("https://api.example.test/x")
	require.Contains(t, ex.Notes[0], "path is not seen")

	_, err := r.p.Explain(ctx, api.ExplainRequest{Container: "ghost", Destination: "x.example.test"})
	_, reason := ReasonOf(err)
	require.Equal(t, ReasonContainerGone, reason)
	_, err = r.p.Explain(ctx, api.ExplainRequest{Container: "agent", Destination: ".example.test"})
	_, reason = ReasonOf(err)
	require.Equal(t, ReasonInvalidRequest, reason)

	// Bypass: allowed, and said so.
	_, err = r.p.Bypass(cid(1), time.Minute)
	require.NoError(t, err)
	ex = explain("https://www.bad.example.test")
	require.True(t, ex.Allowed)
	require.Equal(t, "bypass", ex.Reason)
	require.Contains(t, ex.Notes[len(ex.Notes)-1], "bypass until")
}
