#!/usr/bin/env bash
# Zero-downtime check under load: wrk runs for 30 s against the gateway (a daemon) while the
# script performs 5 graceful upgrades (SIGQUIT to the old process, then `-u -d`, as the systemd
# unit does) and 5 SIGHUP reloads, alternating. Prints wrk's non-2xx count and socket errors
# (target: 0 and 0). Usage: bench/upgrade.sh   (env: DURATION=30, CONNECTIONS=50)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-50}
. bench/common.sh
install_missing wrk:wrk nginx:nginx-light
cargo build --release --bin apigateway >/dev/null
BIN=$PWD/target/release/apigateway
WORK=$(mktemp -d)
UP=$(port); GW=$(port)
cleanup() {
  [ -f "$WORK/gw.pid" ] && kill -INT "$(cat "$WORK/gw.pid")" 2>/dev/null || true
  [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$WORK/error.log" /tmp/upgrade-error.log 2>/dev/null; cleanup' EXIT
cat > "$WORK/up.conf" <<CONF
worker_processes 1; daemon on; pid $WORK/up.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{"ok":true}'; } } }
CONF
nginx -c "$WORK/up.conf"
write_config() { # $1: extra route path
  cat > "$WORK/gw.yaml" <<CONF
server: {threads: 1, pid_file: $WORK/gw.pid, upgrade_sock: $WORK/upgrade.sock, error_log: $WORK/error.log, grace_period_seconds: 2, graceful_shutdown_timeout_seconds: 5}
admin: {listen: null}
access_log: {enabled: false}
listen: ['127.0.0.1:$GW']
services: {up: {backends: ['127.0.0.1:$UP']}}
routes:
  - {path: /api, service: up}
  - {path: /$1, service: up}
CONF
}
write_config extra0
"$BIN" -d -c "$WORK/gw.yaml"
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$GW") 2>/dev/null && break; sleep 0.05; done
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$GW/api/x" > "$WORK/wrk.txt" &
WRK=$!
STEP=$(awk -v d="$DURATION" 'BEGIN {printf "%.2f", d / 11}')
for i in 1 2 3 4 5; do
  sleep "$STEP"
  old=$(cat "$WORK/gw.pid")
  kill -QUIT "$old"
  "$BIN" -u -d -c "$WORK/gw.yaml"
  echo "upgrade $i: pid $old -> $(cat "$WORK/gw.pid")"
  sleep "$STEP"
  write_config "extra$i"
  kill -HUP "$(cat "$WORK/gw.pid")"
  echo "reload $i: /extra$i"
done
wait "$WRK"
OUT="bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-upgrade.txt"
mkdir -p bench/results
cp "$WORK/wrk.txt" "$OUT"
cat "$WORK/wrk.txt"
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); NON2XX=${NON2XX:-0}
SOCKERR=$(awk '/Socket errors/ {print}' "$WORK/wrk.txt"); SOCKERR=${SOCKERR:-none}
# The last old process keeps accepting for Pingora's 5 s handover window; then only the new
# one (with the last reload) answers.
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/extra5/x" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done
echo "final route /extra5: $code"
echo "5 upgrades + 5 reloads in ${DURATION}s: non-2xx responses: $NON2XX; socket errors: $SOCKERR" | tee -a "$OUT"
