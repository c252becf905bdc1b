#!/usr/bin/env bash
# Builds the current Docker Engine that the end-to-end suite also runs on
# (besides Debian's docker.io 20.10), from pinned Go module versions, and
# caches the binaries like the e2e test image. Prints the directory that holds
# them (dockerd, runc); the harness takes it as CLAWKER_E2E_ENGINE_BIN.
#
#   dockerd  github.com/moby/moby/v2/cmd/dockerd   (CGO off; API 1.56)
#   runc     github.com/opencontainers/runc        (cgo + libseccomp-dev: the
#            engine's plugins need the time namespace Debian's runc 1.1 lacks)
#   containerd: Debian's (docker.io's dependency), started by dockerd.
#
# Needs only the Go module proxy (and Debian's apt through scripts/deps.sh).
# Newer moby betas pin dependency versions the proxy refuses; beta.24 resolves.
set -euo pipefail

DOCKERD_MODULE=github.com/moby/moby/v2/cmd/dockerd
DOCKERD_VERSION=v2.0.0-beta.24
DOCKERD_TAGS='exclude_graphdriver_btrfs exclude_disk_quota'
RUNC_MODULE=github.com/opencontainers/runc
RUNC_VERSION=v1.5.3
RUNC_TAGS=seccomp
RECIPE=1 # bump when the build recipe changes (the cache key)

cache=${CLAWKER_E2E_CACHE:-/var/cache/clawker-fw-e2e}
dir=$cache/engine-r$RECIPE-dockerd-$DOCKERD_VERSION-runc-$RUNC_VERSION

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
export GOTOOLCHAIN=local

if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/runc" ]; then
  echo "$dir/bin"
  exit 0
fi
mkdir -p "$cache"
# One build at a time per machine; a second caller waits and reuses it.
exec 9>"$cache/engine.lock"
flock 9
if [ -x "$dir/bin/dockerd" ] && [ -x "$dir/bin/runc" ]; then
  echo "$dir/bin"
  exit 0
fi
tmp=$(mktemp -d "$cache/engine-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# go install MODULE@VERSION ignores any enclosing module; run it outside ours.
cd "$tmp"
start=$SECONDS
echo "engine: building dockerd $DOCKERD_VERSION (a few minutes the first time)" >&2
CGO_ENABLED=0 GOBIN="$tmp/bin" go install -tags "$DOCKERD_TAGS" "$DOCKERD_MODULE@$DOCKERD_VERSION" >&2
echo "engine: building runc $RUNC_VERSION" >&2
CGO_ENABLED=1 GOBIN="$tmp/bin" go install -tags "$RUNC_TAGS" "$RUNC_MODULE@$RUNC_VERSION" >&2
"$tmp/bin/dockerd" --version >&2
"$tmp/bin/runc" --version | grep -q '^libseccomp' || {
  echo "engine: runc built without seccomp support" >&2
  exit 1
}
cat >"$tmp/bin/VERSIONS" <<EOF
dockerd $DOCKERD_MODULE@$DOCKERD_VERSION tags: $DOCKERD_TAGS
runc $RUNC_MODULE@$RUNC_VERSION tags: $RUNC_TAGS
go $(go env GOVERSION)
EOF
mkdir -p "$tmp/final"
mv "$tmp/bin" "$tmp/final/bin"
rm -rf "$dir"
mv "$tmp/final" "$dir"
echo "engine: built in $((SECONDS - start)) s: $dir" >&2
echo "$dir/bin"
