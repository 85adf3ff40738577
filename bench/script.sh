#!/usr/bin/env bash
# Route scripts (issue #23): one gateway (threads 1) in front of nginx. The same answers on
# routes without a script and with one: a trivial `on_request` (sets one header from another)
# on the small JSON answer, and an `on_response_body` doing what the declarative transform
# of bench/run.sh's gw-kbt does (rename, remove, set) on its 1 KB JSON answer, beside that
# declarative transform. `wrk -t1 -c50`, interleaved rounds, medians of req/s and the
# gateway's CPU µs per request. Targets: trivial script ≤ 1.10x, body script ≤ 1.3x the CPU
# of the same route without one. ROUNDS (7), DURATION (5s), CONNECTIONS (50) override.
# Results in bench/results/<UTC>-script.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
wrk_bench_setup

KB_JSON=$(python3 -c 'import json; print(json.dumps({"id": 42, "service": "catalog", "internal": {"cost": 3}, "items": [{"sku": "sku-%03d" % i, "name": "item number %d" % i, "price": i * 1.5} for i in range(17)]}, separators=(",", ":")))')
UP=$(port)
start_json_upstream "$UP" "location /kb { default_type application/json; return 200 '$KB_JSON'; }"
wait_port "$UP"
cat > "$WORK/trivial.rhai" <<'RHAI'
fn on_request(req) { req.set_header("x-caller", req.header("user-agent")); }
RHAI
cat > "$WORK/body.rhai" <<'RHAI'
fn on_response_body(req, res, body) {
    body.catalog_name = body.service;
    body.remove("service");
    body.remove("internal");
    body.gateway = true;
    body
}
RHAI
GW=$(port)
{ gateway_head gw "$GW" 1; cat; } > "$WORK/gw.yaml" <<YAML
routes:
  - {path: /api/plain, service: users, security_headers: {enabled: false}}
  - {path: /api/trivial, service: users, security_headers: {enabled: false}, script: {file: trivial.rhai}}
  - {path: /api/kb, service: users, rewrite: /kb, security_headers: {enabled: false}}
  - {path: /api/kbt, service: users, rewrite: /kb, security_headers: {enabled: false}, response: {body: {rename: {service: catalog_name}, remove: [internal], set: {gateway: true}}}}
  - {path: /api/kbs, service: users, rewrite: /kb, security_headers: {enabled: false}, script: {file: body.rhai}}
YAML
RUST_LOG=warn "$BIN" -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & PIDS+=($!); PID=$!
wait_port "$GW"
# Both rewrites give the same members.
t=$(curl -s "http://127.0.0.1:$GW/api/kbt" | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)))')
s=$(curl -s "http://127.0.0.1:$GW/api/kbs" | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)))')
[ "$t" = "$s" ] || { echo "transform $t and script $s differ"; exit 1; }
declare -A URL=([plain]=/api/plain/42 [trivial]=/api/trivial/42 [kb]=/api/kb [kb-transform]=/api/kbt [kb-script]=/api/kbs)
TARGETS=(plain trivial kb kb-transform kb-script)
wrk_rounds "$PID" "http://127.0.0.1:$GW"
save_results script
{
  echo "| target | req/s | CPU µs/req | CPU vs the route without a script |"
  echo "|---|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    case $t in trivial) base=plain ;; kb-*) base=kb ;; *) base=$t ;; esac
    echo "| $t | $(med "$t" 2) | $(med "$t" 3) | $(ratio "$(med "$t" 3)" "$(med "$base" 3)")× |"
  done
} | tee "$OUT/table.md"
