package dns

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    *Config
		wantErr string
	}{
		{name: "minimal", input: "clawker {\n snapshot /s.json\n}",
			want: &Config{SnapshotPath: "/s.json", TTLFloor: DefaultTTLFloor, TTLCeiling: DefaultTTLCeiling,
				PendingTimeout: DefaultPendingTimeout, Poll: 100 * time.Millisecond}},
		{name: "everything", input: `clawker {
    snapshot /state/snapshot.json
    bpf_pins /sys/fs/bpf/clawker-fw
    upstream 127.0.0.1:5300 127.0.0.2
    ttl_floor 1m
    ttl_ceiling 2h
    pending_timeout 500ms
    poll 50ms
    status 127.0.0.1:15056
    events /state/dns-events.sock
}`, want: &Config{SnapshotPath: "/state/snapshot.json", PinDir: "/sys/fs/bpf/clawker-fw",
			Upstreams: []string{"127.0.0.1:5300", "127.0.0.2:53"}, TTLFloor: time.Minute, TTLCeiling: 2 * time.Hour,
			PendingTimeout: 500 * time.Millisecond, Poll: 50 * time.Millisecond, StatusAddr: "127.0.0.1:15056",
			EventsPath: "/state/dns-events.sock"}},
		{name: "upstream next", input: "clawker {\n snapshot /s\n upstream next\n}",
			want: &Config{SnapshotPath: "/s", UseNext: true, TTLFloor: DefaultTTLFloor, TTLCeiling: DefaultTTLCeiling,
				PendingTimeout: DefaultPendingTimeout, Poll: 100 * time.Millisecond}},
		{name: "no snapshot", input: "clawker", wantErr: "snapshot path is required"},
		{name: "argument", input: "clawker foo {\n snapshot /s\n}", wantErr: "Wrong argument count"},
		{name: "unknown property", input: "clawker {\n snapshot /s\n cache 5\n}", wantErr: `unknown property "cache"`},
		{name: "bad duration", input: "clawker {\n snapshot /s\n ttl_floor soon\n}", wantErr: "want a positive duration"},
		{name: "floor above ceiling", input: "clawker {\n snapshot /s\n ttl_floor 2h\n}", wantErr: "above ttl_ceiling"},
		{name: "upstream name", input: "clawker {\n snapshot /s\n upstream dns.example.test\n}", wantErr: "not an IP"},
		{name: "status not host:port", input: "clawker {\n snapshot /s\n status 15056\n}", wantErr: "want host:port"},
		{name: "twice", input: "clawker {\n snapshot /s\n}\nclawker {\n snapshot /s\n}", wantErr: "only be used once"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := caddy.NewTestController("dns", tc.input)
			got, err := parse(c)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestSetupRegistersHandler(t *testing.T) {
	c := caddy.NewTestController("dns", "clawker {\n snapshot "+filepath.Join(t.TempDir(), "s.json")+"\n upstream 127.0.0.1:1\n}")
	require.NoError(t, setup(c))
}

func TestCorefileGolden(t *testing.T) {
	tests := []struct {
		name string
		cfg  CorefileConfig
	}{
		{name: "defaults", cfg: CorefileConfig{SnapshotPath: "/run/clawker-fw/dns/snapshot", PinDir: "/sys/fs/bpf/clawker-fw",
			EventsPath: "/run/clawker-fw/dns-events.sock"}},
		{name: "custom", cfg: CorefileConfig{
			Bind: []string{"127.0.0.1"}, Port: 5353, SnapshotPath: "/tmp/s.json",
			Upstreams: []string{"127.0.0.1:5300", "192.0.2.53"}, TTLFloor: time.Minute, TTLCeiling: 30 * time.Minute,
			PendingTimeout: time.Second, HealthAddr: "127.0.0.1:18080", ReadyAddr: "127.0.0.1:18081",
			MetricsAddr: "127.0.0.1:19153", StatusAddr: "127.0.0.1:18082", ReloadInterval: 2 * time.Second, QueryLog: true,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Corefile(tc.cfg)
			require.Equal(t, got, Corefile(tc.cfg), "pure")
			path := filepath.Join("testdata", "Corefile."+tc.name+".golden")
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err, "run go test ./dns -run TestCorefileGolden -update")
			require.Equal(t, string(want), got)
		})
	}
}
