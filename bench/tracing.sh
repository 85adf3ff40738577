#!/usr/bin/env bash
# Tracing (issue #18): CPU per request of the same gateway binary with tracing off, on with
# 100 % sampling exporting to a live OTLP receiver, and on with a 0.01 sampling ratio.
# Three gateways (threads 1) with the same route to the same nginx upstream; the OTLP receiver
# is that nginx answering 200 on /v1/traces. `wrk -t1 -c50`, interleaved rounds, medians of the
# gateway process's CPU µs per request (/proc/PID/stat). (Tracing off against the build
# before tracing existed is `bench/ab.sh OLD NEW`.) BASE_BIN=<older binary> adds `on-base`, that
# binary with 100 % sampling, for a before/after of a change to the tracing path.
# ROUNDS (7), DURATION (5s), CONNECTIONS (50) override. Results in bench/results/<UTC>-tracing.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
wrk_bench_setup

UP=$(port)
start_json_upstream "$UP" 'location = /v1/traces { return 200; }'
wait_port "$UP"

declare -A PORT PID
start() { # NAME TRACING-YAML [BINARY]
  PORT[$1]=$(port)
  { gateway_head "$1" "${PORT[$1]}" 1; printf '%s' "$2"; cat; } > "$WORK/$1.yaml" <<YAML
routes:
  - {path: /api/users, service: users}
YAML
  RUST_LOG=warn "${3:-$BIN}" -c "$WORK/$1.yaml" 2>"$WORK/$1.log" & PIDS+=($!); PID[$1]=$!
  wait_port "${PORT[$1]}"
}
OTLP="  otlp: {endpoint: 'http://127.0.0.1:$UP/v1/traces'}"
start off ""
start on "tracing:
  sampling_ratio: 1.0
$OTLP
"
start low "tracing:
  sampling_ratio: 0.01
$OTLP
"
TARGETS=(off on low)
if [ -n "${BASE_BIN:-}" ]; then
  start on-base "tracing:
  sampling_ratio: 1.0
$OTLP
" "$BASE_BIN"
  TARGETS+=(on-base)
fi
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for t in "${TARGETS[@]}"; do
    wrk_cpu "$t" "${PID[$t]}" "http://127.0.0.1:${PORT[$t]}/api/users/42"
  done
done
save_results tracing
cpu_table tracing off "${TARGETS[@]}"
