#!/usr/bin/env bash
# Traffic management (issue #19): CPU per request of a split route (two services, 90/10, the
# random choice), a sticky split (by the client address) and a route mirroring every request
# to a second service (the same nginx) against a plain route, in one
# gateway (threads 1) to the same nginx upstream. `wrk -t1 -c50`, interleaved rounds, medians
# of the gateway process's CPU µs per request. The yardstick for the mirror: agg1 and agg2,
# aggregates of one and two calls to the same upstream, whose difference is what one more
# upstream exchange costs the gateway; mirrored − plain should be at most that.
# ROUNDS (7), DURATION (5s), CONNECTIONS (50) override. Results in bench/results/<UTC>-traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
wrk_bench_setup

UP=$(port)
start_json_upstream "$UP"
wait_port "$UP"
GW=$(port)
{ gateway_head gw "$GW" 1; cat; } > "$WORK/gw.yaml" <<YAML
routes:
  - {path: /api/users, service: users}
  - path: /api/split
    split: [{service: users, weight: 90}, {service: canary, weight: 10}]
  - path: /api/sticky
    sticky: client_ip
    split: [{service: users, weight: 90}, {service: canary, weight: 10}]
  - path: /api/mirrored
    service: users
    mirror: {service: canary, sample_ratio: 1.0, max_in_flight: 1000}
  - path: /api/agg1
    aggregate: {calls: [{key: a, service: users, path: /a}]}
  - path: /api/agg2
    aggregate: {calls: [{key: a, service: users, path: /a}, {key: b, service: canary, path: /b}]}
YAML
add_service canary
RUST_LOG=warn "$BIN" -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & PIDS+=($!); PID=$!
wait_port "$GW"
declare -A PATHS=([plain]=/api/users/42 [split]=/api/split/42 [sticky]=/api/sticky/42
                  [mirrored]=/api/mirrored/42 [agg1]=/api/agg1 [agg2]=/api/agg2)
TARGETS=(plain split sticky mirrored agg1 agg2)
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for t in "${TARGETS[@]}"; do wrk_cpu "$t" "$PID" "http://127.0.0.1:$GW${PATHS[$t]}"; done
done
save_results traffic
cpu_table route plain "${TARGETS[@]}"
mirror=$(awk -v m="$(med mirrored 3)" -v p="$(med plain 3)" 'BEGIN {printf "%.2f", m - p}')
exchange=$(awk -v b="$(med agg2 3)" -v a="$(med agg1 3)" 'BEGIN {printf "%.2f", b - a}')
echo "mirror: mirrored − plain = $mirror µs; one more upstream exchange (agg2 − agg1) = $exchange µs" \
  | tee -a "$OUT/table.md"
