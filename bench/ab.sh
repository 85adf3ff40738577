#!/usr/bin/env bash
# A/B of two gateway binaries on the same machine, same config, same upstream (nginx), in
# interleaved rounds: `bench/ab.sh OLD_BINARY NEW_BINARY` (e.g. a release build of the previous
# commit). Prints each round and the median req/s of both and NEW/OLD. ROUNDS (9), DURATION
# (5s), CONNECTIONS (50), THREADS (gateway threads, 1) override.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-9}; DURATION=${DURATION:-5s}; CONNECTIONS=${CONNECTIONS:-50}; THREADS=${THREADS:-1}
install_missing wrk:wrk nginx:nginx
bench_workdir

UP=$(port)
start_json_upstream "$UP"
wait_port "$UP"

start_gateway() { # NAME BINARY PORT
  local p=$3
  cat > "$WORK/$1.yaml" <<YAML
server: {threads: $THREADS, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
listen: ['127.0.0.1:$p']
admin: {listen: null}
access_log: {enabled: false}
services:
  users: {backends: ['127.0.0.1:$UP']}
routes:
  - {path: /api/users, service: users}
YAML
  RUST_LOG=warn "$2" -c "$WORK/$1.yaml" 2>"$WORK/$1.log" & PIDS+=($!)
  wait_port "$p"
}
OLD_PORT=$(port); start_gateway old "$OLD" "$OLD_PORT"
NEW_PORT=$(port); start_gateway new "$NEW" "$NEW_PORT"

for r in $(seq 1 "$ROUNDS"); do
  for side in old new; do
    p=$OLD_PORT; [ "$side" = new ] && p=$NEW_PORT
    rps=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$p/api/users/42" | awk '/Requests\/sec/ {print $2}')
    echo "$side $rps" >> "$WORK/ab.txt"
    echo "round $r $side: $rps req/s"
  done
done
OLD_MED=$(awk '$1=="old" {print $2}' "$WORK/ab.txt" | median)
NEW_MED=$(awk '$1=="new" {print $2}' "$WORK/ab.txt" | median)
echo "median old $OLD_MED req/s, new $NEW_MED req/s, new/old $(awk -v a="$NEW_MED" -v b="$OLD_MED" 'BEGIN {printf "%.3f", a/b}')×"
