#!/usr/bin/env bash
# Soak: SOAK_SECONDS (600) of mixed traffic through one gateway (plain, authenticated, invalid
# tokens, rate limited, aggregate, a dead service, connection churn; bench/soak.lua) while RSS
# and open file descriptors are sampled every 10 s. Reports RSS growth after a 60 s warm-up
# (target < 5 %) and the answers by status class. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
SOAK_SECONDS=${SOAK_SECONDS:-600}; WARMUP=${WARMUP:-60}; CONNECTIONS=${CONNECTIONS:-50}
install_missing wrk:wrk nginx:nginx openssl:openssl
cargo build --release --bin apigateway >/dev/null
bench_workdir
UP=$(port); GW=$(port); ADMIN=$(port); DEAD=$(port)
SECRET=soak-secret-0123456789abcdef-0123456789

start_json_upstream "$UP"

cat > "$WORK/gw.yaml" <<YAML
server: {threads: 1, pid_file: $WORK/gw.pid, upgrade_sock: $WORK/gw.sock}
listen: ['127.0.0.1:$GW']
admin: {listen: '127.0.0.1:$ADMIN'}
access_log: {enabled: false}
services:
  up: {backends: ['127.0.0.1:$UP']}
  dead: {backends: ['127.0.0.1:$DEAD'], passive_health: {failures: 5, cooldown: 2s}}
auth:
  keys: [{kid: hs, alg: HS256, secret: $SECRET}]
rate_limits:
  policies:
    tiny: {requests: 10, period: 1s, key: ip}
routes:
  - {path: /api/open, service: up}
  - {path: /api/secure, service: up, auth: required}
  - {path: /api/limited, service: up, rate_limits: [tiny]}
  - {path: /api/down, service: dead}
  - path: /api/agg/:id
    aggregate:
      merge: keyed
      calls:
        - {key: a, service: up, path: '/a/{id}'}
        - {key: b, service: up, path: '/b/{id}', required: false}
YAML
RUST_LOG=error target/release/apigateway -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & GW_PID=$!; PIDS+=($GW_PID)
wait_port "$UP"; wait_port "$GW"

TOKEN=$(token HS256 "$SECRET" soak)

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)-soak
RAW="bench/results/$STAMP"; mkdir -p "$RAW"
sample() { # seconds rss_kib fds
  printf '%s\t%s\t%s\n' "$1" "$(awk '/VmRSS/ {print $2}' /proc/$GW_PID/status)" "$(ls /proc/$GW_PID/fd | wc -l)"
}
wrk -t1 -c"$CONNECTIONS" -d"${SOAK_SECONDS}s" -s bench/soak.lua "http://127.0.0.1:$GW" -- "$TOKEN" > "$RAW/wrk.txt" & WRK=$!
printf 'seconds\trss_kib\tfds\n' > "$RAW/samples.tsv"
START=$(date +%s)
while kill -0 "$WRK" 2>/dev/null; do
  sample "$(( $(date +%s) - START ))" >> "$RAW/samples.tsv"
  sleep 10
done
wait "$WRK" || true
sample "$(( $(date +%s) - START ))" >> "$RAW/samples.tsv"
curl -s "http://127.0.0.1:$ADMIN/metrics" > "$RAW/metrics.txt"

{
  echo "Soak $STAMP · ${SOAK_SECONDS}s · wrk -c$CONNECTIONS · bench/soak.lua mix"
  echo
  awk -v w="$WARMUP" 'NR>1 && $1>=w && !base {base=$2} NR>1 {last=$2; if ($3>maxfd) maxfd=$3; if (!minfd || $3<minfd) minfd=$3}
    END {printf "RSS after warm-up %.1f MiB, at the end %.1f MiB: growth %.2f %% (target < 5 %%); open fds %d..%d\n", base/1024, last/1024, (last-base)*100/base, minfd, maxfd}' "$RAW/samples.tsv"
  grep -E "Requests/sec|requests in|Socket errors|Non-2xx" "$RAW/wrk.txt" || true
  echo "Answers by status class (apigateway_requests_total):"
  awk '/^apigateway_requests_total/ {split($1, a, "status=\""); split(a[2], s, "\""); n[s[1]] += $2} END {for (k in n) printf "  %s: %d\n", k, n[k]}' "$RAW/metrics.txt" | sort
} | tee "$RAW/report.txt"
