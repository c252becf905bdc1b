package floor

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	s, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Bytes and each side's half-close cross the pipe; it returns once both
// directions ended.
func TestPipeHalfClose(t *testing.T) {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	piped := make(chan struct{})
	go func() { Pipe(relayIn, relayOut); close(piped) }()

	_, err := client.Write([]byte("hello"))
	require.NoError(t, err)
	require.NoError(t, client.CloseWrite())
	got, err := io.ReadAll(server)
	require.NoError(t, err)
	require.Equal(t, "hello", string(got), "the client's bytes, then its FIN")

	_, err = server.Write([]byte("world"))
	require.NoError(t, err)
	select {
	case <-piped:
		t.Fatal("Pipe returned while the server's direction was open")
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, server.CloseWrite())
	got, err = io.ReadAll(client)
	require.NoError(t, err)
	require.Equal(t, "world", string(got), "the server's bytes after the client's half-close, then its FIN")
	select {
	case <-piped:
	case <-time.After(5 * time.Second):
		t.Fatal("Pipe did not return after both directions ended")
	}
}
