package fakenet

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// Protocol switches of the HTTP servers, for the tests of the proxy's
// upgrade refusals:
//   - "Upgrade: h2c" switches the connection to HTTP/2 served by the same
//     (recording) handler, with or without an HTTP2-Settings header, as
//     lenient fronts do: the requests inside are recorded with their own
//     :authority, which is what h2c smuggling through a proxy looks like;
//   - GET /ws with a WebSocket handshake switches to a WebSocket echo.

func wantsH2C(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c")
}

func wantsWebSocket(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		strings.EqualFold(r.Header.Get("Upgrade"), "websocket") && r.Header.Get("Sec-WebSocket-Key") != ""
}

// connReader reads the hijacked connection through its buffered reader.
type connReader struct {
	net.Conn
	r *bufio.Reader
}

func (c *connReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func serveH2C(w http.ResponseWriter, r *http.Request, h http.Handler) {
	c, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		return
	}
	(&http2.Server{}).ServeConn(&connReader{Conn: c, r: rw.Reader}, &http2.ServeConnOpts{Handler: h, UpgradeRequest: r})
}

// serveWebSocket answers the handshake (RFC 6455 section 4.2.2) and echoes
// every data frame, unmasked, until a close frame (echoed) or an error.
func serveWebSocket(w http.ResponseWriter, r *http.Request) {
	sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	c, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	_, err = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n")
	for err == nil {
		var op byte
		var payload []byte
		if op, payload, err = readFrame(rw.Reader); err != nil {
			return
		}
		if op == 0x9 { // ping
			op = 0xa
		}
		err = writeFrame(c, op, payload)
		if op == 0x8 { // close
			return
		}
	}
}

// readFrame reads one frame (any mask, lengths up to 1 MiB).
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return 0, nil, io.ErrShortBuffer
	}
	var mask [4]byte
	masked := hdr[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return hdr[0] & 0x0f, p, nil
}

func writeFrame(w io.Writer, op byte, p []byte) error {
	b := []byte{0x80 | op}
	switch {
	case len(p) < 126:
		b = append(b, byte(len(p)))
	case len(p) < 1<<16:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(len(p)))
	}
	_, err := w.Write(append(b, p...))
	return err
}
