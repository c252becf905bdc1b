package policy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNormalizeUpstream(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{in: "192.0.2.53", want: "192.0.2.53:53"},
		{in: "192.0.2.53:5353", want: "192.0.2.53:5353"},
		{in: "::ffff:192.0.2.53", want: "192.0.2.53:53"},
		{in: "2001:db8::53", want: "[2001:db8::53]:53"},
		{in: "[2001:db8::53]:5353", want: "[2001:db8::53]:5353"},
		{in: "dns.example", err: "want ip[:port]"},
		{in: "192.0.2.53:0", err: "port 0"},
		{in: "fe80::1%eth0", err: "zones"},
		{in: "", err: "empty"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeUpstream(tt.in)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestNetworkUpstreams(t *testing.T) {
	var none *Network
	require.Nil(t, none.Upstreams())
	require.Nil(t, (&Network{}).Upstreams())
	n := &Network{Settings: NetworkSettings{DNSUpstreams: []string{"192.0.2.1", "bad", "[2001:db8::1]:5353"}}}
	require.Equal(t, []string{"192.0.2.1:53", "[2001:db8::1]:5353"}, n.Upstreams())
}
