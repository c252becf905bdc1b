package bpf

// The C programs are compiled with Debian's clang and libbpf-dev headers
// (bpf_helpers.h); the UAPI subset lives in include/. Run `go generate
// ./bpf/` (or `make generate`) after changing clawker.c and commit the
// generated clawker_bpfel.go and clawker_bpfel.o.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type endpoint -type cidr_key -type cidr_val -type route_key -type route_val -type origdst_val -type denial -type counters_val -type meta_val clawker clawker.c -- -I./include

// The kernel splice program (splice.c) is a separate object: it is loaded by
// the proxy's process and owned by it, not pinned (see splice.go).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type splice_flow splice splice.c -- -I./include
