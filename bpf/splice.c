//go:build ignore

/*
 * clawker-fw kernel splice: a stream verdict program that moves the bytes
 * of an allowed flow between its two sockets (the container's and the
 * upstream's) inside the kernel, once the builtin proxy has decided.
 *
 * Two socket maps, so that the order of insertion cannot lose bytes:
 *   splice_peers  every socket of a spliced pair, the redirect targets; no
 *                 program is attached to it, so entering it starts nothing;
 *   splice_socks  the same sockets, entered after both are in splice_peers;
 *                 the verdict program is attached here. Bytes that arrived
 *                 earlier stay in the socket's receive queue (the proxy only
 *                 peeked at them) and go through the program, in order, at
 *                 the next data_ready (userspace triggers one with a read).
 * splice_flows holds each socket's peer and what the program redirected.
 *
 * The program never passes bytes to userspace (SK_PASS) and never drops a
 * byte: every non-empty skb is redirected to the peer's send path.
 *
 * Backpressure. A redirected skb leaves the source socket's receive queue
 * and its memory accounting at once (tcp_eat_skb, skb ownership moves), so
 * the source keeps its receive window open however slowly the peer drains:
 * the kernel's queue in front of the peer (psock->ingress_skb) has no bound.
 * So the program tracks that queue (bytes redirected minus bytes the peer's
 * send buffer took, from its tcp_sock.write_seq) and, when it goes over
 * hold_bytes, tells userspace (splice_events, once until resumed:
 * splice_over). Userspace pauses that socket: it takes it out of
 * splice_socks, so new bytes stay in its receive queue, where TCP's window
 * closes and the sender waits; once the queue in front of the peer has
 * drained into the peer's send buffer, it puts the socket back, clears
 * splice_over and hands the queued bytes to the program, in order.
 *
 * Bump SPLICE_LAYOUT_VERSION (and spliceLayoutVersion in splice.go) when a
 * map changes.
 */

#include "splice_uapi.h"
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define SPLICE_LAYOUT_VERSION 3

#define MAX_SPLICED 65536

/* Bytes that may wait in the kernel in front of a peer's send buffer before
 * userspace is told to pause the source; set at load time
 * (SpliceOptions.HoldBytes). */
volatile const __u64 hold_bytes = 4U << 20;

volatile const __u32 splice_layout_version = SPLICE_LAYOUT_VERSION;

struct splice_flow {
	__u64 peer;       /* socket cookie of the redirect target */
	__u64 redirected; /* bytes redirected to the peer */
	__u64 took;       /* bytes the peer's send buffer took */
	__u32 last_seq;   /* the peer's write_seq when last seen */
	__u32 based;      /* 1 once last_seq is set */
	__u32 pauses;     /* times the queue went over hold_bytes */
};

struct splice_event {
	__u64 cookie; /* the source socket whose peer fell behind */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_SPLICED);
	__type(key, __u64);
	__type(value, __u64);
} splice_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_SPLICED);
	__type(key, __u64);
	__type(value, __u64);
} splice_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SPLICED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct splice_flow);
} splice_flows SEC(".maps");

/* Sockets reported as over hold_bytes and not yet resumed by userspace
 * (which deletes the entry when it resumes the socket). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SPLICED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u32);
} splice_over SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} splice_events SEC(".maps");

/* peer_write_seq reads the peer's write_seq; -1 when it cannot. */
static __always_inline int peer_write_seq(__u64 *peer, __u32 *seq)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&splice_peers, peer);
	if (!sk)
		return -1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	int ret = -1;
	if (tp) {
		*seq = tp->write_seq;
		ret = 0;
	}
	bpf_sk_release(sk);
	return ret;
}

SEC("sk_skb/stream_verdict")
int clawker_splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct splice_flow *f = bpf_map_lookup_elem(&splice_flows, &cookie);
	if (!f)
		return SK_DROP; /* never: userspace writes the flow first */
	__u32 len = skb->len;
	/* A bare FIN reaches the program as an empty skb. Redirected, the
	 * peer's backlog worker takes its 0-byte send for a broken pipe and
	 * stops the peer's kernel path (sk_psock_backlog). It carries no
	 * byte: drop it. The FIN itself stays visible to userspace (recv
	 * returns 0), which forwards it once the bytes before it are out. */
	if (len == 0)
		return SK_DROP;

	__u32 seq = 0;
	if (peer_write_seq(&f->peer, &seq) == 0) {
		/* write_seq is 32 bits: accumulate its progress (seen at
		 * least once per skb or pause, far below 4 GiB apart). */
		if (f->based)
			f->took += (__u32)(seq - f->last_seq);
		f->last_seq = seq;
		f->based = 1;
		if (f->redirected > f->took && f->redirected - f->took > hold_bytes &&
		    !bpf_map_lookup_elem(&splice_over, &cookie)) {
			__u32 one = 1;
			if (bpf_map_update_elem(&splice_over, &cookie, &one, BPF_NOEXIST) == 0) {
				f->pauses++;
				struct splice_event ev = {.cookie = cookie};
				bpf_ringbuf_output(&splice_events, &ev, sizeof(ev), 0);
			}
		}
	}
	f->redirected += len;
	return bpf_sk_redirect_hash(skb, &splice_peers, &f->peer, 0);
}
