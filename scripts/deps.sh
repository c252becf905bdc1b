#!/usr/bin/env bash
# Installs what building and testing clawker-fw needs on a Debian 12 machine
# (as root). Idempotent: packages already present are not reinstalled.
set -euo pipefail

pkgs=(
  docker.io            # dockerd 20.10 for the end-to-end suite and the demo
  clang llvm libbpf-dev bpftool   # BPF programs (make generate)
  iproute2 nftables iptables      # test topologies and inspection
  tcpdump dnsutils curl socat ncat
  busybox-static debootstrap      # test images, built locally (no registry)
  docker-compose                  # the Compose example's e2e test (docs/compose.yml)
  openssh-client openssh-server   # ssh rule tests
  squid-openssl wrk hyperfine     # benchmarks (the classic peer)
  ca-certificates git make gcc
  libseccomp-dev                  # runc of the current engine (scripts/engine.sh, cgo)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "deps: Go 1.26 is required (https://go.dev/dl); not found on PATH" >&2; exit 1; }
go mod download
echo "deps: ok"
