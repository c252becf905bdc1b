package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSelfPluginID(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	// As in a managed plugin: Docker binds <exec-root>/plugins/<id> at
	// /run/docker/plugins (on a tmpfs /run the root is /docker/plugins/<id>).
	info := "22 1 0:20 / / rw - overlay overlay rw\n" +
		"40 22 0:24 /docker/plugins/" + id + " /run/docker/plugins rw,nosuid master:9 - tmpfs tmpfs rw\n" +
		"41 22 0:25 /docker/netns /var/run/docker/netns rw - tmpfs tmpfs rw\n"
	got, err := SelfPluginID(info)
	require.NoError(t, err)
	require.Equal(t, id, got)
	got, err = SelfPluginID("40 22 8:1 /tmp/e2e\\040dir/exec/plugins/" + id + " /run/docker/plugins rw - ext4 /dev/sda1 rw\n")
	require.NoError(t, err)
	require.Equal(t, id, got)

	_, err = SelfPluginID("22 1 0:20 / / rw - overlay overlay rw\n")
	require.ErrorContains(t, err, "nothing is mounted at /run/docker/plugins")
	_, err = SelfPluginID("40 22 0:24 /docker/plugins /run/docker/plugins rw - tmpfs tmpfs rw\n")
	require.ErrorContains(t, err, "not <exec-root>/plugins/<id>")
}
