#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it: installs what
# it needs from Debian, then runs lint, unit (race), fuzz and privileged tests
# and the end-to-end suite against a dockerd of its own, once on Debian's
# Docker 20.10 and once on the current engine (built by scripts/engine.sh from
# pinned module versions and cached). Prints how long each part took.
# ENGINES="debian" runs the e2e suite on one engine only (not in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test: run as root (privileged suites: BPF, netns, dockerd)" >&2
  [ "${CI:-}" = true ] && exit 1
fi
engines=${ENGINES:-debian current}
if [ "${CI:-}" = true ] && [ "$engines" != "debian current" ]; then
  echo "test: CI runs the e2e suite on both engines (ENGINES=$engines refused)" >&2
  exit 1
fi
./scripts/deps.sh
export PATH=/usr/local/go/bin:$PATH
# The host's bpffs: the plugin and the BPF tests pin into it.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
  mount -t bpf bpf /sys/fs/bpf
fi

declare -a report=()
failed=0
last=0
total=$SECONDS
# step NAME CMD...: runs CMD, records its time and result; the run goes on.
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  echo "=== test: $name" >&2
  "$@" || rc=$?
  local t=$((SECONDS - start))
  report+=("$(printf '%-28s %4dm%02ds  %s' "$name" $((t / 60)) $((t % 60)) "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
  [ $rc = 0 ] || failed=1
  last=$rc
  return 0
}

step check-generate make check-generate
step lint make lint
if [ $failed = 0 ]; then
  step unit make test-unit
  step fuzz make test-fuzz
  # The registry of the plugin-upgrade e2e test (the test would build it
  # itself; built here its minutes show on their own line).
  step "registry build (cached)" ./scripts/registry.sh
  for eng in $engines; do
    # Building the current engine is part of its run: a failure fails it.
    if [ "$eng" = current ]; then
      step "engine build (cached)" ./scripts/engine.sh
      [ $last = 0 ] || continue
    fi
    step "e2e ($eng)" make --no-print-directory test-e2e ENGINE="$eng"
  done
fi
t=$((SECONDS - total))
echo
echo "test: parts and times (build/e2e-<engine>.log holds each e2e log)"
printf '  %s\n' "${report[@]}"
printf '  %-28s %4dm%02ds\n' total $((t / 60)) $((t % 60))
exit $failed
