package e2e

// Issue 11, class 4: rules come only from labels given for the container.
//
//  1. Docker merges an image's LABELs into its containers' labels: an image
//     with `LABEL clawker.allow=...` must grant nothing to its containers,
//     with authz on (the create request says what the user gave) and off
//     (a label equal to the image's counts as the image's, failing closed);
//     `clawker-fw status` shows the ignored label.
//  2. clawker.* labels on a container that joins no clawker-fw network
//     protect nothing: authz refuses it.
//
//	cd /work/wt/labels && make plugin build && CLAWKER_E2E=1 \
//	  go test -count=1 -v -run 'TestHardeningLabels' ./e2e/

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/e2e/harness"
)

// labelledImage commits busybox with image labels (no registry, no build).
func labelledImage(t *testing.T, f *opsFixture, name string, labels ...string) string {
	t.Helper()
	e := f.e
	src := e.MustDocker(t, "create", "--network", "none", f.img, "true")
	args := []string{"commit"}
	for _, l := range labels {
		args = append(args, "--change", "LABEL "+l)
	}
	e.MustDocker(t, append(args, src, name)...)
	e.MustDocker(t, "rm", src)
	t.Cleanup(func() { _, _, _ = e.Docker("rmi", "-f", name) })
	got := e.MustDocker(t, "image", "inspect", "-f", "{{json .Config.Labels}}", name)
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		require.Contains(t, got, `"`+k+`":"`+v+`"`, "image label")
	}
	return name
}

// runImage starts a detached container of image on network.
func runImage(t *testing.T, f *opsFixture, name, network, image string, extra ...string) {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--network", network}, extra...)
	f.e.MustDocker(t, append(args, image, "sleep", "3600")...)
	t.Cleanup(func() { _, _, _ = f.e.Docker("rm", "-f", name) })
}

// ignoredLabels returns the "ignored label" lines `clawker-fw status` prints
// under container name's endpoint.
func ignoredLabels(t *testing.T, f *opsFixture, name string) []string {
	t.Helper()
	var out []string
	in := false
	for _, l := range strings.Split(f.mustCFW(t, "status"), "\n") {
		switch {
		case strings.HasPrefix(l, "  endpoint "):
			in = strings.Contains(l, " "+name+":")
		case in && strings.HasPrefix(l, "    ignored label "):
			out = append(out, strings.TrimPrefix(l, "    ignored label "))
		}
	}
	return out
}

// TestHardeningLabelsImageLabelsNeverGrant: an image's clawker.allow grants
// nothing; the same rule given for the container does.
func TestHardeningLabelsImageLabelsNeverGrant(t *testing.T) {
	f := opsSetup(t)
	require.NoError(t, f.e.ResetFakenetLog())
	label := "clawker.allow=http://" + harness.AllowedHost
	img := labelledImage(t, f, "cfw-hl-img:latest", label)
	netName := "cfw-hl-img"
	f.network(t, netName, "10.231.40.0/24") // no network rules at all

	// check runs a container and asserts whether it reaches the allowed
	// host, and which of its labels status shows as ignored.
	check := func(t *testing.T, name, image string, extra []string, reach bool, ignoredWhy string) {
		t.Helper()
		runImage(t, f, name, netName, image, extra...)
		f.waitIdentified(t, name)
		if reach {
			f.pollReach(t, name, harness.AllowedHost, "/labels", true, 10*time.Second)
		} else {
			ok, out := f.reach(name, harness.AllowedHost, "/labels")
			require.False(t, ok, "%s reached %s through its image's label: %s", name, harness.AllowedHost, out)
			ns, _, _ := f.e.Docker("exec", name, "nslookup", harness.AllowedHost)
			require.NotContains(t, ns, "10.220.0.10", "the name is not even resolved (NXDOMAIN)")
			t.Logf("%s -> %s: %q; nslookup: %q", name, harness.AllowedHost, strings.TrimSpace(out), strings.TrimSpace(ns))
		}
		ign := ignoredLabels(t, f, name)
		t.Logf("status of %s: ignored labels %q", name, ign)
		if ignoredWhy == "" {
			require.Empty(t, ign)
			return
		}
		require.Len(t, ign, 1)
		require.Contains(t, ign[0], label+" (")
		require.Contains(t, ign[0], ignoredWhy)
	}

	t.Run("authz on", func(t *testing.T) {
		f.setAuthz(t, true)
		t.Cleanup(func() { f.setAuthz(t, false) })
		pf := &pluginFixture{e: f.e}
		logAt := len(pf.dockerdLog(t))
		check(t, "cfw-hl-on-img", img, nil, false, "from the image, not given for the container")
		require.Contains(t, pf.logTail(t, logAt), "clawker label ignored", "the plugin logs it")
		// Control: the same label given for the container (equal to the
		// image's: the create's record says the user gave it).
		check(t, "cfw-hl-on-given", img, []string{"--label", label}, true, "")
		check(t, "cfw-hl-on-plain", f.img, []string{"--label", label}, true, "")
	})

	t.Run("authz off", func(t *testing.T) {
		f.setAuthz(t, false)
		check(t, "cfw-hl-off-img", img, nil, false, "no record of the create says it was given (authz was off)")
		// Fail closed, documented: without authz nothing says who gave a
		// label whose key and value equal the image's, so it is the image's.
		check(t, "cfw-hl-off-equal", img, []string{"--label", label}, false, "authz was off")
		// Controls: the label on an image without it, and another spelling
		// of the rule on the labelled image.
		check(t, "cfw-hl-off-plain", f.img, []string{"--label", label}, true, "")
		check(t, "cfw-hl-off-other", img, []string{"--label", label + ",http://" + harness.AltHost}, true, "")
		f.pollReach(t, "cfw-hl-off-other", harness.AltHost, "/labels", true, 10*time.Second)
	})
	(&pluginFixture{e: f.e}).requireNoLeaks(t)
}

// TestHardeningLabelsOffFirewallRefused: clawker labels on a container on no
// clawker-fw network are refused at create, with a message that says so.
func TestHardeningLabelsOffFirewallRefused(t *testing.T) {
	f := opsSetup(t)
	e := f.e
	fwNet := "cfw-hl-off"
	f.network(t, fwNet, "10.231.41.0/24", "clawker.allow=http://"+harness.AllowedHost)
	plain := "cfw-hl-plain"
	e.MustDocker(t, "network", "create", "--internal", "--subnet", "10.231.42.0/24", plain)
	t.Cleanup(func() { _, _, _ = e.Docker("network", "rm", plain) })
	runImage(t, f, "cfw-hl-agent", fwNet, f.img)
	f.waitIdentified(t, "cfw-hl-agent")

	f.setAuthz(t, true)
	t.Cleanup(func() { f.setAuthz(t, false) })

	label := "clawker.allow=http://" + harness.AllowedHost
	for _, tc := range []struct {
		name  string
		args  []string
		where string
	}{
		{"network host", []string{"--network", "host", "--label", label}, "(network host)"},
		{"default bridge", []string{"--label", label}, "(the default bridge)"},
		{"network bridge", []string{"--network", "bridge", "--label", label}, "(the default bridge)"},
		{"network none", []string{"--network", "none", "--label", label}, "(network none)"},
		{"plain user network", []string{"--network", plain, "--label", label}, "(network " + plain + ")"},
		{"deny label", []string{"--network", "host", "--label", "clawker.deny=" + harness.DeniedHost}, "(network host)"},
		{"rules label", []string{"--network", "host", "--label", `clawker.rules=[{"dst":"` + harness.AllowedHost + `"}]`}, "(network host)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.containerCount(t)
			args := append(append([]string{"run", "--rm"}, tc.args...), f.img, "echo", "ran")
			out, errOut, err := e.Docker(args...)
			t.Logf("docker %s\n    -> %s", strings.Join(args, " "), strings.TrimSpace(errOut))
			require.Error(t, err, "must be refused")
			require.NotContains(t, out, "ran")
			for _, w := range []string{"authorization denied by plugin " + harness.PluginName, "no clawker-fw network " + tc.where,
				"its labels protect nothing", "--network <a clawker-fw network>"} {
				require.Contains(t, errOut, w)
			}
			require.Equal(t, before, f.containerCount(t), "nothing created")
		})
	}

	t.Run("control: container:<firewalled> with labels", func(t *testing.T) {
		runImage(t, f, "cfw-hl-side", "container:cfw-hl-agent", f.img, "--label", label)
		require.Equal(t, "ok", e.MustDocker(t, "exec", "cfw-hl-side", "echo", "ok"))
	})
	t.Run("control: no clawker labels on a plain network", func(t *testing.T) {
		require.Equal(t, "ok", e.MustDocker(t, "run", "--rm", "--network", plain, "--label", "com.example.team=x", f.img, "echo", "ok"))
	})
	t.Run("control: clawker labels on the firewalled network", func(t *testing.T) {
		require.Equal(t, "ok", e.MustDocker(t, "run", "--rm", "--network", fwNet, "--label", label, f.img, "echo", "ok"))
	})
}
