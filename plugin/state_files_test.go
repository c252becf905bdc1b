package plugin

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/clawker-fw/clawker-fw/policy"
)

// TestLoadStateLayoutV1: a state.json of layout 1 (each network's
// configuration inline) loads as it was written, in the current layout.
func TestLoadStateLayoutV1(t *testing.T) {
	st := fullState(t)
	st.Version = 1
	raw, err := json.Marshal(st)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"config":{"rules":[`, "layout 1 carries the configurations")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "state.json"), raw, 0o600))
	got, err := loadState(filepath.Join(dir, "state.json"))
	require.NoError(t, err)
	require.Equal(t, stateVersion, got.Version)
	for id, n := range st.Networks {
		require.Equal(t, n.Config, got.Networks[id].Config, "network %s", id)
	}
	got.Version = 1
	again, err := json.Marshal(got)
	require.NoError(t, err)
	require.Equal(t, string(raw), string(again))
}

// TestDecodeStateChecksConfigFiles: a configuration file that is missing,
// damaged, named outside the configuration directory, doubled by an inline
// configuration, or a layout this plugin does not read, fails the load with
// the network and the reason; nothing half-read is returned.
func TestDecodeStateChecksConfigFiles(t *testing.T) {
	e := NewStateEncoder()
	st := fullState(t)
	raw, err := e.Encode(st)
	require.NoError(t, err)
	raw = append([]byte(nil), raw...)
	files := e.ConfigFiles()
	require.Len(t, files, 1, "two networks of the same configuration share its file")
	var name0 string
	for name := range files {
		name0 = name
	}
	require.Equal(t, 2, strings.Count(string(raw), name0))
	good := func(name string) ([]byte, error) { return files[name], nil }
	_, err = decodeState(raw, good)
	require.NoError(t, err, "the state as written decodes")

	for _, tc := range []struct {
		name string
		raw  string
		read func(string) ([]byte, error)
		want string
	}{
		{"missing", string(raw), func(string) ([]byte, error) { return nil, os.ErrNotExist }, "configuration file: file does not exist"},
		{"damaged", string(raw), func(n string) ([]byte, error) {
			return []byte(strings.Replace(string(files[n]), "example", "exampl3", 1)), nil
		}, "(damaged)"},
		{"outside", strings.Replace(string(raw), name0, "../../../etc/passwd", 1), good, `"../../../etc/passwd": not a SHA-256 name`},
		{"upper case", strings.Replace(string(raw), name0, strings.ToUpper(strings.TrimSuffix(name0, ".json"))+".json", 1), good, "not a SHA-256 name"},
		{"both", strings.Replace(string(raw), `"config_file":"`+name0, `"config":{"rules":null},"config_file":"`+name0, 1), good, "both a configuration and a configuration file"},
		{"options too", strings.Replace(string(raw), `"config_file":"`+name0, `"options":{},"config_file":"`+name0, 1), good, "both a configuration and a configuration file"},
		{"not json", string(raw), func(string) ([]byte, error) { return []byte("{"), nil }, "(damaged)"},
		{"layout 3", strings.Replace(string(raw), `"version":2`, `"version":3`, 1), good, "layout version 3, this plugin reads 1 and 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NotEqual(t, string(raw), tc.raw+"x")
			read := func(n string) ([]byte, error) {
				require.True(t, configFileRE.MatchString(n), "read asked for %q", n)
				return tc.read(n)
			}
			got, err := decodeState([]byte(tc.raw), read)
			require.ErrorContains(t, err, tc.want)
			require.Nil(t, got)
			if tc.name != "layout 3" {
				require.ErrorContains(t, err, "network n")
			}
		})
	}
}

// TestSaveKeepsConfigFiles: a network's configuration is written once, in
// a file of its own that state.json names; a runtime rule change writes
// state.json alone; a restart reads the configuration back; the file is
// removed once no network names it (and a leftover temporary file with it).
func TestSaveKeepsConfigFiles(t *testing.T) {
	r := newRig(t)
	r.network(t, map[string]string{"clawker.allow": "opt-only.example.test,.wild.example.test"})
	r.endpoint(t, "ep1", "10.230.0.2")
	r.container(t, "ep1", 401, Container{ID: cid(41), Name: "a"})
	cfgDir := filepath.Join(r.dir, configDir)
	list := func() map[string]os.FileInfo {
		t.Helper()
		ents, err := os.ReadDir(cfgDir)
		require.NoError(t, err)
		out := map[string]os.FileInfo{}
		for _, e := range ents {
			fi, err := e.Info()
			require.NoError(t, err)
			out[e.Name()] = fi
		}
		return out
	}
	first := list()
	require.Len(t, first, 1)
	var name string
	for n := range first {
		name = n
	}
	cfg, err := os.ReadFile(filepath.Join(cfgDir, name))
	require.NoError(t, err)
	require.Contains(t, string(cfg), "opt-only.example.test")
	state, err := os.ReadFile(r.p.statePath())
	require.NoError(t, err)
	require.NotContains(t, string(state), "opt-only.example.test", "state.json does not carry the option rules")
	require.Contains(t, string(state), `"config_file":"`+name+`"`)

	_, err = r.p.AddRules(netA, []string{"runtime-only.example.test"})
	require.NoError(t, err)
	after := list()
	require.Len(t, after, 1)
	require.True(t, os.SameFile(first[name], after[name]), "the configuration file was not written again")
	require.Equal(t, first[name].ModTime(), after[name].ModTime())

	// A crash during a configuration write leaves a temporary file.
	tmp := filepath.Join(cfgDir, "."+strings.Repeat("0", 64)+".json.tmp-123")
	require.NoError(t, os.WriteFile(tmp, []byte("{"), 0o600))
	r.p.Close()
	want := r.p.st.Networks[netA].clone()
	require.NotEmpty(t, want.Config.Rules)
	r.start(t)
	loaded, err := loadState(r.p.statePath()) // what the restart read
	require.NoError(t, err)
	got := loaded.Networks[netA]
	require.Equal(t, want.Options, got.Options, "options read back from the configuration file")
	require.Equal(t, want.Config, got.Config, "rules read back from the configuration file")
	require.Len(t, got.Runtime, 1, "runtime rules read back from state.json")
	require.Eventually(t, func() bool { return !r.policyOf(t, "10.230.0.2").Pending }, 5*time.Second, 10*time.Millisecond)
	pol := r.policyOf(t, "10.230.0.2").Policy
	for _, name := range []string{"opt-only.example.test", "x.wild.example.test", "runtime-only.example.test"} {
		require.True(t, pol.MatchName(name, 443, policy.L4TCP).Allowed, "%s allowed after the restart", name)
	}
	require.False(t, pol.MatchName("other.example.test", 443, policy.L4TCP).Allowed)

	require.NoError(t, r.p.DeleteEndpoint(netA, "ep1"))
	require.NoError(t, r.p.DeleteNetwork(netA))
	require.Empty(t, list(), "no configuration file is left once no network names it")
}

// TestSaveRefusedWhenConfigCannotBeWritten: when a network's configuration
// file cannot be written, the mutation is refused before state.json is
// written, and state.json is unchanged.
func TestSaveRefusedWhenConfigCannotBeWritten(t *testing.T) {
	r := newRig(t)
	before, err := os.ReadFile(r.p.statePath())
	require.NoError(t, err)
	cfgDir := filepath.Join(r.dir, configDir)
	require.NoError(t, os.RemoveAll(cfgDir))
	require.NoError(t, os.WriteFile(cfgDir, nil, 0o600)) // a file where the directory goes
	r.p.configs.onDisk = nil                             // as after a start: list the directory again
	err = r.p.CreateNetwork(NetworkRequest{ID: netA, Options: map[string]string{"clawker.allow": "a.example.test"}, Pool: "10.230.0.0/24", Gateway: "10.230.0.1/24"})
	require.ErrorContains(t, err, configDir)
	after, err := os.ReadFile(r.p.statePath())
	require.NoError(t, err)
	require.Equal(t, string(before), string(after))
	require.Empty(t, r.p.Snapshot().Networks)
}
