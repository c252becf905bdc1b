package fakenet

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestUpgrades: an h2c upgrade carries a second request with its own
// :authority, which is recorded as such; /ws echoes WebSocket frames.
func TestUpgrades(t *testing.T) {
	s := startServer(t, testConfig(t))
	addr := s.Addr("http/0").String()

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: allowed.example.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, 101, resp.StatusCode)
	var hb, out bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "inside.example.test"}, {":path", "/inside"}} {
		require.NoError(t, enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	fr := http2.NewFramer(&out, br)
	require.NoError(t, fr.WriteSettings())
	require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}))
	_, err = c.Write(append([]byte(http2.ClientPreface), out.Bytes()...))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, e := range s.Recorder().Since(0) {
			if e.Kind == KindHTTP && e.Name == "inside.example.test" && e.Path == "/inside" {
				return true
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond)

	w, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer w.Close()
	_ = w.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(w, "GET /ws HTTP/1.1\r\nHost: allowed.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	require.NoError(t, err)
	wr := bufio.NewReader(w)
	resp, err = http.ReadResponse(wr, nil)
	require.NoError(t, err)
	require.Equal(t, 101, resp.StatusCode)
	require.Equal(t, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", resp.Header.Get("Sec-WebSocket-Accept"))
	msg := []byte("hello websocket")
	frame := []byte{0x81, 0x80 | byte(len(msg)), 1, 2, 3, 4}
	for i, b := range msg {
		frame = append(frame, b^[]byte{1, 2, 3, 4}[i%4])
	}
	_, err = w.Write(frame)
	require.NoError(t, err)
	op, p, err := readFrame(wr)
	require.NoError(t, err)
	require.Equal(t, byte(1), op)
	require.Equal(t, msg, p)
}
