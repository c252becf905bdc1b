#!/usr/bin/env bash
# Creates and enables the clawker-fw managed plugin in the local Docker from a
# built plugin directory (config.json + rootfs/). Idempotent: an existing
# install is replaced. Usage:
#   scripts/install.sh [--uninstall] PLUGIN_DIR [NAME[:TAG]] [KEY=VALUE ...]
# KEY=VALUE pairs are passed to `docker plugin set` (e.g. CLAWKER_LOG_LEVEL=debug,
# netns.source=/var/run/docker/netns).
set -euo pipefail
uninstall=false
if [ "${1:-}" = --uninstall ]; then uninstall=true; shift; fi
dir=${1:?usage: install.sh [--uninstall] PLUGIN_DIR [NAME] [KEY=VALUE...]}
name=${2:-clawker-fw:latest}
shift $(( $# >= 2 ? 2 : 1 ))
docker=${DOCKER:-docker}

authz_on() {
  # dockerd refuses every API call while a configured authz plugin is
  # disabled: say how to turn authz off first rather than locking up.
  local cfg=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
  [ -f "$cfg" ] && grep -q '"authorization-plugins"' "$cfg" && grep -q 'clawker-fw' "$cfg"
}

if $docker plugin inspect "$name" >/dev/null 2>&1; then
  if authz_on; then
    echo "install: clawker-fw is configured as an authorization plugin in ${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}." >&2
    echo "  Remove it from \"authorization-plugins\", reload dockerd (kill -HUP \$(pidof dockerd)), then run this again." >&2
    exit 1
  fi
  echo "install: replacing the existing $name"
  $docker plugin disable -f "$name" >/dev/null 2>&1 || true
  $docker plugin rm -f "$name" >/dev/null
fi
if $uninstall; then
  # Enforcement is pinned and outlives the plugin on purpose; an uninstall
  # removes it: unpinning the links detaches the programs.
  rm -rf /sys/fs/bpf/clawker-fw
  if command -v nft >/dev/null; then
    nft delete table inet clawker_fw 2>/dev/null || true
    nft delete table bridge clawker_fw 2>/dev/null || true
  fi
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^cfw(-|h|c)[0-9a-f]{11}$' || true); do
    ip link del "$l" 2>/dev/null || true
  done
  echo "install: $name removed with its BPF programs, nftables tables and links"
  exit 0
fi

# The host's bpffs must exist before the plugin starts: a bpffs mounted
# inside the plugin would die with it, and mounts made later do not
# propagate into a running plugin on hosts with private mounts.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
  echo "install: mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
mkdir -p /var/lib/clawker-fw /var/run/docker/netns  # mount sources must exist
start=$(date +%s%3N)
$docker plugin create "$name" "$dir" >/dev/null
for kv in "$@"; do $docker plugin set "$name" "$kv"; done
$docker plugin enable "$name" >/dev/null
echo "install: $name enabled in $(( $(date +%s%3N) - start )) ms"
