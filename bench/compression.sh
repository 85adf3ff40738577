#!/usr/bin/env bash
# Response compression (issue #20): one gateway (threads 1) in front of nginx serving a 10 KB
# JSON file and a tiny JSON answer. Targets: the 10 KB body uncompressed (a route with
# compression off) and compressed with each coding at its default level (gzip 2, br 2, zstd
# 3), and the tiny body on a route with compression on (below min_size, so only the
# decision runs) against the same with compression off. `wrk -t1 -c50`, interleaved rounds,
# medians of req/s and the gateway's CPU µs per request; the compressed sizes are printed.
# ROUNDS (7), DURATION (5s), CONNECTIONS (50) override. Results in bench/results/<UTC>-compression.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
wrk_bench_setup

UP=$(port)
start_big_json_upstream "$UP"
GW=$(port)
{ gateway_head gw "$GW" 1; cat; } > "$WORK/gw.yaml" <<YAML
compression: {}
routes:
  - {path: /api/off, service: users, compression: {enabled: false}, security_headers: {enabled: false}}
  - {path: /api/on, service: users, security_headers: {enabled: false}}
YAML
RUST_LOG=warn "$BIN" -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & PIDS+=($!); PID=$!
wait_port "$GW"
BIG=$(wc -c < "$WORK/up/big.json")
for c in gzip br zstd; do
  n=$(curl -s -H "Accept-Encoding: $c" "http://127.0.0.1:$GW/api/on/big.json" | wc -c)
  echo "$c: $BIG bytes -> $n bytes ($(awk -v a="$n" -v b="$BIG" 'BEGIN {printf "%.1f", b / a}')x smaller)" | tee -a "$WORK/sizes.txt"
done
declare -A URL=([big-off]=/api/off/big.json [big-gzip]=/api/on/big.json [big-br]=/api/on/big.json
                [big-zstd]=/api/on/big.json [small-off]=/api/off/42 [small-on]=/api/on/42)
declare -A HDR=([big-off]="Accept-Encoding: gzip, br, zstd" [big-gzip]="Accept-Encoding: gzip"
                [big-br]="Accept-Encoding: br" [big-zstd]="Accept-Encoding: zstd"
                [small-off]="Accept-Encoding: gzip" [small-on]="Accept-Encoding: gzip")
TARGETS=(big-off big-gzip big-br big-zstd small-off small-on)
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for t in "${TARGETS[@]}"; do wrk_cpu "$t" "$PID" "http://127.0.0.1:$GW${URL[$t]}" "${HDR[$t]}"; done
done
save_results compression
cp "$WORK/sizes.txt" "$OUT/"
{
  echo "| target | req/s | CPU µs/req | req/s vs off | CPU vs off |"
  echo "|---|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    base=big-off; [[ $t == small-* ]] && base=small-off
    echo "| $t | $(med "$t" 2) | $(med "$t" 3) | $(ratio "$(med "$t" 2)" "$(med "$base" 2)")× | $(ratio "$(med "$t" 3)" "$(med "$base" 3)")× |"
  done
} | tee "$OUT/table.md"
