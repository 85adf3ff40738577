#!/usr/bin/env bash
# Consumers (issue #17): the cost of an API key and of a cached Basic credential against the
# same route without auth, and of a consumer quota on Redis against a Redis rate limit.
# Interleaved rounds of `wrk -t1 -c50` against one gateway per store (threads 1), CPU µs per
# request of the gateway process from /proc/PID/stat; medians.
#   open   prefix route, no auth                          (local gateway)
#   key    same route, `auth_methods: [api_key]`          (local gateway)
#   basic  same route, `auth_methods: [basic]`, cached    (local gateway)
#   rl     API key + a per-consumer Redis rate limit that never trips   (Redis gateway)
#   quota  API key + a per-consumer Redis day quota that never runs out (Redis gateway)
# ROUNDS (7), DURATION (5s), CONNECTIONS (50) override. Results in bench/results/<UTC>-consumers.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ROUNDS=${ROUNDS:-7}; DURATION=${DURATION:-5s}; CONNECTIONS=${CONNECTIONS:-50}
install_missing wrk:wrk nginx:nginx redis-server:redis-server openssl:openssl
cargo build --release --bin apigateway >/dev/null
BIN=target/release/apigateway
bench_workdir

UP=$(port); start_json_upstream "$UP"; wait_port "$UP"
RPORT=$(port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!)
wait_port "$RPORT"

# Keys minted here, hashed with sha256sum; the Basic hash by the gateway's own tool.
KEY=bench-key-$(openssl rand -hex 16)
KEY_HASH="sha256:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
PW_HASH=$(printf 'bench-password\n' | "$BIN" hash-password)
BASIC="Basic $(printf %s 'bench@example.com:bench-password' | openssl base64 -A)"

head_of() { # NAME PORT
  cat <<YAML
server: {threads: 1, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
listen: ['127.0.0.1:$2']
admin: {listen: null}
access_log: {enabled: false}
services:
  users: {backends: ['127.0.0.1:$UP']}
consumers:
  - {id: bench-app, groups: [bench], api_keys: [{hash: '$KEY_HASH'}], basic: {username: bench@example.com, password_hash: '$PW_HASH'}}
YAML
}
LOCAL=$(port)
{ head_of local "$LOCAL"; cat; } > "$WORK/local.yaml" <<YAML
routes:
  - {path: /api/open, service: users}
  - {path: /api/key, service: users, auth: required, auth_methods: [api_key]}
  - {path: /api/basic, service: users, auth: required, auth_methods: [basic]}
YAML
REDIS=$(port)
{ head_of redis "$REDIS"; cat; } > "$WORK/redis.yaml" <<YAML
  - {id: quota-app, api_keys: [{hash: 'sha256:$(printf %s "q-$KEY" | sha256sum | cut -d' ' -f1)'}], quotas: [{requests: 1000000000, period: day}]}
rate_limits:
  store: redis
  redis: {url: 'redis://127.0.0.1:$RPORT/', timeout: 200ms}
  on_store_error: deny
  policies: {per_consumer: {requests: 1000000000, period: 1s, key: consumer}}
routes:
  - {path: /api/rl, service: users, auth: required, auth_methods: [api_key], rate_limits: [per_consumer]}
  - {path: /api/quota, service: users, auth: required, auth_methods: [api_key], rate_limits: []}
YAML
declare -A PID
for g in local redis; do
  RUST_LOG=warn "$BIN" -c "$WORK/$g.yaml" 2>"$WORK/$g.log" & PIDS+=($!); PID[$g]=$!
done
wait_port "$LOCAL"; wait_port "$REDIS"

declare -A URL=( [open]="http://127.0.0.1:$LOCAL/api/open/42" [key]="http://127.0.0.1:$LOCAL/api/key/42"
                 [basic]="http://127.0.0.1:$LOCAL/api/basic/42" [rl]="http://127.0.0.1:$REDIS/api/rl/42"
                 [quota]="http://127.0.0.1:$REDIS/api/quota/42" )
declare -A HDR=( [open]="X-Bench: 1" [key]="apikey: $KEY" [basic]="Authorization: $BASIC"
                 [rl]="apikey: $KEY" [quota]="apikey: q-$KEY" )
declare -A GW=( [open]=local [key]=local [basic]=local [rl]=redis [quota]=redis )
TARGETS=(open key basic rl quota)
for t in "${TARGETS[@]}"; do
  curl -sf -o /dev/null -H "${HDR[$t]}" "${URL[$t]}" || { echo "$t: warm-up request failed"; exit 1; }
done
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for t in "${TARGETS[@]}"; do
    wrk_cpu "$t" "${PID[${GW[$t]}]}" "${URL[$t]}" "${HDR[$t]}"
  done
done
save_results consumers
{
  echo "| target | req/s | CPU µs/req | CPU vs reference |"
  echo "|---|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    ref=open; case $t in rl) ref=rl ;; quota) ref=rl ;; esac
    echo "| $t | $(med "$t" 2) | $(med "$t" 3) | $(ratio "$(med "$t" 3)" "$(med "$ref" 3)")× $ref |"
  done
} | tee "$OUT/table.md"
