#!/usr/bin/env bash
# Builds clawker-fw, installs it into the local Docker and runs a demo against
# the project's own local test sites (no internet needed): a firewalled network
# that allows one site, a container that reaches it and is denied another, and
# the denials as the plugin and `clawker-fw denials` report them.
#
#   sudo ./scripts/demo.sh          # build, install, demo
#   sudo ./scripts/demo.sh --clean  # remove the demo network and test sites
#
# The demo installs the plugin with demo settings (its DNS upstream is the
# local test DNS). For real use reinstall with `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
NS=cfw-demo-inet LINK=cfw-demo0 HOSTIP=10.221.0.1 DNSIP=10.221.0.2
ALLOWED=allowed.demo.test DENIED=denied.demo.test NET=clawker-demo
DEMO=/var/lib/clawker-fw-demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

clean() {
  docker network rm "$NET" >/dev/null 2>&1 || true
  [ -f "$DEMO/fakenet.pid" ] && kill "$(cat "$DEMO/fakenet.pid")" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$LINK" 2>/dev/null || true
}
if [ "${1:-}" = --clean ]; then clean; echo "demo: cleaned"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root" >&2; exit 1; }

say "1/6 dependencies (Debian packages, Go modules)"
./scripts/deps.sh

say "2/6 Docker"
if ! docker info >/dev/null 2>&1; then
  echo "no running dockerd: starting Debian's dockerd (--live-restore), log in /var/log/clawker-fw-dockerd.log"
  nohup dockerd --live-restore >/var/log/clawker-fw-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "demo: dockerd did not start; see /var/log/clawker-fw-dockerd.log" >&2; exit 1; }
fi
docker version --format 'Docker Engine {{.Server.Version}}'

say "3/6 build (static binaries, plugin rootfs)"
make plugin build

say "4/6 local test sites ($ALLOWED, $DENIED) in netns $NS"
clean
mkdir -p "$DEMO"
ip netns add "$NS"
ip link add "$LINK" type veth peer name eth0 netns "$NS"
ip addr add "$HOSTIP/24" dev "$LINK"; ip link set "$LINK" up
ip -n "$NS" link set lo up
ip -n "$NS" addr add "$DNSIP/24" dev eth0
ip -n "$NS" addr add 10.221.0.10/32 dev eth0
ip -n "$NS" addr add 10.221.0.11/32 dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" route add default via "$HOSTIP"
cat >"$DEMO/fakenet.json" <<JSON
{"ca_dir": "$DEMO/ca", "zone": "demo.test",
 "hosts": [{"name": "$ALLOWED", "ip": "10.221.0.10"}, {"name": "$DENIED", "ip": "10.221.0.11"}],
 "dns_addrs": ["$DNSIP"], "http_ports": [80], "https_ports": [443], "control": "$DNSIP:9999"}
JSON
ip netns exec "$NS" ./build/bin/clawker-fakenet -config "$DEMO/fakenet.json" >"$DEMO/fakenet.log" 2>&1 &
echo $! >"$DEMO/fakenet.pid"
for _ in $(seq 50); do [ -f "$DEMO/ca/ca.crt" ] && break; sleep 0.1; done

say "5/6 install the plugin (docker plugin create + enable)"
mkdir -p /var/lib/clawker-fw && cp "$DEMO/ca/ca.crt" /var/lib/clawker-fw/demo-ca.crt
./scripts/install.sh build/plugin clawker-fw:latest \
  CLAWKER_DNS_UPSTREAM=$DNSIP:53 CLAWKER_ALLOW_PRIVATE_UPSTREAMS=10.221.0.0/24 \
  CLAWKER_EXTRA_CA=/var/lib/clawker-fw/demo-ca.crt
if ! docker image inspect busybox >/dev/null 2>&1; then
  echo "importing a busybox image from Debian's busybox-static (no registry needed)"
  tmp=$(mktemp -d); mkdir -p "$tmp/bin" "$tmp/etc"
  cp /bin/busybox "$tmp/bin/"; for a in sh nc nslookup echo cat sleep; do ln -s busybox "$tmp/bin/$a"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$tmp/etc/passwd"
  tar -C "$tmp" -c . | docker import -c 'CMD ["sh"]' - busybox >/dev/null; rm -rf "$tmp"
fi

say "6/6 the demo"
set -x
docker network create -d clawker-fw:latest --subnet 10.232.0.0/24 -o clawker.allow=http://$ALLOWED "$NET"
docker run --rm --network "$NET" busybox sh -c "
  echo '--- allowed: http://$ALLOWED'; printf 'GET / HTTP/1.0\r\nHost: $ALLOWED\r\n\r\n' | nc -w 5 $ALLOWED 80 | head -1
  echo '--- denied name: $DENIED'; nslookup $DENIED 2>&1 | tail -2
  echo '--- IP literal 10.221.0.11'; nc -w 3 10.221.0.11 80 </dev/null"  || true
set +x
sleep 1
echo; echo "--- what the firewall saw (clawker-fw denials):"
./build/bin/clawker-fw denials
echo
echo "Demo done. The plugin stays installed (docker plugin ls). Try a label that allows the denied site:"
echo "  docker run --rm --network $NET --label clawker.allow=http://$DENIED busybox nslookup $DENIED"
echo "  ./build/bin/clawker-fw status"
echo "Clean up the demo: sudo ./scripts/demo.sh --clean ; for real use: make install (default upstream DNS)."
