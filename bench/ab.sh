#!/usr/bin/env bash
# A/B of two gateway binaries on the same machine, same config, same upstream (nginx), in
# interleaved rounds: `bench/ab.sh OLD_BINARY NEW_BINARY` (e.g. a release build of the previous
# commit). Two routes: `plain` (prefix route, no auth) and `full` (HS256 auth + role + per-user
# rate limit with its headers, security headers on). Prints each round and, per route, the
# median req/s and proxy CPU µs per request of both sides and NEW/OLD.
# ROUNDS (9), DURATION (5s), CONNECTIONS (50), THREADS (gateway threads, 1), ROUTES
# ("plain full") override; OLD_EXTRA / NEW_EXTRA add top-level YAML to one side's config (the
# same binary twice with a setting on and off).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-9}; DURATION=${DURATION:-5s}; CONNECTIONS=${CONNECTIONS:-50}; THREADS=${THREADS:-1}
ROUTES=${ROUTES:-plain full}
OLD_EXTRA=${OLD_EXTRA:-}; NEW_EXTRA=${NEW_EXTRA:-}
install_missing wrk:wrk nginx:nginx openssl:openssl
bench_workdir

UP=$(port)
start_json_upstream "$UP"
wait_port "$UP"

declare -A GW_PID
start_gateway() { # NAME BINARY PORT
  local p=$3
  local extra=$OLD_EXTRA; [ "$1" = new ] && extra=$NEW_EXTRA
  { gateway_head "$1" "$p" "$THREADS"; echo "$extra"; cat; } > "$WORK/$1.yaml" <<YAML
routes:
  - {path: /api/users, service: users, security_headers: {enabled: false}}
  - {path: /api/full, service: users, auth: required, roles: [user], rate_limits: [per_user]}
YAML
  RUST_LOG=warn "$2" -c "$WORK/$1.yaml" 2>"$WORK/$1.log" & PIDS+=($!); GW_PID[$1]=$!
  wait_port "$p"
}
OLD_PORT=$(port); start_gateway old "$OLD" "$OLD_PORT"
NEW_PORT=$(port); start_gateway new "$NEW" "$NEW_PORT"

TOKEN=$(token HS256 "$SECRET")

# CPU ticks (user + system) of a process and all its threads.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

for r in $(seq 1 "$ROUNDS"); do
  for route in $ROUTES; do
    for side in old new; do
      p=$OLD_PORT; [ "$side" = new ] && p=$NEW_PORT
      if [ "$route" = full ]; then url="http://127.0.0.1:$p/api/full/42"; hdr=(-H "Authorization: Bearer $TOKEN")
      else url="http://127.0.0.1:$p/api/users/42"; hdr=(); fi
      before=$(cpu_ticks "${GW_PID[$side]}")
      out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${hdr[@]}" "$url")
      after=$(cpu_ticks "${GW_PID[$side]}")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      total=$(awk '/requests in/ {print $1}' <<<"$out")
      non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
      [ -n "$non2xx" ] && { echo "round $r $route $side: $non2xx non-2xx answers"; exit 1; }
      us=$(awk -v t=$((after - before)) -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
      echo "$route $side $rps $us" >> "$WORK/ab.txt"
      echo "round $r $route $side: $rps req/s, $us CPU µs/request"
    done
  done
done
for route in $ROUTES; do
  med() { awk -v r="$route" -v s="$1" -v c="$2" '$1==r && $2==s {print $c}' "$WORK/ab.txt" | median; }
  OLD_RPS=$(med old 3); NEW_RPS=$(med new 3); OLD_US=$(med old 4); NEW_US=$(med new 4)
  echo "$route: median old $OLD_RPS req/s $OLD_US µs, new $NEW_RPS req/s $NEW_US µs;" \
    "new/old req/s $(awk -v a="$NEW_RPS" -v b="$OLD_RPS" 'BEGIN {printf "%.3f", a/b}')×," \
    "CPU/request $(awk -v a="$NEW_US" -v b="$OLD_US" 'BEGIN {printf "%.3f", a/b}')×"
done
