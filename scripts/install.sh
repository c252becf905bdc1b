#!/usr/bin/env bash
# Creates and enables the clawker-fw managed plugin in the local Docker from a
# built plugin directory (config.json + rootfs/). Idempotent: an existing
# install is replaced, keeping the settings made on it with `docker plugin set`
# (read with `docker plugin inspect` before the removal, applied again before
# the new plugin is enabled). Usage:
#   scripts/install.sh PLUGIN_DIR [NAME[:TAG]] [KEY=VALUE ...]
#   scripts/install.sh --uninstall [--purge] PLUGIN_DIR [NAME[:TAG]]
#   scripts/install.sh --upgrade REMOTE [NAME[:TAG]]
# KEY=VALUE pairs are passed to `docker plugin set` (e.g. CLAWKER_LOG_LEVEL=debug,
# netns.source=/var/run/docker/netns) and win over kept settings.
# --uninstall removes the plugin, its BPF programs, nftables tables and links,
# and says what it leaves: the networks, the state directory, the CA key.
# --purge removes those too (refused while containers are attached to the
# plugin's networks: they are not this script's to delete).
# --upgrade runs `docker plugin upgrade` to REMOTE (a plugin in a registry)
# and sets the mount sources again: Docker keeps the environment settings
# across an upgrade but not the mount sources (`docker plugin set
# MOUNT.source=` writes them into the manifest, which the upgrade replaces).
set -euo pipefail
uninstall=false purge=false upgrade=false
while [ $# -gt 0 ]; do
  case $1 in
    --uninstall) uninstall=true; shift ;;
    --purge) purge=true; shift ;;
    --upgrade) upgrade=true; shift ;;
    *) break ;;
  esac
done
dir=${1:?usage: install.sh [--uninstall [--purge] | --upgrade] PLUGIN_DIR|REMOTE [NAME] [KEY=VALUE...]}
name=${2:-clawker-fw:latest}
shift $(( $# >= 2 ? 2 : 1 ))
docker=${DOCKER:-docker}

authz_on() {
  # dockerd refuses every API call while a configured authz plugin is
  # disabled: say how to turn authz off first rather than locking up.
  local cfg=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
  [ -f "$cfg" ] && grep -q '"authorization-plugins"' "$cfg" && grep -q 'clawker-fw' "$cfg"
}

# user_env NAME prints the environment settings of an installed plugin that
# differ from its manifest's defaults, one KEY=VALUE per line.
user_env() {
  local cur def
  cur=$($docker plugin inspect -f '{{range .Settings.Env}}{{println .}}{{end}}' "$1")
  def=$($docker plugin inspect -f '{{range .Config.Env}}{{.Name}}={{if .Value}}{{.Value}}{{end}}{{println}}{{end}}' "$1")
  grep -vxF -f <(printf '%s\n' "$def") <<<"$cur" | grep -v '^$' || true
}

# mounts NAME prints the mount sources a plugin runs with, MOUNT.source=PATH
# per line. Docker writes `docker plugin set MOUNT.source=...` into the
# manifest's own mount list (which is what it mounts; .Settings.Mounts goes
# stale after an upgrade), so an installed plugin no longer shows the
# default: the sources are compared with the new plugin's instead (the
# manifest has no settable devices or args).
mounts() {
  $docker plugin inspect -f '{{range .Config.Mounts}}{{if .Name}}{{.Name}}.source={{if .Source}}{{.Source}}{{end}}{{println}}{{end}}{{end}}' "$1"
}

# set_kept NAME sets the kept settings on the (disabled) plugin, saying
# which; one the new version does not have is dropped with a warning.
set_kept() {
  local kv
  for kv in "${kept[@]}"; do
    if $docker plugin set "$1" "$kv" 2>/dev/null; then
      echo "install: kept setting ${kv%%=*}"
    else
      echo "install: WARNING: the previous setting ${kv%%=*} does not apply to this version and was dropped" >&2
    fi
  done
}

# mount_source NAME MOUNT prints the host path of a mount of the plugin.
mount_source() {
  $docker plugin inspect -f '{{range .Config.Mounts}}{{if eq .Name "'"$2"'"}}{{if .Source}}{{.Source}}{{end}}{{end}}{{end}}' "$1"
}

kept=()
old_mounts=
state=/var/lib/clawker-fw
installed=false
if $docker plugin inspect "$name" >/dev/null 2>&1; then
  installed=true
  if authz_on; then
    echo "install: clawker-fw is configured as an authorization plugin in ${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}." >&2
    echo "  Remove it from \"authorization-plugins\", reload dockerd (kill -HUP \$(pidof dockerd)), then run this again." >&2
    exit 1
  fi
  mapfile -t kept < <(user_env "$name")
  old_mounts=$(mounts "$name")
  s=$(mount_source "$name" state)
  [ -n "$s" ] && state=$s
fi
# drop_given removes from kept the settings given on the command line
# (they win).
drop_given() {
  local kv k i
  for kv in "$@"; do
    k=${kv%%=*}
    for i in "${!kept[@]}"; do [ "${kept[$i]%%=*}" = "$k" ] && unset 'kept[i]'; done
  done
  kept=("${kept[@]}")
}

# configure_and_enable KEY=VALUE... sets on the new (disabled) plugin $name
# the kept settings, the old mount sources that differ from its own, and then
# the given settings, and enables it.
configure_and_enable() {
  local kv
  if [ -n "$old_mounts" ]; then
    mapfile -t -O "${#kept[@]}" kept < <(grep -vxF -f <(mounts "$name") <<<"$old_mounts" | grep -v '^$' || true)
  fi
  drop_given "$@"
  set_kept "$name"
  for kv in "$@"; do $docker plugin set "$name" "$kv"; done
  # Mount sources must exist.
  mkdir -p "$(mount_source "$name" state)" "$(mount_source "$name" netns)"
  $docker plugin enable "$name" >/dev/null
}

if $upgrade; then
  $installed || { echo "install: $name is not installed: nothing to upgrade" >&2; exit 1; }
  remote=$dir
  kept=()
  start=$(date +%s%3N)
  # The networks hold the plugin: disabling it needs -f. Enforcement stays
  # pinned (BPF, nftables) while it is down.
  if [ "$($docker plugin inspect -f '{{.Enabled}}' "$name")" = true ]; then
    $docker plugin disable -f "$name" >/dev/null
  fi
  # --skip-remote-check: the remote is usually another tag than the
  # installed one, for which the CLI asks for a confirmation; without a
  # terminal it exited 0 and left the old version (measured, CLI 28.2).
  $docker plugin upgrade --grant-all-permissions --skip-remote-check "$name" "$remote"
  configure_and_enable "$@"
  echo "install: $name upgraded to $remote and enabled in $(( $(date +%s%3N) - start )) ms"
  exit 0
fi

if $uninstall; then
  nets=()
  if $installed; then
    # Docker records the driver as the user spelled it (with or without
    # the :latest tag).
    filters=(--filter "driver=$name")
    [ "${name%:latest}" != "$name" ] && filters+=(--filter "driver=${name%:latest}")
    mapfile -t nets < <($docker network ls -q "${filters[@]}")
  fi
  if $purge && ((${#nets[@]})); then
    # The networks go first, while the plugin still serves them (without
    # their driver Docker cannot remove them).
    busy=$($docker network inspect -f '{{range $id, $c := .Containers}}{{println $c.Name}}{{end}}' "${nets[@]}" | grep -v '^$' | sort -u || true)
    if [ -n "$busy" ]; then
      echo "install: containers are attached to $name networks: $(echo $busy)" >&2
      echo "  Remove them first (docker rm -f ...); nothing was removed." >&2
      exit 1
    fi
    $docker network rm "${nets[@]}" >/dev/null
    echo "install: removed networks ${nets[*]}"
    nets=()
  fi
  if $installed; then
    $docker plugin disable -f "$name" >/dev/null 2>&1 || true
    $docker plugin rm -f "$name" >/dev/null
  fi
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
  if $purge; then
    # The state directory holds state.json; refuse to remove anything else.
    if [ -d "$state" ] && [ "$state" != / ] && { [ -e "$state/state.json" ] || [ -d "$state/ca" ] || [ -z "$(ls -A "$state")" ]; }; then
      rm -rf "$state"
      echo "install: removed the state directory $state (rules, records, the CA and its key)"
    elif [ -e "$state" ]; then
      echo "install: $state does not look like clawker-fw's state directory (no state.json, no ca/): left in place" >&2
    fi
    exit 0
  fi
  echo "install: left in place (a reinstall uses them again; remove them with make uninstall PURGE=1):"
  if ((${#nets[@]})); then
    echo "  networks: $($docker network inspect -f '{{.Name}}' "${nets[@]}" | tr '\n' ' ')(driver $name; unusable until the plugin is back)"
  fi
  [ -e "$state" ] && echo "  state: $state (networks' rules, runtime rules, authz records)"
  [ -e "$state/ca/ca.key" ] && echo "  CA key: $state/ca/ca.key (the TLS inspection CA that containers may trust)"
  exit 0
fi

if $installed; then
  echo "install: replacing the existing $name"
  $docker plugin disable -f "$name" >/dev/null 2>&1 || true
  $docker plugin rm -f "$name" >/dev/null
fi

# The host's bpffs must exist before the plugin starts: a bpffs mounted
# inside the plugin would die with it, and mounts made later do not
# propagate into a running plugin on hosts with private mounts.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
  echo "install: mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
start=$(date +%s%3N)
$docker plugin create "$name" "$dir" >/dev/null
configure_and_enable "$@"
echo "install: $name enabled in $(( $(date +%s%3N) - start )) ms"
