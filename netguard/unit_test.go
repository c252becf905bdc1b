package netguard

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func validNetwork() Network {
	return Network{
		Bridge: "cfwnbr0", Subnet: netip.MustParsePrefix("10.202.1.0/24"), Gateway: netip.MustParseAddr("10.202.1.1"),
		DNSPort: 15053, TransparentPort: 15001,
	}
}

func TestNetworkValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Network)
		errSub string
	}{
		{"valid", func(*Network) {}, ""},
		{"empty bridge", func(n *Network) { n.Bridge = "" }, "interface name"},
		{"long bridge", func(n *Network) { n.Bridge = "cfwn0123456789ab" }, "1 to 15 bytes"},
		{"bad char", func(n *Network) { n.Bridge = "cfwn/x" }, "invalid character"},
		{"ipv6 subnet", func(n *Network) { n.Subnet = netip.MustParsePrefix("fd00::/64") }, "not an IPv4 prefix"},
		{"host bits", func(n *Network) { n.Subnet = netip.MustParsePrefix("10.202.1.7/24") }, "host bits"},
		{"gateway outside", func(n *Network) { n.Gateway = netip.MustParseAddr("10.202.2.1") }, "not in subnet"},
		{"no dns port", func(n *Network) { n.DNSPort = 0 }, "DNS port"},
		{"no transparent port", func(n *Network) { n.TransparentPort = 0 }, "transparent port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := validNetwork()
			tc.mutate(&n)
			err := n.validate()
			if tc.errSub == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.errSub)
		})
	}
}

func TestEndpointValidate(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0xca, 0x01, 0x02}
	cases := []struct {
		name   string
		e      Endpoint
		errSub string
	}{
		{"valid", Endpoint{Bridge: "cfwnbr0", HostVeth: "cfwnv1", IP: netip.MustParseAddr("10.202.1.2"), MAC: mac}, ""},
		{"no veth", Endpoint{Bridge: "cfwnbr0", IP: netip.MustParseAddr("10.202.1.2"), MAC: mac}, "interface name"},
		{"ipv6", Endpoint{Bridge: "cfwnbr0", HostVeth: "cfwnv1", IP: netip.MustParseAddr("fd00::2"), MAC: mac}, "not IPv4"},
		{"no mac", Endpoint{Bridge: "cfwnbr0", HostVeth: "cfwnv1", IP: netip.MustParseAddr("10.202.1.2")}, "unicast"},
		{"multicast mac", Endpoint{Bridge: "cfwnbr0", HostVeth: "cfwnv1", IP: netip.MustParseAddr("10.202.1.2"),
			MAC: net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}}, "unicast"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.e.validate()
			if tc.errSub == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.errSub)
		})
	}
}

func TestComment(t *testing.T) {
	br, veth, ok := parseComment(netComment("cfwnbr1"))
	require.True(t, ok)
	require.Equal(t, "cfwnbr1", br)
	require.Empty(t, veth)

	br, veth, ok = parseComment(epComment("cfwnbr1", "cfwnv1"))
	require.True(t, ok)
	require.Equal(t, "cfwnbr1", br)
	require.Equal(t, "cfwnv1", veth)

	_, _, ok = parseComment(nil)
	require.False(t, ok)
	_, _, ok = parseComment([]byte{0, 6, 'o', 't', 'h', 'e', 'r', 0})
	require.False(t, ok)
}

func TestIfname(t *testing.T) {
	b := ifname("cfwnv1")
	require.Len(t, b, 16)
	require.Equal(t, "cfwnv1", ifnameString(b))
	mac := randomMAC()
	require.Equal(t, byte(0x02), mac[0]&0x03, "locally administered unicast")
}
