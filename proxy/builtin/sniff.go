package builtin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxHelloBytes bounds how much of a ClientHello the proxy peeks at. Real
// ClientHellos, post-quantum key shares included, are a few KB.
const maxHelloBytes = 64 << 10

var (
	errNotTLS = errors.New("not a TLS handshake")
	errNoSNI  = errors.New("client hello has no server name")
)

// peekConn peeks at the bytes queued on a TCP socket with MSG_PEEK, never
// consuming them, so that the bare *net.TCPConn can later be handed to
// io.Copy and Go's splice path stays on. need is called with everything
// peeked so far and returns how many bytes it needs in total (0 when it has
// enough, -1 when the bytes can never satisfy it).
func peekConn(c *net.TCPConn, deadline time.Time, need func([]byte) int) ([]byte, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peek: %w", err)
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("peek: %w", err)
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 2048)
	want := 1
	for {
		if want > maxHelloBytes {
			return buf, fmt.Errorf("peek: message of %d bytes exceeds %d", want, maxHelloBytes)
		}
		if cap(buf) < want {
			nb := make([]byte, len(buf), want+1024)
			copy(nb, buf)
			buf = nb
		}
		var n int
		var perr error
		prev := len(buf)
		err := rc.Read(func(fd uintptr) bool {
			n, _, perr = unix.Recvfrom(int(fd), buf[:cap(buf)], unix.MSG_PEEK)
			if perr == unix.EAGAIN || perr == unix.EINTR {
				return false
			}
			// The same bytes again: wait for the next segment to arrive.
			if perr == nil && n == prev && n > 0 && n < cap(buf) {
				return false
			}
			return true
		})
		if err != nil {
			return buf, fmt.Errorf("peek: %w", err)
		}
		if perr != nil {
			return buf, fmt.Errorf("peek: %w", perr)
		}
		if n == 0 {
			return buf, fmt.Errorf("peek: %w", syscall.ECONNRESET)
		}
		buf = buf[:n]
		want = need(buf)
		switch {
		case want == 0:
			return buf, nil
		case want < 0:
			return buf, errNotTLS
		case want <= len(buf):
			return buf, fmt.Errorf("peek: inconsistent need %d for %d bytes", want, len(buf))
		}
	}
}

// helloNeed reports how many bytes the ClientHello in b needs in total
// (0 when it is complete, -1 when b is not a TLS handshake): a ClientHello
// may span several TLS records and, post-quantum, several TCP segments.
func helloNeed(b []byte) int {
	need, _ := walkHello(b)
	return need
}

// walkHello walks the handshake records at the start of b and concatenates
// their payloads. need is 0 once the first handshake message is whole, -1
// when b cannot hold a ClientHello, and otherwise the total byte count that
// the next step requires. A hello in one record (the usual case) is
// returned in place, as a part of b with no room to grow (nothing copied);
// a hello in several records is copied together.
func walkHello(b []byte) (need int, hs []byte) {
	pos := 0
	for {
		if len(b)-pos < 5 {
			return pos + 5, nil
		}
		if b[pos] != 0x16 {
			return -1, nil
		}
		rl := int(binary.BigEndian.Uint16(b[pos+3:]))
		if len(b)-pos-5 < rl {
			return pos + 5 + rl, nil
		}
		if pos == 0 {
			hs = b[5 : 5+rl : 5+rl] // full: an append below copies
		} else {
			hs = append(hs, b[pos+5:pos+5+rl]...)
		}
		pos += 5 + rl
		if len(hs) >= 4 {
			if hs[0] != 1 {
				return -1, nil
			}
			if len(hs)-4 >= int(uint32(hs[1])<<16|uint32(hs[2])<<8|uint32(hs[3])) {
				return 0, hs
			}
		}
		if rl == 0 {
			return -1, nil
		}
	}
}

// hello is what the proxy reads from a ClientHello.
type hello struct {
	sni string
	// ech is the first extension that encrypts or hides the server name
	// (encrypted_client_hello and its draft and ESNI codepoints), 0 when
	// there is none.
	ech uint16
}

// echExtension reports whether extension type typ carries an encrypted
// ClientHello or server name, in any version seen deployed:
// encrypted_client_hello 0xfe0d (RFC 9849) and the draft codepoints
// 0xfe08-0xfe0c (draft-ietf-tls-esni-08..12; the block 0xfe00-0xfe0f is
// refused whole), ech_outer_extensions 0xfd00 (only valid in an inner
// hello), the private codepoints of draft 07 (0xff02, 0xff03) and ESNI's
// encrypted_server_name 0xffce. GREASE ECH (what Chrome sends when it has
// no ECH configuration) uses 0xfe0d too and is, by design, indistinguishable
// from real ECH.
func echExtension(typ uint16) bool {
	switch {
	case typ&0xfff0 == 0xfe00, typ == 0xfd00, typ == 0xff02, typ == 0xff03, typ == 0xffce:
		return true
	}
	return false
}

// parseHello reads the server name and the ECH extension from a peeked
// ClientHello (one or more TLS records). It is written against RFC 8446
// section 4.1.2 and RFC 6066 section 3, never trusts a length it has not
// checked, reads every extension (an ECH extension may follow the server
// name) and refuses a hello that repeats an extension (servers refuse
// those; which copy would they have read?).
func parseHello(b []byte) (hello, error) {
	var h hello
	if len(b) < 5 || b[0] != 0x16 {
		return h, errNotTLS
	}
	need, hs := walkHello(b)
	if need < 0 {
		return h, errNotTLS
	}
	if need > 0 {
		return h, errors.New("truncated client hello")
	}
	msgLen := int(uint32(hs[1])<<16 | uint32(hs[2])<<8 | uint32(hs[3]))
	p := hs[4 : 4+msgLen]
	r := reader{b: p}
	r.skip(2 + 32)       // legacy_version, random
	r.skip(int(r.u8()))  // legacy_session_id
	r.skip(int(r.u16())) // cipher_suites
	r.skip(int(r.u8()))  // legacy_compression_methods
	if r.err != nil || r.left() == 0 {
		return h, errNoSNI // no extensions
	}
	ext := reader{b: r.bytes(int(r.u16()))}
	if r.err != nil {
		return h, errors.New("malformed client hello extensions")
	}
	var seen extSet
	haveSNI := false
	for ext.left() > 0 && ext.err == nil {
		typ := ext.u16()
		data := reader{b: ext.bytes(int(ext.u16()))}
		if ext.err != nil {
			break
		}
		if !seen.add(typ) {
			return h, fmt.Errorf("client hello repeats extension %#04x", typ)
		}
		if echExtension(typ) && h.ech == 0 {
			h.ech = typ
		}
		if typ != 0 { // server_name
			continue
		}
		name, err := serverName(data)
		if err != nil {
			return h, err
		}
		h.sni, haveSNI = name, true
	}
	if ext.err != nil {
		return h, errors.New("malformed client hello extensions")
	}
	if !haveSNI {
		return h, errNoSNI
	}
	return h, nil
}

// extSet is the set of extension types a hello has shown so far: a short
// list (a real hello has a few dozen; nothing allocated), a map past it (a
// hello of thousands of empty extensions costs linear time, not quadratic).
type extSet struct {
	list [32]uint16
	n    int
	m    map[uint16]bool
}

// add adds typ and reports whether it was new.
func (s *extSet) add(typ uint16) bool {
	if s.m != nil {
		if s.m[typ] {
			return false
		}
		s.m[typ] = true
		return true
	}
	if slices.Contains(s.list[:s.n], typ) {
		return false
	}
	if s.n < len(s.list) {
		s.list[s.n] = typ
		s.n++
		return true
	}
	s.m = make(map[uint16]bool, 2*len(s.list))
	for _, t := range s.list {
		s.m[t] = true
	}
	s.m[typ] = true
	return true
}

// serverName reads the host_name of a server_name extension.
func serverName(data reader) (string, error) {
	list := reader{b: data.bytes(int(data.u16()))}
	for list.left() > 0 && list.err == nil {
		nameType := list.u8()
		name := list.bytes(int(list.u16()))
		if list.err == nil && nameType == 0 && len(name) > 0 {
			for _, c := range name {
				if c <= ' ' || c >= 0x7f {
					return "", errors.New("server name has invalid bytes")
				}
			}
			return string(name), nil
		}
	}
	return "", errors.New("malformed server_name extension")
}

type reader struct {
	b   []byte
	err error
}

var errShort = errors.New("short")

func (r *reader) left() int { return len(r.b) }

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n > len(r.b) {
		r.err = errShort
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) skip(n int) { r.bytes(n) }

func (r *reader) u8() uint8 {
	v := r.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) u16() uint16 {
	v := r.bytes(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}
