package e2e

// Issue "Hardening", class 9: what passthrough cannot see. Domain fronting
// (the SNI of an allowed name, the Host of a denied one, sent to the allowed
// name's server) passes a TLS passthrough rule, because the Host header is
// inside TLS; with clawker.tls.inspect=all the proxy reads it and refuses.
// The passthrough half pins the documented limit (README "What each mode can
// and cannot see", docs/THREATS.md): if it ever changes, the docs must too.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
	"github.com/clawker-fw/clawker-fw/e2e/harness"
	"github.com/stretchr/testify/require"
)

func TestHardeningFronting(t *testing.T) {
	f := pluginEnv(t)
	f.resetLeaks(t)
	const path = "/fronting-probe"
	// fronted sends the allowed name's SNI with the denied name's Host, then a
	// plain request to the allowed name as the control.
	fronted := func(netName, caOpt string) (string, string) {
		script := fmt.Sprintf(`%s
echo "== fronted"; curl -sS --max-time 10 $CA -H 'Host: %s' -w ' code=%%{http_code}\n' https://%s%s || true
echo "== control"; curl -sS --max-time 10 $CA -w ' code=%%{http_code}\n' https://%s/control || true
`, caOpt, harness.DeniedHost, harness.AllowedHost, path, harness.AllowedHost)
		out, err := f.run("--network", netName, "-v", f.e.CAFile()+":/test-ca.crt:ro", f.debian, "bash", "-c", script)
		require.NoError(t, err, out)
		s := outputSections(out)
		return s["fronted"], s["control"]
	}
	reached := func() bool {
		log, err := f.e.FakenetLog()
		require.NoError(t, err)
		_, ok := findEntry(log, func(en fakenet.Entry) bool {
			return en.Kind == fakenet.KindHTTP && en.Path == path && strings.EqualFold(en.Name, harness.DeniedHost)
		})
		return ok
	}

	t.Run("inspect=all refuses the fronted request", func(t *testing.T) {
		n := f.createNet(t, "cfw-front-insp", 113, "clawker.allow="+harness.AllowedHost, "clawker.tls.inspect=all")
		// The container trusts the plugin's CA, fetched from its gateway.
		ca := fmt.Sprintf(`curl -sS --max-time 5 -o /tmp/pca.crt http://%s/ca.crt; CA="--cacert /tmp/pca.crt"`, n.Gateway)
		fr, ctl := fronted(n.Name, ca)
		require.Contains(t, fr, "code=403", fr)
		require.Contains(t, ctl, "code=200", ctl)
		require.Contains(t, ctl, "host="+harness.AllowedHost, ctl)
		require.False(t, reached(), "a fronted request reached the denied tenant under inspection")
	})

	t.Run("passthrough cannot see the Host (documented limit)", func(t *testing.T) {
		require.NoError(t, f.e.ResetFakenetLog())
		n := f.createNet(t, "cfw-front-pass", 114, "clawker.allow="+harness.AllowedHost)
		fr, ctl := fronted(n.Name, `CA="--cacert /test-ca.crt"`)
		require.Contains(t, ctl, "code=200", ctl)
		require.Contains(t, fr, "code=200", "passthrough refused a fronted request: update README and docs/THREATS.md: %s", fr)
		require.True(t, reached(), "the fronted request should reach the server (passthrough does not read Host)")
	})
	f.requireNoLeaks(t)
}
