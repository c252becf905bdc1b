package fakenet

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// startSniffer records the first packet of every IPv4/IPv6 flow that arrives
// on iface (AF_PACKET, incoming only). A TCP SYN from a container that no
// server ever accepts (for example because the reply cannot be routed back)
// still shows up here with the container's source address.
func (s *Server) startSniffer(iface string) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("sniff %s: %w", iface, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return fmt.Errorf("sniff socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("sniff bind %s: %w", iface, err)
	}
	// A receive timeout lets the loop notice Close.
	tv := unix.NsecToTimeval(200e6)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return fmt.Errorf("sniff timeout: %w", err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	s.track("sniff", nil, func() {
		stop.Store(true)
		<-done
		unix.Close(fd)
	})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		buf := make([]byte, 256)
		for !stop.Load() {
			n, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
			if err != nil {
				continue // EAGAIN on timeout, EINTR
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if e, ok := parsePacket(buf[:min(n, len(buf))]); ok {
				s.rec.addFlow(e)
			}
		}
	}()
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

var protoNames = map[uint8]string{1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

// parsePacket decodes an IPv4 or IPv6 header and the destination port of
// TCP/UDP (the ICMP type for ICMP, in DstPort).
func parsePacket(b []byte) (Entry, bool) {
	if len(b) < 1 {
		return Entry{}, false
	}
	var (
		e       = Entry{Kind: KindPacket}
		proto   uint8
		payload []byte
	)
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return Entry{}, false
		}
		ihl := int(b[0]&0x0f) * 4
		proto = b[9]
		e.Src, e.Dst = net.IP(b[12:16]).String(), net.IP(b[16:20]).String()
		if ihl <= len(b) {
			payload = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return Entry{}, false
		}
		proto = b[6]
		e.Src, e.Dst = net.IP(b[8:24]).String(), net.IP(b[24:40]).String()
		payload = b[40:]
	default:
		return Entry{}, false
	}
	e.Proto = protoNames[proto]
	if e.Proto == "" {
		e.Proto = fmt.Sprintf("ip-%d", proto)
	}
	switch proto {
	case 6, 17, 132:
		if len(payload) >= 4 {
			e.SrcPort = int(binary.BigEndian.Uint16(payload[0:2]))
			e.DstPort = int(binary.BigEndian.Uint16(payload[2:4]))
		}
	case 1, 58:
		if len(payload) >= 1 {
			e.DstPort = int(payload[0])
		}
	}
	return e, true
}
