//go:build ignore

/*
 * clawker-fw socket hooks: cgroup sock_addr programs that steer and explain
 * the egress of enrolled endpoints (containers on a clawker-fw network).
 *
 * An endpoint is enrolled by its network namespace cookie. Sockets of
 * namespaces that are not enrolled are never touched. For enrolled ones the
 * hooks rewrite DNS to the plugin's DNS, allowed destinations to the proxy
 * listener that carries their rule, and deny everything else with EPERM and
 * a denial event. The closed network (nftables, elsewhere) is what
 * guarantees; these hooks steer and explain.
 *
 * Map layouts are a seam (docs/SEAMS.md, "BPF maps"); bump LAYOUT_VERSION
 * (and layoutVersion in manager.go) whenever one changes.
 */

#include "clawker_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define LAYOUT_VERSION 3

#define EP_FLAG_ICC 1

#define IPPROTO_ICMP 1
#define IPPROTO_ICMPV6 58

/* Denial reasons; keep in sync with Reason in manager.go. */
enum reason {
	REASON_UNKNOWN_DEST = 1, /* address neither learned nor in a CIDR rule */
	REASON_NO_ROUTE = 2,     /* identity known, no rule for this port/L4 */
	REASON_SUBNET = 3,       /* same-network peer and ICC is off */
	REASON_IPV6 = 4,         /* native IPv6 */
	REASON_RAW_SOCKET = 5,   /* raw or ICMP socket */
	REASON_GATEWAY = 6,      /* the gateway on a port that is not steered */
	REASON_EXPIRED = 7,      /* learned entry past its TTL, no CIDR rule */
	REASON_PROTO = 8,        /* a socket type that is neither TCP nor UDP */
	REASON_RESOLVER = 9,     /* Docker's embedded resolver on a port other than 53 */
};

/* Docker's embedded resolver, 127.0.0.11 inside every container namespace
 * of a user-defined network (host byte order). */
#define DOCKER_RESOLVER 0x7f00000b

/* Entries of one endpoint's learned map (its quota); see learned below. */
#define LEARNED_PER_ENDPOINT 4096

struct meta_val {
	__u32 layout_version;
};

struct endpoint {
	__u32 index;
	__u32 ip;      /* network byte order */
	__u32 gateway; /* network byte order */
	__u32 subnet;  /* network byte order */
	__u8 prefixlen;
	__u8 flags;
	__u16 dns_port; /* host byte order */
	__u16 ca_port;  /* host byte order */
	__u16 pad;
	__u64 bypass_until_ns; /* CLOCK_MONOTONIC */
};

struct learned_val {
	__u32 identity;
	__u32 pad;
	__u64 expires_ns; /* CLOCK_MONOTONIC */
};

struct cidr_key {
	__u32 prefixlen; /* 32 + bits of addr */
	__u32 index;     /* big-endian, so it is the first 32 bits of the trie key */
	__u32 addr;      /* network byte order */
};

struct cidr_val {
	__u32 identity;
};

struct route_key {
	__u32 index; /* endpoint index; in base_routes the network's gateway */
	__u32 identity;
	__u16 port; /* host byte order */
	__u8 l4;
	__u8 pad; /* 1 with identity, port and l4 0: the endpoint is layered */
};

struct route_val {
	__u16 listener_port; /* host byte order; 0 = leave the destination alone */
	__u16 pad;
};

/*
 * origdst: what the app asked for, keyed by socket cookie. port is host byte
 * order. The seam's pad field carries via_port, the gateway port the socket
 * was steered to, so recvmsg/getpeername only undo our own rewrite.
 */
struct origdst_val {
	__u32 addr; /* network byte order */
	__u16 port;
	__u16 via_port;
};

struct denial {
	__u64 ts; /* CLOCK_MONOTONIC */
	__u32 index;
	__u32 addr; /* network byte order; 0 for IPv6 and raw sockets */
	__u16 port; /* host byte order */
	__u8 l4;
	__u8 reason;
	__u32 identity;
};

struct counters_val {
	__u64 allowed;
	__u64 denied;
	__u64 dns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta_val);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

/*
 * learned: endpoint index -> that endpoint's own map of destination address
 * (network byte order) -> learned_val. One inner map per endpoint, so one
 * endpoint filling its map can never evict or crowd out another's entries:
 * a full inner map refuses the insert (E2BIG) and its writer reclaims only
 * from that map (bpf/learned.go). Inner maps are created by the writer on an
 * endpoint's first answer; no preallocation, so memory follows use.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, LEARNED_PER_ENDPOINT);
		__uint(map_flags, BPF_F_NO_PREALLOC);
		__type(key, __u32);
		__type(value, struct learned_val);
	});
} learned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, struct cidr_val);
} cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct route_key);
	__type(value, struct route_val);
} routes SEC(".maps");

/*
 * A network's base policy (its option and runtime rules) routed once for
 * every endpoint layered on it, keyed by the network's gateway (route_key
 * and cidr_key with index = gateway, network byte order): an endpoint's own
 * routes and CIDRs hold only what its labels change (see policy.Layer), and
 * a lookup that misses them falls back to its network's base when the
 * endpoint carries the layered mark in routes (never for an endpoint
 * pending or with bad labels).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct route_key);
	__type(value, struct route_val);
} base_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, struct cidr_val);
} base_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct origdst_val);
} origdst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__type(value, struct denial);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct counters_val);
} counters SEC(".maps");

/* The stored layout version; userspace writes it, this keeps the symbol. */
const volatile __u32 layout_version = LAYOUT_VERSION;

/* clang describes only the direct member types of a map definition in BTF;
 * the inner map's value (learned_val) needs a full definition of its own. */
const volatile struct learned_val learned_val_btf = {};

enum counter { C_ALLOWED, C_DENIED, C_DNS };

static __always_inline void count(__u32 index, enum counter which)
{
	struct counters_val *c = bpf_map_lookup_elem(&counters, &index);
	if (!c) {
		struct counters_val zero = {};
		bpf_map_update_elem(&counters, &index, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&counters, &index);
		if (!c)
			return;
	}
	switch (which) {
	case C_ALLOWED:
		c->allowed++;
		break;
	case C_DENIED:
		c->denied++;
		break;
	case C_DNS:
		c->dns++;
		break;
	}
}

static __always_inline void deny_event(__u32 index, __u32 addr, __u16 port, __u8 l4,
				       __u8 reason, __u32 identity)
{
	struct denial d = {
		.ts = bpf_ktime_get_ns(),
		.index = index,
		.addr = addr,
		.port = port,
		.l4 = l4,
		.reason = reason,
		.identity = identity,
	};
	count(index, C_DENIED);
	bpf_ringbuf_output(&events, &d, sizeof(d), 0);
}

enum verdict { V_DENY = 0, V_ALLOW = 1, V_REWRITE = 2 };

struct decision {
	__u32 addr;     /* rewrite target, network byte order */
	__u16 port;     /* rewrite target, host byte order */
	__u8 reason;    /* for V_DENY */
	__u32 identity; /* for V_DENY, when known */
};

/* layered reports whether ep's routes fall back to its network's base. */
static __always_inline int layered(struct endpoint *ep)
{
	struct route_key mark = { .index = ep->index, .pad = 1 };
	return bpf_map_lookup_elem(&routes, &mark) != NULL;
}

static __always_inline int route(struct endpoint *ep, __u32 identity, __u16 dport, __u8 l4,
				 struct decision *d)
{
	struct route_key rk = {
		.index = ep->index,
		.identity = identity,
		.port = dport,
		.l4 = l4,
	};
	struct route_val *rv = bpf_map_lookup_elem(&routes, &rk);
	if (!rv && layered(ep)) {
		rk.index = ep->gateway;
		rv = bpf_map_lookup_elem(&base_routes, &rk);
	}
	if (!rv)
		return -1;
	if (rv->listener_port == 0)
		return V_ALLOW;
	d->addr = ep->gateway;
	d->port = rv->listener_port;
	return V_REWRITE;
}

/*
 * decide4 is the IPv4 decision for an enrolled endpoint. dst is in network
 * byte order, dport in host byte order. Order:
 *  1. port 53 (TCP or UDP) to any address -> gateway:dns_port;
 *  2. Docker's embedded resolver (127.0.0.11) on any other port -> denied:
 *     dockerd listens there on random ports and may forward from the host's
 *     namespace, out of every hook's sight (a DNS tunnel). Only 127.0.0.11:
 *     dockerd binds nothing else on loopback, and other loopback addresses
 *     are the container's own services;
 *  3. loopback (127/8), 0.0.0.0 and the endpoint's own address -> untouched;
 *  4. the gateway: TCP 80 -> gateway:ca_port; a port the gateway's learned
 *     identity (host.docker.internal) routes to a listener ->
 *     gateway:listener_port, where the proxy dials the host only for an
 *     exact rule; anything else denied (never untouched);
 *  5. the endpoint's own subnet -> allowed with ICC, else denied;
 *  6. bypass in force -> untouched (the closed network redirects the flow);
 *  7. identity from learned (unexpired) and from the CIDR trie; the first
 *     of them with a route for (port, l4) decides: listener_port != 0 ->
 *     gateway:listener_port, 0 -> untouched;
 *  8. everything else denied.
 */
static __always_inline int decide4(struct endpoint *ep, __u32 dst, __u16 dport, __u8 l4,
				   struct decision *d)
{
	if (dport == 53) {
		d->addr = ep->gateway;
		d->port = ep->dns_port;
		return V_REWRITE;
	}
	if (dst == bpf_htonl(DOCKER_RESOLVER)) {
		d->reason = REASON_RESOLVER;
		return V_DENY;
	}
	/* Loopback, 0.0.0.0 (the local host) and the endpoint's own address
	 * never leave the namespace. */
	if ((bpf_ntohl(dst) >> 24) == 127 || dst == 0 || dst == ep->ip)
		return V_ALLOW;
	if (dst == ep->gateway) {
		if (l4 == IPPROTO_TCP && dport == 80) {
			d->addr = ep->gateway;
			d->port = ep->ca_port;
			return V_REWRITE;
		}
		__u32 gidx = ep->index;
		void *gmine = bpf_map_lookup_elem(&learned, &gidx);
		struct learned_val *glv = gmine ? bpf_map_lookup_elem(gmine, &dst) : NULL;
		if (glv && glv->expires_ns > bpf_ktime_get_ns() &&
		    route(ep, glv->identity, dport, l4, d) == V_REWRITE)
			return V_REWRITE;
		d->reason = REASON_GATEWAY;
		return V_DENY;
	}

	__u32 plen = ep->prefixlen;
	if (plen > 32)
		plen = 32;
	__u32 mask = plen ? bpf_htonl(0xffffffffu << (32 - plen)) : 0;
	if (plen && (dst & mask) == (ep->subnet & mask)) {
		if (ep->flags & EP_FLAG_ICC)
			return V_ALLOW;
		d->reason = REASON_SUBNET;
		return V_DENY;
	}

	__u64 now = bpf_ktime_get_ns();
	if (ep->bypass_until_ns > now)
		return V_ALLOW;

	int v;
	__u8 reason = REASON_UNKNOWN_DEST;
	struct learned_val *lv = NULL;
	__u32 index = ep->index;
	void *mine = bpf_map_lookup_elem(&learned, &index);
	if (mine)
		lv = bpf_map_lookup_elem(mine, &dst);
	if (lv) {
		if (lv->expires_ns > now) {
			d->identity = lv->identity;
			reason = REASON_NO_ROUTE;
			v = route(ep, lv->identity, dport, l4, d);
			if (v >= 0)
				return v;
		} else {
			reason = REASON_EXPIRED;
		}
	}

	struct cidr_key ck = { .prefixlen = 64, .index = bpf_htonl(ep->index), .addr = dst };
	struct cidr_val *cv = bpf_map_lookup_elem(&cidrs, &ck);
	if (!cv && layered(ep)) {
		ck.index = ep->gateway;
		cv = bpf_map_lookup_elem(&base_cidrs, &ck);
	}
	if (cv) {
		if (reason != REASON_NO_ROUTE)
			d->identity = cv->identity;
		reason = REASON_NO_ROUTE;
		v = route(ep, cv->identity, dport, l4, d);
		if (v >= 0)
			return v;
	}
	d->reason = reason;
	return V_DENY;
}

static __always_inline struct endpoint *enrolled(void *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&endpoints, &cookie);
}

static __always_inline int l4_of(__u32 type)
{
	if (type == SOCK_STREAM)
		return IPPROTO_TCP;
	if (type == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, __u32 addr, __u16 port,
				     __u16 via_port)
{
	__u64 sc = bpf_get_socket_cookie(ctx);
	struct origdst_val o = { .addr = addr, .port = port, .via_port = via_port };
	bpf_map_update_elem(&origdst, &sc, &o, BPF_ANY);
}

/*
 * steer4 runs the decision for an IPv4 destination (plain or IPv4-mapped)
 * and applies it: returns 1 to let the syscall proceed (possibly with a
 * rewritten destination in *dst / *port_nbo) or 0 for EPERM.
 */
static __always_inline int steer4(struct bpf_sock_addr *ctx, struct endpoint *ep, __u32 *dst,
				  __u32 *port_nbo, __u8 l4)
{
	__u16 dport = bpf_ntohs((__u16)*port_nbo);
	struct decision d = {};
	int v = decide4(ep, *dst, dport, l4, &d);
	switch (v) {
	case V_ALLOW:
		count(ep->index, C_ALLOWED);
		return 1;
	case V_REWRITE:
		remember(ctx, *dst, dport, d.port);
		count(ep->index, dport == 53 ? C_DNS : C_ALLOWED);
		*dst = d.addr;
		*port_nbo = bpf_htons(d.port);
		return 1;
	default:
		deny_event(ep->index, *dst, dport, l4, d.reason, d.identity);
		return 0;
	}
}

static __always_inline int hook4(struct bpf_sock_addr *ctx)
{
	struct endpoint *ep = enrolled(ctx);
	if (!ep)
		return 1;
	__u8 l4 = l4_of(ctx->type);
	__u32 dst = ctx->user_ip4;
	__u32 port = ctx->user_port;
	if (!l4) {
		deny_event(ep->index, dst, bpf_ntohs((__u16)port), 0, REASON_PROTO, 0);
		return 0;
	}
	__u32 ndst = dst, nport = port;
	if (!steer4(ctx, ep, &ndst, &nport, l4))
		return 0;
	if (ndst != dst)
		ctx->user_ip4 = ndst;
	if (nport != port)
		ctx->user_port = nport;
	return 1;
}

static __always_inline int is_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline int hook6(struct bpf_sock_addr *ctx)
{
	struct endpoint *ep = enrolled(ctx);
	if (!ep)
		return 1;
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	__u32 port = ctx->user_port;
	__u8 l4 = l4_of(ctx->type);
	if (!is_mapped(w0, w1, w2)) {
		/* ::1 and :: are the endpoint's own host. */
		if (w0 == 0 && w1 == 0 && w2 == 0 && (w3 == bpf_htonl(1) || w3 == 0))
			return 1;
		deny_event(ep->index, 0, bpf_ntohs((__u16)port), l4, REASON_IPV6, 0);
		return 0;
	}
	if (!l4) {
		deny_event(ep->index, w3, bpf_ntohs((__u16)port), 0, REASON_PROTO, 0);
		return 0;
	}
	__u32 ndst = w3, nport = port;
	if (!steer4(ctx, ep, &ndst, &nport, l4))
		return 0;
	if (ndst != w3)
		ctx->user_ip6[3] = ndst;
	if (nport != port)
		ctx->user_port = nport;
	return 1;
}

SEC("cgroup/connect4")
int clawker_connect4(struct bpf_sock_addr *ctx)
{
	return hook4(ctx);
}

SEC("cgroup/connect6")
int clawker_connect6(struct bpf_sock_addr *ctx)
{
	return hook6(ctx);
}

SEC("cgroup/sendmsg4")
int clawker_sendmsg4(struct bpf_sock_addr *ctx)
{
	return hook4(ctx);
}

SEC("cgroup/sendmsg6")
int clawker_sendmsg6(struct bpf_sock_addr *ctx)
{
	return hook6(ctx);
}

/*
 * unsteer4 makes a reply (recvmsg) or a peer name (getpeername) that comes
 * from the gateway port this socket was steered to show the address the app
 * asked for, so resolver libraries accept DNS replies.
 */
static __always_inline int unsteer4(struct bpf_sock_addr *ctx, struct endpoint *ep, __u32 *addr,
				    __u32 *port_nbo)
{
	if (*addr != ep->gateway)
		return 0;
	__u64 sc = bpf_get_socket_cookie(ctx);
	struct origdst_val *o = bpf_map_lookup_elem(&origdst, &sc);
	if (!o || bpf_htons(o->via_port) != (__u16)*port_nbo)
		return 0;
	*addr = o->addr;
	*port_nbo = bpf_htons(o->port);
	return 1;
}

static __always_inline int unsteer_hook4(struct bpf_sock_addr *ctx)
{
	struct endpoint *ep = enrolled(ctx);
	if (!ep)
		return 1;
	__u32 addr = ctx->user_ip4, port = ctx->user_port;
	if (unsteer4(ctx, ep, &addr, &port)) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return 1;
}

static __always_inline int unsteer_hook6(struct bpf_sock_addr *ctx)
{
	struct endpoint *ep = enrolled(ctx);
	if (!ep)
		return 1;
	if (!is_mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2]))
		return 1;
	__u32 addr = ctx->user_ip6[3], port = ctx->user_port;
	if (unsteer4(ctx, ep, &addr, &port)) {
		ctx->user_ip6[3] = addr;
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int clawker_recvmsg4(struct bpf_sock_addr *ctx)
{
	return unsteer_hook4(ctx);
}

SEC("cgroup/recvmsg6")
int clawker_recvmsg6(struct bpf_sock_addr *ctx)
{
	return unsteer_hook6(ctx);
}

SEC("cgroup/getpeername4")
int clawker_getpeername4(struct bpf_sock_addr *ctx)
{
	return unsteer_hook4(ctx);
}

SEC("cgroup/getpeername6")
int clawker_getpeername6(struct bpf_sock_addr *ctx)
{
	return unsteer_hook6(ctx);
}

/*
 * sock_create: enrolled endpoints may not open raw or ICMP sockets of
 * AF_INET/AF_INET6 (they would skip the address hooks). AF_PACKET never
 * reaches this hook; the closed network's anti-spoofing covers it.
 */
SEC("cgroup/sock_create")
int clawker_sock_create(struct bpf_sock *ctx)
{
	__u32 family = ctx->family;
	if (family != AF_INET && family != AF_INET6)
		return 1;
	struct endpoint *ep = enrolled(ctx);
	if (!ep)
		return 1;
	__u32 type = ctx->type, proto = ctx->protocol;
	if (type == SOCK_RAW ||
	    (type == SOCK_DGRAM && (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6))) {
		deny_event(ep->index, 0, 0, (__u8)proto, REASON_RAW_SOCKET, 0);
		return 0;
	}
	return 1;
}
