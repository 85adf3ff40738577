#!/usr/bin/env bash
# Side-by-side proxy benchmark on one machine, interleaved rounds:
#   bare       bare Pingora (examples/bare_proxy.rs: empty ProxyHttp, prefix stripped, threads 1)
#   gw-plain   the gateway, plain prefix route, security headers off (the issue #16 "plain")
#   gw-3       the gateway, proxy route, 3-route table        (threads: 1)
#   gw-1000    the gateway, same route, 1,000-route table     (threads: 1)
#   gw-hs      the gateway, route with `auth: required`, HS256 bearer token (identity headers)
#   gw-rs      the same route with an RS256 token (verified once, then served from the cache)
#   gw-full    the full pipeline: route + HS256 auth + per-user rate limit (never trips) +
#              identity headers + forwarded headers
#   gw-agg     an aggregate route: 3 concurrent sub-calls to the upstream, JSON merged
#   gw-hdr     gw-3's route plus a request header set (templated) and a response header set
#   gw-kb      a proxy route to a 1 KB JSON answer
#   gw-kbt     the same with a JSON response-body transform (rename + remove + set)
#   gw-log     gw-3's route on a gateway writing the JSON access log to a file
#   gw-pipe    the full job (issue #8 (a), #16 "full"): route + HS256 + role + per-user rate
#              limit (never trips) with its headers + a request header set + the security-header
#              preset + request id + forwarded headers
#   haproxy-jwt HAProxy doing that job: jwt_verify HS256 + exp and role checks, a per-`sub`
#              stick-table rate limit with limit headers, the same request header set and the
#              five security headers
# Then: RSS of a gateway after 1,000,000 distinct rate-limit keys.
#   nginx      nginx as a plain reverse proxy, 1 worker, upstream keep-alive
#   haproxy    HAProxy as a plain reverse proxy, 1 thread, http-reuse always
#   direct     the upstream itself (nginx serving a small JSON body, 1 worker)
# Prints req/s, p50 and p99, the proxy's CPU µs per request (utime + stime of its process
# around each wrk run, divided by the requests: medians over rounds), peak RSS, and ratios to
# bare Pingora, nginx and HAProxy doing the same job.
# Usage: bench/run.sh [--smoke]   (env: ROUNDS, DURATION, CONNECTIONS, BENCH_TARGETS, KEYS_DURATION)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-50}
if [ "${1:-}" = "--smoke" ]; then ROUNDS=1; DURATION=1s; fi

. bench/common.sh
install_missing wrk:wrk nginx:nginx-light haproxy:haproxy

# Two builds: an example pulls in the dev-dependencies, whose features must not leak into
# the gateway binary that is measured.
cargo build --release --example bare_proxy >/dev/null
cargo build --release --bin apigateway >/dev/null
bench_workdir
UP=$(port); NGX=$(port); HAP=$(port); GW3=$(port); GW1K=$(port); GWL=$(port); HAPJ=$(port); BARE=$(port)

# Upstream: nginx answering a small JSON body, and a 1 KB one on /kb.
KB_JSON=$(python3 -c 'import json; print(json.dumps({"id": 42, "service": "catalog", "internal": {"cost": 3}, "items": [{"sku": "sku-%03d" % i, "name": "item number %d" % i, "price": i * 1.5} for i in range(17)]}, separators=(",", ":")))')
start_json_upstream "$UP" "location /kb { default_type application/json; return 200 '$KB_JSON'; }"
mkdir -p "$WORK/ngx"
cat > "$WORK/ngx/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $WORK/ngx/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX;
    location /api/users/ { proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
# Both HAProxy targets: one thread (like nginx's one worker), upstream connection reuse.
HAP_COMMON="$HAPROXY_COMMON
  http-reuse always"
cat > "$WORK/haproxy.cfg" <<CONF
$HAP_COMMON
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  http-request set-path %[path,regsub(^/api/users/,/)]
  server up 127.0.0.1:$UP
CONF
cat > "$WORK/haproxy-jwt.cfg" <<CONF
$HAP_COMMON
frontend fe
  bind 127.0.0.1:$HAPJ
  stick-table type string len 64 size 2m expire 60s store http_req_rate(1s)
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request return status 401 content-type application/json string '{"error":"Invalid token"}' unless { var(txn.alg) -m str HS256 }
  http-request return status 401 content-type application/json string '{"error":"Invalid token"}' unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request return status 401 content-type application/json string '{"error":"Invalid token"}' if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request set-var(txn.role) var(txn.bearer),jwt_payload_query('\$.role')
  http-request return status 403 content-type application/json string '{"error":"Insufficient permissions"}' unless { var(txn.role) -m str user }
  http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
  http-request track-sc0 var(txn.sub)
  http-request return status 429 content-type application/json string '{"error":"Rate limit exceeded"}' if { sc_http_req_rate(0) gt 1000000000 }
  http-request set-var(txn.rate) sc_http_req_rate(0)
  http-request set-header X-User-Id %[var(txn.sub)]
  http-request set-header X-Forwarded-For %[src]
  http-response set-header X-RateLimit-Limit 1000000000
  http-response set-header X-RateLimit-Remaining %[int(1000000000),sub(txn.rate)]
  http-request set-header X-Trace %[uuid]
  http-response set-header X-Content-Type-Options nosniff
  http-response set-header X-Frame-Options DENY
  http-response set-header Referrer-Policy no-referrer
  http-response set-header Cross-Origin-Opener-Policy same-origin
  http-response set-header Cross-Origin-Resource-Policy same-origin
  default_backend be
backend be
  http-request set-path %[path,regsub(^/api/pipe/,/)]
  server up 127.0.0.1:$UP
CONF

gw_config() { # $1 port, $2 number of extra routes
  {
    printf 'server: {threads: 1, pid_file: %s/gw%s.pid, upgrade_sock: %s/gw%s.sock}\n' "$WORK" "$1" "$WORK" "$1"
    # Like nginx's `access_log off`; one admin listener per gateway would collide on :9090.
    printf "access_log: {enabled: false}\nadmin: {listen: null}\n"
    printf "listen: ['127.0.0.1:%s']\nservices:\n" "$1"
    printf "  users: {backends: ['127.0.0.1:%s']}\n" "$UP"
    printf "auth:\n  keys:\n    - {kid: hs, alg: HS256, secret: %s}\n    - {kid: rs, alg: RS256, public_key_file: %s}\n" "$SECRET" "$PWD/tests/fixtures/keys/rsa.pub.pem"
    printf "rate_limits:\n  max_keys: 2000000\n  policies:\n    bench_user: {requests: 1000000000, period: 1s, key: user}\n    keyed: {requests: 1, period: 1h, key: 'header:x-key'}\n"
    printf "routes:\n  - {path: /api/users, service: users}\n  - {path: /api/secure, service: users, auth: required}\n  - {path: /api/full, service: users, auth: required, rate_limits: [bench_user]}\n  - {path: /api/keyed, service: users, rate_limits: [keyed]}\n"
    printf "  - {path: /api/pipe, service: users, auth: required, roles: [user], rate_limits: [bench_user], request: {headers: {set: {x-trace: '{request_id}'}}}}\n"
    printf "  - {path: /api/plain, service: users, security_headers: {enabled: false}}\n"
    printf "  - {path: /api/hdr, service: users, request: {headers: {set: {x-trace: '{request_id}'}}}, response: {headers: {set: {x-served-by: gateway}}}}\n"
    printf "  - {path: /api/kb, service: users, rewrite: /kb}\n"
    printf "  - {path: /api/kbt, service: users, rewrite: /kb, response: {body: {rename: {service: catalog_name}, remove: [internal], set: {gateway: true}}}}\n"
    printf "  - {path: /api/agg, aggregate: {calls: [{key: a, service: users, path: /1}, {key: b, service: users, path: /2}, {key: c, service: users, path: /3}]}}\n"
    for i in $(seq 1 "$2"); do printf '  - {path: /svc%s/items/:id, service: users}\n' "$i"; done
  } > "$WORK/gw$1.yaml"
}
gw_config "$GW3" 0
gw_config "$GW1K" 997
gw_config "$GWL" 0
sed -i "s#^access_log: .*#access_log: {path: $WORK/access.log}#" "$WORK/gw$GWL.yaml"

nginx -c "$WORK/ngx/nginx.conf" & PIDS+=($!); NGX_PID=$!
haproxy -f "$WORK/haproxy.cfg" -q & PIDS+=($!); HAP_PID=$!
haproxy -f "$WORK/haproxy-jwt.cfg" -q & PIDS+=($!); HAPJ_PID=$!
BARE_LISTEN=127.0.0.1:$BARE BARE_UPSTREAM=127.0.0.1:$UP target/release/examples/bare_proxy 2>/dev/null & PIDS+=($!); BARE_PID=$!
RUST_LOG=warn target/release/apigateway -c "$WORK/gw$GW3.yaml" & PIDS+=($!); GW3_PID=$!
RUST_LOG=warn target/release/apigateway -c "$WORK/gw$GW1K.yaml" & PIDS+=($!); GW1K_PID=$!
RUST_LOG=warn target/release/apigateway -c "$WORK/gw$GWL.yaml" & PIDS+=($!); GWL_PID=$!

for p in $UP $NGX $HAP $HAPJ $GW3 $GW1K $GWL $BARE; do wait_port "$p"; done

HS_TOKEN=$(token HS256 "$SECRET")
RS_TOKEN=$(token RS256 tests/fixtures/keys/rsa.pem)
declare -A HDR=( [gw-pipe]="Authorization: Bearer $HS_TOKEN" [haproxy-jwt]="Authorization: Bearer $HS_TOKEN" [gw-hs]="Authorization: Bearer $HS_TOKEN" [gw-rs]="Authorization: Bearer $RS_TOKEN" [gw-full]="Authorization: Bearer $HS_TOKEN" )

declare -A URL=( [bare]="http://127.0.0.1:$BARE/api/users/42" [gw-plain]="http://127.0.0.1:$GW3/api/plain/42" [gw-3]="http://127.0.0.1:$GW3/api/users/42" [gw-1000]="http://127.0.0.1:$GW1K/api/users/42"
                 [gw-hs]="http://127.0.0.1:$GW3/api/secure/42" [gw-rs]="http://127.0.0.1:$GW3/api/secure/42"
                 [gw-full]="http://127.0.0.1:$GW3/api/full/42" [gw-agg]="http://127.0.0.1:$GW3/api/agg"
                 [gw-hdr]="http://127.0.0.1:$GW3/api/hdr/42" [gw-kb]="http://127.0.0.1:$GW3/api/kb"
                 [gw-kbt]="http://127.0.0.1:$GW3/api/kbt" [gw-log]="http://127.0.0.1:$GWL/api/users/42"
                 [gw-pipe]="http://127.0.0.1:$GW3/api/pipe/42" [haproxy-jwt]="http://127.0.0.1:$HAPJ/api/pipe/42"
                 [nginx]="http://127.0.0.1:$NGX/api/users/42" [haproxy]="http://127.0.0.1:$HAP/api/users/42"
                 [direct]="http://127.0.0.1:$UP/42" )
declare -A PID=( [bare]=$BARE_PID [gw-plain]=$GW3_PID [gw-pipe]=$GW3_PID [haproxy-jwt]=$HAPJ_PID [gw-log]=$GWL_PID [gw-hdr]=$GW3_PID [gw-kb]=$GW3_PID [gw-kbt]=$GW3_PID [gw-3]=$GW3_PID [gw-1000]=$GW1K_PID [gw-hs]=$GW3_PID [gw-rs]=$GW3_PID [gw-full]=$GW3_PID [gw-agg]=$GW3_PID [nginx]=$NGX_PID [haproxy]=$HAP_PID [direct]=$UP_PID )
# BENCH_TARGETS="gw-3 gw-hdr nginx" runs a subset (the summary lines of absent targets are empty).
TARGETS=(${BENCH_TARGETS:-bare gw-plain gw-3 gw-1000 gw-hs gw-rs gw-full gw-agg gw-hdr gw-kb gw-kbt gw-log gw-pipe nginx haproxy haproxy-jwt direct})

for t in "${TARGETS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "${HDR[$t]:-X-Bench: 1}" "${URL[$t]}" || true)
  [ "$code" = 200 ] || { echo "$t answered $code"; exit 1; }
done

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
RAW="bench/results/$STAMP"
mkdir -p "$RAW"
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
# CPU ticks (user + system, all threads) of a process; CLK_TCK ticks per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    before=$(cpu_ticks "${PID[$t]}")
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "${HDR[$t]:-X-Bench: 1}" "${URL[$t]}" > "$RAW/$t.round$r.txt"
    after=$(cpu_ticks "${PID[$t]}")
    rps=$(awk '/Requests\/sec/ {print $2}' "$RAW/$t.round$r.txt")
    p50=$(awk '$1=="50%" {print $2}' "$RAW/$t.round$r.txt" | to_ms)
    p99=$(awk '$1=="99%" {print $2}' "$RAW/$t.round$r.txt" | to_ms)
    total=$(awk '/requests in/ {print $1}' "$RAW/$t.round$r.txt")
    us=$(awk -v t=$((after - before)) -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "$t $rps $p50 $p99 $us" >> "$RAW/summary.txt"
    echo "round $r $t: $rps req/s p50 ${p50}ms p99 ${p99}ms ${us} CPU µs/req"
  done
done

rss() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
col() { awk -v t="$1" -v c="$2" '$1==t {print $c}' "$RAW/summary.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f×", a/b}'; }
NGX_RPS=$(col nginx 2)
NGX_US=$(col nginx 5); BARE_US=$(col bare 5); HAP_US=$(col haproxy 5); HAPJ_US=$(col haproxy-jwt 5)
{
  echo "Date: $STAMP · $(nproc) cores · $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) · wrk -t1 -c$CONNECTIONS -d$DURATION · $ROUNDS interleaved rounds · medians"
  echo
  echo "CPU µs/req: the proxy process's user + system CPU per request (lower is better); the"
  echo "ratios compare it with bare Pingora, nginx, and HAProxy doing the same job (plain"
  echo "HAProxy for proxy routes, the jwt job for gw-pipe)."
  echo
  echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | CPU vs bare | CPU vs nginx | CPU vs HAProxy | req/s vs nginx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    rps=$(col "$t" 2); us=$(col "$t" 5)
    hap=$HAP_US; [ "$t" = gw-pipe ] && hap=$HAPJ_US
    echo "| $t | $rps | $(col "$t" 3) | $(col "$t" 4) | $us | $(rss "${PID[$t]}") | $(ratio "$us" "$BARE_US") | $(ratio "$us" "$NGX_US") | $(ratio "$us" "$hap") | $(ratio "$rps" "$NGX_RPS") |"
  done
  echo
  echo "Targets of issue #16 (CPU per request): plain route vs bare Pingora $(ratio "$(col gw-plain 5)" "$BARE_US") (≤ 1.05×);" \
    "full job vs bare Pingora $(ratio "$(col gw-pipe 5)" "$BARE_US") (≤ 1.15×); full job vs HAProxy doing it $(ratio "$(col gw-pipe 5)" "$HAPJ_US") (stretch: ≤ 1.00×);" \
    "1,000 routes vs 3 routes $(ratio "$(col gw-1000 5)" "$(col gw-3 5)") (≤ 1.00×);" \
    "p99 of the full job minus bare p99: $(awk -v a="$(col gw-pipe 4)" -v b="$(col bare 4)" 'BEGIN {printf "%.3f", a-b}') ms (≤ 0.2)"
  GW3_RPS=$(awk '$1=="gw-3" {print $2}' "$RAW/summary.txt" | median)
  GW1K_RPS=$(awk '$1=="gw-1000" {print $2}' "$RAW/summary.txt" | median)
  echo
  HS_RPS=$(awk '$1=="gw-hs" {print $2}' "$RAW/summary.txt" | median)
  RS_RPS=$(awk '$1=="gw-rs" {print $2}' "$RAW/summary.txt" | median)
  echo "1,000 routes vs 3 routes: $(awk -v a="$GW1K_RPS" -v b="$GW3_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  echo "HS256 auth route vs no-auth route: $(awk -v a="$HS_RPS" -v b="$GW3_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  FULL_RPS=$(awk '$1=="gw-full" {print $2}' "$RAW/summary.txt" | median)
  echo "RS256 vs HS256 (token cache): $(awk -v a="$RS_RPS" -v b="$HS_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  AGG_RPS=$(awk '$1=="gw-agg" {print $2}' "$RAW/summary.txt" | median)
  echo "Full pipeline (auth + rate limit) vs auth only: $(awk -v a="$FULL_RPS" -v b="$HS_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  echo "Aggregate of 3 calls vs single proxied call: $(awk -v a="$AGG_RPS" -v b="$GW3_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  HDR_RPS=$(awk '$1=="gw-hdr" {print $2}' "$RAW/summary.txt" | median)
  KB_RPS=$(awk '$1=="gw-kb" {print $2}' "$RAW/summary.txt" | median)
  KBT_RPS=$(awk '$1=="gw-kbt" {print $2}' "$RAW/summary.txt" | median)
  echo "Header transform route vs plain route: $(awk -v a="$HDR_RPS" -v b="$GW3_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  echo "JSON response-body transform (1 KB) vs plain 1 KB: $(awk -v a="$KBT_RPS" -v b="$KB_RPS" 'BEGIN {printf "%.3f", a/b}')×"
  LOG_RPS=$(awk '$1=="gw-log" {print $2}' "$RAW/summary.txt" | median)
  PIPE_RPS=$(awk '$1=="gw-pipe" {print $2}' "$RAW/summary.txt" | median)
  HAPJ_RPS=$(awk '$1=="haproxy-jwt" {print $2}' "$RAW/summary.txt" | median)
  PIPE_P99=$(awk '$1=="gw-pipe" {print $4}' "$RAW/summary.txt" | median)
  NGX_P99=$(awk '$1=="nginx" {print $4}' "$RAW/summary.txt" | median)
  echo "Full pipeline (a) vs nginx plain proxy (c): $(awk -v a="$PIPE_RPS" -v b="$NGX_RPS" 'BEGIN {printf "%.3f", a/b}')× (target >= 1.0)"
  echo "Full pipeline (a) vs HAProxy doing the same job (d): $(awk -v a="$PIPE_RPS" -v b="$HAPJ_RPS" 'BEGIN {printf "%.3f", a/b}')× (target >= 1.2)"
  echo "Proxy-only route (b) vs nginx (c): $(awk -v a="$GW3_RPS" -v b="$NGX_RPS" 'BEGIN {printf "%.3f", a/b}')× (target >= 1.05)"
  echo "p99 of (a) minus p99 of nginx: $(awk -v a="$PIPE_P99" -v b="$NGX_P99" 'BEGIN {printf "%.3f", a-b}') ms (target <= 0.5)"
  echo "JSON access log to a file vs no access log: $(awk -v a="$LOG_RPS" -v b="$GW3_RPS" 'BEGIN {printf "%.3f", a/b}')×"
} | tee "$RAW/table.md"

# One million distinct limiter keys: a fresh gateway, one request per key (x-key header).
KEYS_DURATION=${KEYS_DURATION:-40s}
if [ "${1:-}" = "--smoke" ]; then KEYS_DURATION=1s; fi
GWK=$(port); gw_config "$GWK" 0
RUST_LOG=warn target/release/apigateway -c "$WORK/gw$GWK.yaml" & PIDS+=($!); GWK_PID=$!
wait_port "$GWK"
cat > "$WORK/keys.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/keyed/1", {["x-key"] = "k" .. counter})
end
LUA
RSS_BEFORE=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$GWK_PID/status")
wrk -t1 -c50 -d"$KEYS_DURATION" -s "$WORK/keys.lua" "http://127.0.0.1:$GWK/" > "$RAW/keys.txt"
SENT=$(awk '/requests in/ {print $1}' "$RAW/keys.txt")
RSS_AFTER=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$GWK_PID/status")
echo "Distinct limiter keys: $SENT requests with distinct keys; RSS $RSS_BEFORE MiB -> $RSS_AFTER MiB" | tee -a "$RAW/table.md"
