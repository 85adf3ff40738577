#!/usr/bin/env bash
# Response cache (issue #20): one gateway (threads 1) in front of nginx. The same answers
# proxied (a route without `cache:`) and served as cache HITs (a route with `cache: {ttl:
# 60s}`, warmed first): nginx's small JSON answer and a 10 KB JSON file. `wrk -t1 -c50`,
# interleaved rounds, medians of req/s and the gateway's CPU µs per request. Target: a HIT
# costs at most 0.6x the CPU of the same answer proxied. ROUNDS (7), DURATION (5s),
# CONNECTIONS (50) override. Results in bench/results/<UTC>-cache.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
wrk_bench_setup

UP=$(port)
start_big_json_upstream "$UP"
GW=$(port)
{ gateway_head gw "$GW" 1; cat; } > "$WORK/gw.yaml" <<YAML
routes:
  - {path: /api/proxied, service: users, security_headers: {enabled: false}}
  - {path: /api/cached, service: users, security_headers: {enabled: false}, cache: {ttl: 60s}}
YAML
RUST_LOG=warn "$BIN" -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & PIDS+=($!); PID=$!
wait_port "$GW"
for p in /api/cached/42 /api/cached/big.json; do
  curl -s -o /dev/null "http://127.0.0.1:$GW$p"
  status=$(curl -s -D- -o /dev/null "http://127.0.0.1:$GW$p" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')
  [ "$status" = HIT ] || { echo "$p is not a cache HIT ($status)"; exit 1; }
done
declare -A URL=([small-proxied]=/api/proxied/42 [small-hit]=/api/cached/42
                [big-proxied]=/api/proxied/big.json [big-hit]=/api/cached/big.json)
TARGETS=(small-proxied small-hit big-proxied big-hit)
wrk_rounds "$PID" "http://127.0.0.1:$GW"
save_results cache
{
  echo "| target | req/s | CPU µs/req | req/s vs proxied | CPU vs proxied |"
  echo "|---|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    base=${t%-*}-proxied
    echo "| $t | $(med "$t" 2) | $(med "$t" 3) | $(ratio "$(med "$t" 2)" "$(med "$base" 2)")× | $(ratio "$(med "$t" 3)" "$(med "$base" 3)")× |"
  done
} | tee "$OUT/table.md"
