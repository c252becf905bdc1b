package floor

import "io"

// HalfCloser is a connection whose write side closes on its own
// (*net.TCPConn, *tls.Conn).
type HalfCloser interface {
	io.ReadWriter
	CloseWrite() error
}

// Pipe copies a to b and b to a (io.Copy: splice(2) between TCP
// connections) until both directions end, closing each write side when its
// source ends, so a half-close crosses the relay.
func Pipe(a, b HalfCloser) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(b, a)
		_ = b.CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(a, b)
	_ = a.CloseWrite()
	<-done
}
