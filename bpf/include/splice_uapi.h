/* SPDX-License-Identifier: (GPL-2.0-only WITH Linux-syscall-note) OR BSD-2-Clause */
/*
 * Minimal subset of the kernel's UAPI (<linux/bpf.h>) and of its internal
 * struct tcp_sock that splice.c needs. tcp_sock is read through BTF
 * (preserve_access_index): cilium/ebpf relocates the field against the
 * running kernel's own layout, so only the field's name and type matter here.
 */
#ifndef SPLICE_UAPI_H
#define SPLICE_UAPI_H

#include "uapi_types.h"

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_SOCKHASH = 18,
	BPF_MAP_TYPE_RINGBUF = 27,
};

#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_F_NO_PREALLOC (1U << 0)

enum sk_action {
	SK_DROP = 0,
	SK_PASS,
};

/* ctx of BPF_PROG_TYPE_SK_SKB programs (prefix: only what we read) */
struct __sk_buff {
	__u32 len;
};

struct tcp_sock {
	__u32 write_seq; /* tail(+1) of data held in the send buffer */
} __attribute__((preserve_access_index));

#endif /* SPLICE_UAPI_H */
