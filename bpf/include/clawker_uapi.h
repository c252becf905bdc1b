/* SPDX-License-Identifier: (GPL-2.0-only WITH Linux-syscall-note) OR BSD-2-Clause */
/*
 * Minimal subset of the kernel's UAPI (<linux/bpf.h>, <linux/in.h>,
 * <linux/socket.h>) that clawker.c needs. Written out here instead of
 * including the system headers so that generation does not depend on the
 * build host's linux-libc-dev version; the values and ctx layouts are stable
 * kernel ABI.
 */
#ifndef CLAWKER_UAPI_H
#define CLAWKER_UAPI_H

#include "uapi_types.h"

#define AF_INET 2
#define AF_INET6 10

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

enum bpf_map_type {
	BPF_MAP_TYPE_UNSPEC = 0,
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_HASH_OF_MAPS = 13,
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* flags for bpf_map_update_elem */
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2

/* map_flags */
#define BPF_F_NO_PREALLOC (1U << 0)

/* ctx of BPF_PROG_TYPE_CGROUP_SOCK_ADDR programs */
struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;    /* network byte order */
	__u32 user_ip6[4]; /* network byte order */
	__u32 user_port;   /* network byte order */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__u64 sk; /* __bpf_md_ptr(struct bpf_sock *, sk) */
};

/* ctx of BPF_PROG_TYPE_CGROUP_SOCK programs (prefix: only what we read) */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
};

#endif /* CLAWKER_UAPI_H */
