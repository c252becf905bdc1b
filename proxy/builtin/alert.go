package builtin

import (
	"io"
	"time"
)

// tlsAccessDenied is a TLS alert record: content type 21 (alert), legacy
// record version 3.3 (what TLS 1.2 and 1.3 put on records; clients accept
// it as the first record), length 2, level 2 (fatal), description 49
// (access_denied). It is sent in the clear: the handshake never began.
var tlsAccessDenied = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49}

// alertLinger bounds how long a refused TLS connection is kept open for
// the client to read the alert and close.
const alertLinger = time.Second

// refuseTLS ends a refused connection whose ClientHello was read with a
// TLS access_denied alert, so that clients say why ("tlsv1 alert access
// denied", "remote error: tls: access denied") instead of "connection
// reset". Connections without a ClientHello are reset as before.
//
// The peeked ClientHello is consumed first: closing a socket with unread
// bytes sends a reset, which can overtake the alert. Then the alert, a
// FIN, and the client's remaining bytes drained until it closes or
// alertLinger passes.
func (f *flow) refuseTLS() {
	if f.hello == 0 || f.tcp == nil {
		f.reset()
		return
	}
	c := f.tcp
	_ = c.SetDeadline(time.Now().Add(alertLinger))
	if _, err := io.CopyN(io.Discard, c, int64(f.hello)); err != nil {
		f.reset()
		return
	}
	if _, err := c.Write(tlsAccessDenied); err != nil {
		f.reset()
		return
	}
	_ = c.CloseWrite()
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	_ = c.Close()
}
