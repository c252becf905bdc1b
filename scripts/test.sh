#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it: installs what
# it needs from Debian, then runs lint, unit (race), fuzz and privileged tests
# and the end-to-end suite against a dockerd of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test: run as root (privileged suites: BPF, netns, dockerd)" >&2
  [ "${CI:-}" = true ] && exit 1
fi
./scripts/deps.sh
export PATH=/usr/local/go/bin:$PATH
# The host's bpffs: the plugin and the BPF tests pin into it.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
  mount -t bpf bpf /sys/fs/bpf
fi
make check-generate
make test
