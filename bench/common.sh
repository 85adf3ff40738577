# Helpers shared by the bench scripts (sourced, not run). Callers set `set -euo pipefail`.

# install_missing CMD:PACKAGE...  installs the packages whose command is missing (apt-get as
# root), or prints the command to run and exits.
install_missing() {
  local missing="" pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "missing:$missing — run: sudo apt-get install -y$missing"; exit 1
  fi
}

# A free loopback TCP port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something accepts on 127.0.0.1:$1, $2 tries 50 ms apart (default 200: 10 s; a
# process under valgrind starts slowly and needs more), else stops the bench.
wait_port() { for _ in $(seq 1 "${2:-200}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

# Median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# A work directory and a PIDS array whose processes are killed on exit.
bench_workdir() {
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# Starts the upstream every bench proxies to: nginx (one worker) on 127.0.0.1:$1 answering
# every request with a small JSON body; $2 (optional) holds extra `location` blocks matched
# before that default one. Needs bench_workdir; sets UP_PID.
start_json_upstream() {
  mkdir -p "$WORK/up"
  cat > "$WORK/up/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $WORK/up/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1;
    ${2:-}
    location / { default_type application/json; return 200 '{"id":42,"name":"demo user","ok":true}'; } } }
CONF
  nginx -c "$WORK/up/nginx.conf" & PIDS+=($!); UP_PID=$!
}

# write_big_json FILE: a JSON array of about 10 KB (10,311 bytes), for the compression and
# cache benches.
write_big_json() {
  python3 - "$1" <<'PY'
import json, sys
items = []
while len(json.dumps(items)) < 10240:
    i = len(items)
    items.append({"id": i, "name": f"item number {i}", "price": round(i * 1.37, 2), "tags": ["a", "b"]})
open(sys.argv[1], "w").write(json.dumps(items))
PY
}

# start_big_json_upstream PORT: start_json_upstream that also serves the ~10 KB JSON file
# at /big.json; waits until it listens.
start_big_json_upstream() {
  mkdir -p "$WORK/up"
  write_big_json "$WORK/up/big.json"
  start_json_upstream "$1" "location = /big.json { default_type application/json; alias $WORK/up/big.json; }"
  wait_port "$1"
}

# Tokens are minted here with openssl, independently of the gateway.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# A JWT for subject $2 (default bench-user) with role "user", valid for a day, signed with
# algorithm $1: "HS256 SECRET" (kid hs) or "RS256 PEM_FILE" (kid rs). Usage:
# token HS256 "$SECRET" [SUB], token RS256 tests/fixtures/keys/rsa.pem [SUB].
token() {
  local alg=$1 key=$2 sub=${3:-bench-user} kid payload input
  kid=hs; [ "$alg" = RS256 ] && kid=rs
  payload=$(printf '{"sub":"%s","role":"user","exp":%s}' "$sub" "$(( $(date +%s) + 86400 ))" | b64url)
  input="$(printf '{"alg":"%s","typ":"JWT","kid":"%s"}' "$alg" "$kid" | b64url).$payload"
  if [ "$alg" = RS256 ]; then
    printf '%s.%s' "$input" "$(printf %s "$input" | openssl dgst -sha256 -sign "$key" -binary | b64url)"
  else
    printf '%s.%s' "$input" "$(printf %s "$input" | openssl dgst -sha256 -hmac "$key" -binary | b64url)"
  fi
}

# The bench secret, and the head of a bench gateway config (no admin listener, no access
# log, service `users` on the upstream $UP, an HS256 key and a per-user limit that never
# trips): gateway_head NAME PORT THREADS; the caller appends its `routes:`.
SECRET=bench-secret-0123456789abcdef-0123456789
gateway_head() {
  cat <<YAML
server: {threads: $3, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
listen: ['127.0.0.1:$2']
admin: {listen: null}
access_log: {enabled: false}
services:
  users: {backends: ['127.0.0.1:$UP']}
auth:
  keys: [{kid: hs, alg: HS256, secret: $SECRET}]
rate_limits:
  max_keys: 2000000
  policies: {per_user: {requests: 1000000000, period: 1s, key: user}}
YAML
}

# add_service NAME: a second service on the same upstream ($UP), beside gateway_head's
# `users`, in $WORK/gw.yaml.
add_service() {
  sed -i "/^  users:/a\\  $1: {backends: ['127.0.0.1:$UP']}" "$WORK/gw.yaml"
}

# wrk_cpu NAME PID URL [HEADER]: one `wrk -t1` run (CONNECTIONS, DURATION) against URL; appends
# "NAME req/s CPU-µs-per-request" to $WORK/raw.txt, where CPU is the user + system time of
# process PID (all its threads) over the run divided by the requests completed, and prints
# it. A non-2xx answer aborts.
wrk_cpu() {
  local name=$1 pid=$2 url=$3 before after out non2xx rps total us
  local hdr=(); [ -n "${4:-}" ] && hdr=(-H "$4")
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${hdr[@]}" "$url")
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  [ -n "$non2xx" ] && { echo "$name: $non2xx non-2xx answers"; exit 1; }
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  us=$(awk -v t=$((after - before)) -v n="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  echo "$name $rps $us" >> "$WORK/raw.txt"
  echo "$name: $rps req/s, $us CPU µs/request"
}

# wrk_bench_setup [install specs...]: the start of a wrk CPU bench: ROUNDS (7), DURATION (5s)
# and CONNECTIONS (50) unless set, wrk/nginx/openssl (and the extra specs) installed, BIN the
# gateway binary (GW_BIN, else a fresh release build), and a work dir.
wrk_bench_setup() {
  ROUNDS=${ROUNDS:-7}; DURATION=${DURATION:-5s}; CONNECTIONS=${CONNECTIONS:-50}
  install_missing wrk:wrk nginx:nginx openssl:openssl "$@"
  [ -n "${GW_BIN:-}" ] || cargo build --release --bin apigateway >/dev/null
  BIN=${GW_BIN:-target/release/apigateway}
  bench_workdir
}

# wrk_rounds PID BASE_URL: ROUNDS interleaved rounds of wrk_cpu over TARGETS, target T at
# BASE_URL${URL[T]} (TARGETS and the associative array URL are the caller's).
wrk_rounds() {
  local r t
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r"
    for t in "${TARGETS[@]}"; do wrk_cpu "$t" "$1" "$2${URL[$t]}"; done
  done
}

# med NAME COLUMN: the median of a column of $WORK/raw.txt (2 req/s, 3 CPU µs) for NAME.
med() { awk -v t="$1" -v c="$2" '$1==t {print $c}' "$WORK/raw.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

# save_results SUFFIX: OUT=bench/results/<UTC>-SUFFIX with the raw rounds copied in.
save_results() {
  OUT=bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)-$1; mkdir -p "$OUT"; cp "$WORK/raw.txt" "$OUT/"
}

# cpu_table FIRST-COLUMN BASELINE TARGET...: the medians of each target and its CPU per
# request against BASELINE's, as a Markdown table, also written to $OUT/table.md.
cpu_table() {
  local first=$1 base=$2 t; shift 2
  {
    echo "| $first | req/s | CPU µs/req | CPU vs $base |"
    echo "|---|---:|---:|---:|"
    for t in "$@"; do
      echo "| $t | $(med "$t" 2) | $(med "$t" 3) | $(ratio "$(med "$t" 3)" "$(med "$base" 3)")× |"
    done
  } | tee "$OUT/table.md"
}

# dump_ir PID PREFIX: dumps the callgrind counters of process PID (output prefix PREFIX),
# waits for the new dump file and prints its total instructions (Ir); the dump also zeroes
# the counters.
dump_ir() {
  local before file
  before=$(ls "$2".* 2>/dev/null | wc -l)
  callgrind_control -d "$1" >/dev/null
  for _ in $(seq 1 100); do
    [ "$(ls "$2".* 2>/dev/null | wc -l)" -gt "$before" ] && break; sleep 0.1
  done
  file=$(ls "$2".* | sort -V | tail -1)
  for _ in $(seq 1 100); do grep -q '^totals:' "$file" && break; sleep 0.1; done
  awk '/^totals:/ {print $2}' "$file"
}

# The global and defaults sections of every HAProxy target: one thread (like nginx's one
# worker), plain HTTP mode, timeouts far above any bench run's latency.
HAPROXY_COMMON='global
  nbthread 1
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s'
