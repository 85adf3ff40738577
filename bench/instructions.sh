#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the same answer twice for the same
# binary and inputs, whatever else the machine does, so an A/B of two commits is decided in one
# run. (`perf stat -e instructions` would be cheaper, but this VM exposes no hardware counters.)
#
# Each target runs under callgrind with instrumentation off; after a warm-up, instrumentation
# is switched on, h2load sends N requests over 10 keep-alive HTTP/1.1 connections, the counters
# are dumped, then 2N more and a second dump. (Ir(2N) - Ir(N)) / N is the marginal cost of one
# request: connection set-up and start-up fall out. User space only (kernel work is not
# counted), every thread of the process.
#
# Targets: bare (examples/bare_proxy.rs: empty ProxyHttp, prefix stripped), and the gateway's
# plain route (no auth, security headers off), hs256 (auth: required), full (HS256 + role +
# per-user rate limit + security headers), aggregate (3 sub-calls merged), transform (request
# and response header transforms). Also, when named in TARGETS: mirrored (the plain route
# mirroring every request to a second service on the same upstream), agg1 and agg2 (aggregates
# of one and two calls: their difference is what one more upstream exchange costs the gateway,
# the yardstick for mirrored − plain).
# Usage: bench/instructions.sh [GATEWAY_BINARY [BARE_BINARY]]   (env: REQUESTS=1000, TARGETS)
# Default binaries: target/release/apigateway and target/release/examples/bare_proxy (built).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
install_missing valgrind:valgrind h2load:nghttp2-client nginx:nginx-light openssl:openssl
REQUESTS=${REQUESTS:-1000}
TARGETS=(${TARGETS:-bare plain hs256 full aggregate transform})
if [ -z "${1:-}" ]; then
  # Two builds: an example pulls in the dev-dependencies, whose features must not leak into
  # the gateway binary that is measured.
  cargo build --release --example bare_proxy >/dev/null
  cargo build --release --bin apigateway >/dev/null
fi
GW_BIN=${1:-target/release/apigateway}
BARE_BIN=${2:-target/release/examples/bare_proxy}
bench_workdir

UP=$(port)
start_json_upstream "$UP"
wait_port "$UP"

GW=$(port)
{ gateway_head gw "$GW" 1; cat; } > "$WORK/gw.yaml" <<YAML
routes:
  - {path: /api/users, service: users, security_headers: {enabled: false}}
  - {path: /api/secure, service: users, auth: required, security_headers: {enabled: false}}
  - {path: /api/full, service: users, auth: required, roles: [user], rate_limits: [per_user]}
  - path: /api/agg
    aggregate:
      calls:
        - {key: a, service: users, path: /a}
        - {key: b, service: users, path: /b}
        - {key: c, service: users, path: /c}
  - path: /api/agg1
    aggregate: {calls: [{key: a, service: users, path: /a}]}
  - path: /api/agg2
    aggregate: {calls: [{key: a, service: users, path: /a}, {key: b, service: users, path: /b}]}
  - path: /api/mirrored
    service: users
    security_headers: {enabled: false}
    mirror: {service: shadow, sample_ratio: 1.0, max_in_flight: 1000}
  - path: /api/hdr
    service: users
    request: {headers: {set: {x-trace: '{request_id}'}}}
    response: {headers: {set: {x-served-by: gateway}}}
YAML

add_service shadow
TOKEN=$(token HS256 "$SECRET")

CG=(valgrind --tool=callgrind --instr-atstart=no --dump-instr=no)
BARE=$(port)
BARE_LISTEN=127.0.0.1:$BARE BARE_UPSTREAM=127.0.0.1:$UP \
  "${CG[@]}" --callgrind-out-file="$WORK/cg.bare" "$BARE_BIN" 2>"$WORK/bare.log" & PIDS+=($!); BARE_PID=$!
RUST_LOG=warn "${CG[@]}" --callgrind-out-file="$WORK/cg.gw" "$GW_BIN" -c "$WORK/gw.yaml" \
  2>"$WORK/gw.log" & PIDS+=($!); GW_PID=$!
# Under valgrind start-up takes seconds: wait longer than wait_port does.
for p in $BARE $GW; do wait_port "$p" 1200; done
wait_port "$BARE"; wait_port "$GW"

declare -A URL=( [bare]="http://127.0.0.1:$BARE/api/users/42" [plain]="http://127.0.0.1:$GW/api/users/42"
                 [hs256]="http://127.0.0.1:$GW/api/secure/42" [full]="http://127.0.0.1:$GW/api/full/42"
                 [aggregate]="http://127.0.0.1:$GW/api/agg" [transform]="http://127.0.0.1:$GW/api/hdr/42"
                 [mirrored]="http://127.0.0.1:$GW/api/mirrored/42" [agg1]="http://127.0.0.1:$GW/api/agg1"
                 [agg2]="http://127.0.0.1:$GW/api/agg2" )
declare -A HDR=( [hs256]="Authorization: Bearer $TOKEN" [full]="Authorization: Bearer $TOKEN" )

load() { # URL HEADER N
  local out
  out=$(h2load --h1 -c 10 -t 1 -n "$3" -H "$2" "$1")
  grep -q "$3 succeeded" <<<"$out" || { echo "h2load: not all $3 requests succeeded:"; echo "$out"; exit 1; }
  grep -q "status codes: $3 2xx" <<<"$out" || { echo "h2load: non-2xx answers:"; echo "$out"; exit 1; }
}
echo "| target | instructions per request |" | tee "$WORK/table.md"
echo "|---|---:|" | tee -a "$WORK/table.md"
for t in "${TARGETS[@]}"; do
  if [ "$t" = bare ]; then pid=$BARE_PID; out="$WORK/cg.bare"; else pid=$GW_PID; out="$WORK/cg.gw"; fi
  hdr=${HDR[$t]:-X-Bench: 1}
  load "${URL[$t]}" "$hdr" 500
  callgrind_control -i on "$pid" >/dev/null
  load "${URL[$t]}" "$hdr" "$REQUESTS"
  ir1=$(dump_ir "$pid" "$out")
  load "${URL[$t]}" "$hdr" $((2 * REQUESTS))
  ir2=$(dump_ir "$pid" "$out")
  callgrind_control -i off "$pid" >/dev/null
  per=$(awk -v a="$ir1" -v b="$ir2" -v n="$REQUESTS" 'BEGIN {printf "%d", (b - a) / n}')
  echo "| $t | $per |" | tee -a "$WORK/table.md"
done
if [ -n "${SAVE:-}" ]; then
  mkdir -p "$SAVE"; cp "$WORK/table.md" "$SAVE/instructions.md"
  cp "$WORK"/cg.gw.* "$WORK"/cg.bare.* "$SAVE/" 2>/dev/null || true
fi
# Both are done: the counters were dumped above. A graceful Pingora shutdown would wait out its
# grace period (300 s by default for the bare proxy) under valgrind.
kill -9 "$BARE_PID" "$GW_PID" 2>/dev/null || true
