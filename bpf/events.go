package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// Reason says why a hook denied (REASON_* in clawker.c).
type Reason uint8

// Denial reasons.
const (
	ReasonUnknownDest Reason = 1 // address neither learned nor in a CIDR rule
	ReasonNoRoute     Reason = 2 // destination known, no rule for this port/L4
	ReasonSubnet      Reason = 3 // peer on the endpoint's network, ICC off
	ReasonIPv6        Reason = 4 // native IPv6
	ReasonRawSocket   Reason = 5 // raw or ICMP socket
	ReasonGateway     Reason = 6 // the gateway on a port that is not steered
	ReasonExpired     Reason = 7 // learned address past its TTL
	ReasonProto       Reason = 8 // neither TCP nor UDP
	ReasonResolver    Reason = 9 // Docker's embedded resolver (127.0.0.11) on a port other than 53
)

func (r Reason) String() string {
	switch r {
	case ReasonUnknownDest:
		return "unknown destination (not resolved through the firewall's DNS)"
	case ReasonNoRoute:
		return "no rule allows this port/protocol"
	case ReasonSubnet:
		return "peer on the same network (icc disabled)"
	case ReasonIPv6:
		return "ipv6 egress is not allowed"
	case ReasonRawSocket:
		return "raw/icmp sockets are not allowed"
	case ReasonGateway:
		return "gateway port not allowed"
	case ReasonExpired:
		return "resolved address expired (dns ttl)"
	case ReasonProto:
		return "socket type not allowed"
	case ReasonResolver:
		return "docker's embedded resolver is reachable only on port 53 (answered by the firewall's DNS)"
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

// Denial is one denial event from the hooks.
type Denial struct {
	Time  time.Time
	Index uint32
	// Addr is the destination (invalid for IPv6 and raw sockets).
	Addr     netip.Addr
	Port     uint16
	L4       uint8
	Reason   Reason
	Identity uint32 // the destination's identity when known (ReasonNoRoute)
}

// Denials returns the channel of denial events. The ring buffer is read
// from the first call on; the channel is closed by Close or Remove (and
// returned closed after them). Events
// are dropped by the kernel while nobody drains the channel.
func (m *Manager) Denials() <-chan Denial {
	m.denialsOnce.Do(func() {
		m.denials = make(chan Denial, 256)
		if m.closed.Load() {
			close(m.denials)
			return
		}
		rd, err := ringbuf.NewReader(m.maps[MapEvents])
		if err != nil {
			close(m.denials)
			return
		}
		m.rd = rd
		m.readerDone = make(chan struct{})
		m.readerStop = make(chan struct{})
		go m.readDenials(rd)
	})
	return m.denials
}

func (m *Manager) readDenials(rd *ringbuf.Reader) {
	defer close(m.readerDone)
	defer close(m.denials)
	for {
		rec, err := rd.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			continue
		}
		var d clawkerDenial
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &d); err != nil {
			continue
		}
		ev := Denial{
			Time:     fromMono(d.Ts),
			Index:    d.Index,
			Port:     d.Port,
			L4:       d.L4,
			Reason:   Reason(d.Reason),
			Identity: d.Identity,
		}
		if d.Addr != 0 {
			ev.Addr = addrOf(d.Addr)
		}
		select {
		case m.denials <- ev:
		case <-m.readerStop:
			return
		}
	}
}
