package e2e

// Class 8 of issue 11 (exhaustion): listener-port exhaustion must fail only
// the rule that asked too much, and never hold back a revocation.
//
//	cd /work/wt/exhaust && make plugin build && flock -o /tmp/clawker-e2e.lock env CLAWKER_E2E=1 \
//	  go test -count=1 -timeout 40m -v -run 'TestHardeningExhaust' ./e2e/

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// TestHardeningExhaustListenerPorts: a label with four 256-port ranges is
// refused at docker run with authz on; with authz off only that container's
// rules over its budget fail (status and denials say why) while its first
// range, its neighbours and the network's rules work; and `rules rm` of an
// allowed rule takes effect while those rules have no ports.
func TestHardeningExhaustListenerPorts(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	netID := f.network(t, "cfw-exh", "10.231.9.0/24", "clawker.allow=http://"+harness.AllowedHost)
	var items []string
	for _, lo := range []int{7000, 8000, 9000, 10000} {
		items = append(items, fmt.Sprintf("tcp://%s:%d-%d", harness.TCPHost, lo, lo+255))
	}
	label := "clawker.allow=" + strings.Join(items, ",")

	f.run(t, "cfw-exh-ok", "cfw-exh", nil, "sleep", "3600")
	f.waitIdentified(t, "cfw-exh-ok")

	t.Run("authz refuses the label at docker run", func(t *testing.T) {
		f.setAuthz(t, true)
		t.Cleanup(func() { f.setAuthz(t, false) })
		before := f.containerCount(t)
		_, errOut, err := e.Docker("run", "-d", "--name", "cfw-exh-refused", "--network", "cfw-exh", "--label", label, f.img, "sleep", "3600")
		require.Error(t, err)
		t.Logf("docker run -> %s", strings.TrimSpace(errOut))
		require.Contains(t, errOut, "authorization denied by plugin "+harness.PluginName)
		require.Contains(t, errOut, "label clawker.allow=tcp://"+harness.TCPHost+":8000-8255")
		require.Contains(t, errOut, "a container may use at most 256")
		require.Equal(t, before, f.containerCount(t), "nothing created")
		f.setAuthz(t, false)
	})

	// Authz off: the container runs; its first range fits its budget, the
	// other three fail alone.
	f.run(t, "cfw-exh-big", "cfw-exh", []string{"--label", label}, "sleep", "3600")
	f.waitIdentified(t, "cfw-exh-big")

	t.Run("without authz only that container's rules over the budget fail", func(t *testing.T) {
		st := f.mustCFW(t, "status")
		t.Logf("status:\n%s", st)
		require.Equal(t, 3, strings.Count(st, "container-port-limit"), "three ranges not applied")
		require.Contains(t, st, "NOT APPLIED: rule label clawker.allow=tcp://"+harness.TCPHost+":8000-8255")
		echo := func(c string, port int) (string, error) {
			out, errOut, err := e.Docker("exec", c, "sh", "-c", fmt.Sprintf("echo hi-%d | nc -w 2 %s %d 2>&1", port, harness.TCPHost, port))
			return out + errOut, err
		}
		out, _ := echo("cfw-exh-big", 7000)
		require.Contains(t, out, "hi-7000", "the range within the budget works")
		out, _ = echo("cfw-exh-big", 8000)
		require.NotContains(t, out, "hi-8000")
		opsEventually(t, 10*time.Second, func() (bool, string) {
			d, _, _ := f.cfw("denials")
			return strings.Contains(d, "container-port-limit"), d
		})
		// Control: the neighbour and the network's rule are untouched.
		ok, why := f.reach("cfw-exh-ok", harness.AllowedHost, "/")
		require.True(t, ok, why)
		ok, why = f.reach("cfw-exh-big", harness.AllowedHost, "/")
		require.True(t, ok, why)
	})

	t.Run("rules rm takes effect while another rule has no ports", func(t *testing.T) {
		f.mustCFW(t, "rules", "add", netID, "http://"+harness.AltHost)
		f.pollReach(t, "cfw-exh-ok", harness.AltHost, "/", true, 5*time.Second)
		f.mustCFW(t, "rules", "rm", netID, "http://"+harness.AltHost)
		f.pollReach(t, "cfw-exh-ok", harness.AltHost, "/", false, 5*time.Second)
		st := f.mustCFW(t, "status")
		require.Equal(t, 3, strings.Count(st, "container-port-limit"), "the failed rules are still failing")
		ok, why := f.reach("cfw-exh-ok", harness.AllowedHost, "/")
		require.True(t, ok, "control: %s", why)
	})

	t.Run("runtime rules over the network budget are refused", func(t *testing.T) {
		_, errOut, err := f.cfw(append([]string{"rules", "add", netID}, items[:3]...)...)
		require.Error(t, err)
		require.Contains(t, errOut, "LISTENER_PORT_LIMIT")
		require.NotContains(t, f.mustCFW(t, "rules", "ls", netID), harness.TCPHost, "nothing was added")
	})

	t.Run("network create over the budget is refused naming the option", func(t *testing.T) {
		_, errOut, err := e.Docker("network", "create", "-d", harness.PluginName, "--subnet", "10.231.10.0/24",
			"-o", "clawker.allow="+strings.Join(items[:3], ","), "cfw-exh-toobig")
		require.Error(t, err)
		require.Contains(t, errOut, "option clawker.allow=tcp://"+harness.TCPHost+":9000-9255")
		_, _, _ = e.Docker("network", "rm", "cfw-exh-toobig")
	})
}
