#!/usr/bin/env bash
# Builds the container registry that the end-to-end suite pushes the plugin
# to (for `docker plugin install` and `docker plugin upgrade`), from the
# pinned Go module of distribution/distribution v3, and caches it like the
# current engine (scripts/engine.sh). Prints the path of the `registry`
# binary; the test takes it as CLAWKER_E2E_REGISTRY_BIN or runs this script.
#
# Needs only the Go module proxy. A cold build takes ~3-6 minutes here.
set -euo pipefail

MODULE=github.com/distribution/distribution/v3/cmd/registry
VERSION=v3.1.2
RECIPE=1 # bump when the build recipe changes (the cache key)

cache=${CLAWKER_E2E_CACHE:-/var/cache/clawker-fw-e2e}
dir=$cache/registry-r$RECIPE-$VERSION

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
export GOTOOLCHAIN=local

if [ -x "$dir/bin/registry" ]; then
  echo "$dir/bin/registry"
  exit 0
fi
mkdir -p "$cache"
# One build at a time per machine; a second caller waits and reuses it.
exec 9>"$cache/registry.lock"
flock 9
if [ -x "$dir/bin/registry" ]; then
  echo "$dir/bin/registry"
  exit 0
fi
tmp=$(mktemp -d "$cache/registry-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# go install MODULE@VERSION ignores any enclosing module; run it outside ours.
cd "$tmp"
start=$SECONDS
echo "registry: building $MODULE@$VERSION (a few minutes the first time)" >&2
CGO_ENABLED=0 GOBIN="$tmp/bin" go install "$MODULE@$VERSION" >&2
"$tmp/bin/registry" --version >&2
echo "$MODULE@$VERSION" >"$tmp/bin/VERSION"
rm -rf "$dir"
mkdir -p "$dir"
mv "$tmp/bin" "$dir/bin"
echo "registry: built in $((SECONDS - start)) s" >&2
echo "$dir/bin/registry"
