package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// PluginName is the name the harness creates the plugin under. On Docker
// 20.10, `docker network create -d` needs the ":latest" tag.
const PluginName = "clawker-fw:latest"

// DefaultPinDir is the plugin's BPF pin directory by default
// (CLAWKER_BPF_PIN_DIR): the Env's plugin pins there.
const DefaultPinDir = "/sys/fs/bpf/clawker-fw"

// PluginTestCAName is the file name of the test CA in the plugin's state
// directory (state.source); the plugin sees it as
// /var/lib/clawker-fw/test-ca.crt.
const PluginTestCAName = "test-ca.crt"

// PluginSettings returns the default `docker plugin set` arguments for the
// test environment: mount sources of the test dockerd, the fake DNS as
// upstream, the fake internet's range allowed as upstream, the test CA.
// Callers may append to or edit the list before InstallPlugin.
func (e *Env) PluginSettings() []string {
	return []string{
		"netns.source=" + e.NetnsDir(),
		"docker-sock.source=" + e.Socket(),
		"state.source=" + e.StateDir(),
		"CLAWKER_DNS_UPSTREAM=" + DNSUpstream,
		"CLAWKER_ALLOW_PRIVATE_UPSTREAMS=" + Subnet,
		"CLAWKER_EXTRA_CA=/var/lib/clawker-fw/" + PluginTestCAName,
	}
}

// EnsureHostBPFFS mounts bpffs on /sys/fs/bpf when it is not mounted
// there. The plugin pins into the host's bpffs, and a mount made after the
// plugin started would not propagate into it (DESIGN.md). The mount stays.
func EnsureHostBPFFS() error {
	out, err := exec.Command("stat", "-f", "-c", "%T", "/sys/fs/bpf").Output()
	if err == nil && strings.TrimSpace(string(out)) == "bpf_fs" {
		return nil
	}
	if err := run("mount", "-t", "bpf", "bpf", "/sys/fs/bpf"); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	return nil
}

// InstallPlugin creates PluginName from buildDir (config.json + rootfs/, as
// `make plugin` produces in build/plugin), applies settings (default
// PluginSettings() when none are given) and enables it. Before enabling it
// mounts the host bpffs, creates the netns and state directories and copies
// the test CA into the state directory.
func (e *Env) InstallPlugin(buildDir string, settings ...string) error {
	return e.InstallPluginAs(PluginName, buildDir, settings...)
}

// PluginRef is the reference the plugin was last installed under
// (PluginName unless InstallPluginAs named another).
func (e *Env) PluginRef() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pluginRef == "" {
		return PluginName
	}
	return e.pluginRef
}

// SetPluginRef makes ref the reference PluginRef and the removal helpers
// use, for a plugin installed without InstallPluginAs (from a registry, by
// scripts/install.sh).
func (e *Env) SetPluginRef(ref string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pluginRef = ref
}

// InstallPluginAs is InstallPlugin under another reference, such as a
// namespaced, tagged one (ho/clawker-fw:1.0): the plugin must recognize
// itself and its networks under any reference. PluginRef and the removal
// helpers follow it.
func (e *Env) InstallPluginAs(ref, buildDir string, settings ...string) error {
	e.SetPluginRef(ref)
	if len(settings) == 0 {
		settings = e.PluginSettings()
	}
	if _, err := os.Stat(filepath.Join(buildDir, "config.json")); err != nil {
		return fmt.Errorf("install plugin: %w", err)
	}
	if err := e.PreparePluginHost(); err != nil {
		return err
	}
	start := time.Now()
	if _, _, err := e.Docker("plugin", "create", ref, buildDir); err != nil {
		return err
	}
	if _, _, err := e.Docker(append([]string{"plugin", "set", ref}, settings...)...); err != nil {
		return err
	}
	if _, _, err := e.Docker("plugin", "enable", "--timeout", "60", ref); err != nil {
		return err
	}
	e.logf("plugin %s enabled in %v", ref, time.Since(start).Round(time.Millisecond))
	return nil
}

// PreparePluginHost does what the host needs before the plugin is enabled
// with PluginSettings, however it was installed (create, or install from a
// registry): the host bpffs mounted, the netns and state directories, the
// test CA in the state directory.
func (e *Env) PreparePluginHost() error {
	if err := EnsureHostBPFFS(); err != nil {
		return err
	}
	for _, d := range []string{e.NetnsDir(), e.StateDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	ca, err := os.ReadFile(e.CAFile())
	if err != nil {
		return fmt.Errorf("read test ca: %w", err)
	}
	if err := os.WriteFile(filepath.Join(e.StateDir(), PluginTestCAName), ca, 0o644); err != nil {
		return fmt.Errorf("copy test ca: %w", err)
	}
	return nil
}

// RemovePlugin disables (forced) and removes the plugin (PluginRef).
func (e *Env) RemovePlugin() error {
	ref := e.PluginRef()
	_, _, _ = e.Docker("plugin", "disable", "-f", ref)
	_, _, err := e.Docker("plugin", "rm", "-f", ref)
	return err
}

// UninstallPlugin removes every container and clawker-fw network (while the
// plugin still serves them), the plugin, and then what the plugin leaves on
// the host by design (CleanPluginHostState). Authz must be off.
func (e *Env) UninstallPlugin() error {
	if out, _, err := e.Docker("ps", "-aq"); err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = e.Docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...)
	}
	if out, _, err := e.Docker("network", "ls", "-q", "--filter", "driver="+e.PluginRef()); err == nil && strings.TrimSpace(out) != "" {
		_, _, _ = e.Docker(append([]string{"network", "rm"}, strings.Fields(out)...)...)
	}
	return errors.Join(e.RemovePlugin(), CleanPluginHostState())
}

// CleanPluginHostState removes what the plugin leaves on the host by design
// once it is gone: its BPF pins (unpinning detaches the cgroup programs) and
// its nft tables. Only call it with no plugin running.
func CleanPluginHostState() error {
	var errs []error
	if err := os.RemoveAll(DefaultPinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	for _, fam := range []string{"inet", "bridge"} {
		if exec.Command("nft", "list", "table", fam, "clawker_fw").Run() == nil {
			if out, err := exec.Command("nft", "delete", "table", fam, "clawker_fw").CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("nft delete table %s clawker_fw: %v: %s", fam, err, out))
			}
		}
	}
	return errors.Join(errs...)
}

// HasBoundingCap reports whether capability number c (e.g. 24 for
// CAP_SYS_RESOURCE) is in this process's bounding set. runc refuses to
// start a plugin whose config.json asks for a capability outside it.
func HasBoundingCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}
