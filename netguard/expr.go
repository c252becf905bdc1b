package netguard

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Small builders of nftables expressions. Every match loads into register 1
// and compares; a rule is the concatenation of its matches and a verdict.

const reg = 1

// ifname pads an interface name to IFNAMSIZ, which makes a comparison exact
// (nft compares a shorter prefix for wildcard names).
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: data},
	}
}

// iif matches the input interface (a bridge port in the bridge family, the
// bridge itself in the inet family).
func iif(name string) []expr.Any { return metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, ifname(name)) }

func oif(name string) []expr.Any { return metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, ifname(name)) }

func ipv4() []expr.Any {
	return metaCmp(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})
}

func l4(proto byte) []expr.Any {
	return metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{proto})
}

func payload(base expr.PayloadBase, off, n uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: base, Offset: off, Len: n}
}

func be16(v uint16) []byte { return binaryutil.BigEndian.PutUint16(v) }

// dport matches the transport destination port (the caller has matched the
// L4 protocol first).
func dport(p uint16) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseTransportHeader, 2, 2),
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: be16(p)},
	}
}

// dportIn matches when the transport destination port is in set (of type
// inet_service; the caller has matched the L4 protocol first).
func dportIn(set *nftables.Set) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseTransportHeader, 2, 2),
		&expr.Lookup{SourceRegister: reg, SetName: set.Name, SetID: set.ID},
	}
}

// ipAddr matches the IPv4 source (off 12) or destination (off 16) address.
func ipAddr(off uint32, op expr.CmpOp, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		payload(expr.PayloadBaseNetworkHeader, off, 4),
		&expr.Cmp{Op: op, Register: reg, Data: b[:]},
	}
}

const (
	ipSaddr = 12
	ipDaddr = 16
)

// ipDaddrOutside matches IPv4 destinations outside p.
func ipDaddrOutside(p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	netw := p.Masked().Addr().As4()
	return []expr.Any{
		payload(expr.PayloadBaseNetworkHeader, ipDaddr, 4),
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: netw[:]},
	}
}

// ctBits matches when any of bits is set in the conntrack key (state or
// status), which the kernel keeps in host byte order.
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, bits)
	return []expr.Any{
		&expr.Ct{Register: reg, Key: key},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: []byte{0, 0, 0, 0}},
	}
}

// ipsDstNAT is IPS_DST_NAT of enum ip_conntrack_status: the connection's
// destination was rewritten (by our redirect).
const ipsDstNAT = 1 << 5

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: reg, Data: be16(port)},
		&expr.Redir{RegisterProtoMin: reg},
	}
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
)

// etherType matches the Ethernet type field (bridge family).
func etherType(op expr.CmpOp, t uint16) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseLLHeader, 12, 2),
		&expr.Cmp{Op: op, Register: reg, Data: be16(t)},
	}
}

func llBytes(off uint32, op expr.CmpOp, b []byte) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseLLHeader, off, uint32(len(b))),
		&expr.Cmp{Op: op, Register: reg, Data: b},
	}
}

func nhBytes(off uint32, op expr.CmpOp, b []byte) []expr.Any {
	return []expr.Any{
		payload(expr.PayloadBaseNetworkHeader, off, uint32(len(b))),
		&expr.Cmp{Op: op, Register: reg, Data: b},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// drop counts what it drops, so that `nft list table` shows what the guard
// stopped.
func drop() []expr.Any { return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}} }

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// inSet matches when the interface name loaded by key is in set.
func inSet(key expr.MetaKey, set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Lookup{SourceRegister: reg, SetName: set.Name, SetID: set.ID},
	}
}
