#!/usr/bin/env bash
# Runs every benchmark in bench/ (as root). Each reports ratios measured side
# by side in one run and writes its report under bench/results/. Benchmarks are
# not pass/fail gates: on 2 shared cores compare the ratios, not the absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
mkdir -p bench/results
[ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf
run() { echo "== bench/$1"; shift; "$@"; }
run bpf   go run ./bench/bpf -out bench/results/bpf.txt
run dns   go run ./bench/dns -out bench/results/dns.txt
run proxy go run ./bench/proxy -out bench/results/proxy.txt
run scale go run ./bench/scale -out bench/results/scale.txt
run effective go run ./bench/effective -out bench/results/effective.txt
if [ -d bench/authz ]; then
  # Starts its own dockerd and the plugin: serialize with the e2e suite.
  run authz flock -o /tmp/clawker-e2e.lock go run ./bench/authz -out bench/results/authz.txt
fi
if [ -d bench/bridge ]; then
  # The headline benchmark: its own dockerd, the plugin and a server netns.
  run bridge flock -o /tmp/clawker-e2e.lock go run ./bench/bridge -out bench/results/bridge.txt
fi
echo "reports: $(ls bench/results)"
