#!/usr/bin/env bash
# gRPC (issue #24): unary calls (`demo.Greeter/SayHello`, a 12-byte request) through bare
# Pingora proxying gRPC (examples/bare_proxy.rs with BARE_H2=1: h2c in, h2c out; `bare` with
# Pingora's default of one stream per upstream connection, `bare-mux` with 100 like the gateway,
# `bare-local` also on a current-thread runtime like the gateway's default `work_stealing: false`),
# the gateway's `protocol: grpc` route (threads 1, defaults: security headers, gRPC checks,
# metrics), nginx (`grpc_pass`, one worker) and HAProxy (`proto h2` both sides, one thread),
# all in front of the same tonic greeter, whose replies are the same bytes behind every proxy
# (`demo_services --greeter` leaves out the request metadata the tests' greeter echoes: the
# gateway forwards more headers, and longer replies cross h2's 256-byte DATA chaining threshold,
# which costs a write per reply). `h2load -c 10 -m 10` for DURATION per target,
# interleaved over ROUNDS (7); medians of calls/s and each proxy's CPU µs per call (user +
# system time of the process over the run / calls done). Then instructions per call for
# bare-local and the gateway under callgrind (marginal: (Ir(2N) - Ir(N)) / N, REQUESTS=N, 2000).
# Target: the gateway ≤ 1.15x bare Pingora's CPU per call; bare-local is the like-for-like one
# (all bare targets are reported). Results in bench/results/<UTC>-grpc.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ROUNDS=${ROUNDS:-7}; DURATION=${DURATION:-5}; REQUESTS=${REQUESTS:-2000}
install_missing h2load:nghttp2-client nginx:nginx haproxy:haproxy valgrind:valgrind python3:python3
# Two builds: an example pulls in the dev-dependencies, whose features must not leak into the
# gateway binary that is measured.
cargo build --release --example bare_proxy --example demo_services >/dev/null
cargo build --release --bin apigateway >/dev/null
BIN=target/release/apigateway
bench_workdir

UP=$(port)
target/release/examples/demo_services --greeter "127.0.0.1:$UP" >/dev/null & PIDS+=($!)
wait_port "$UP"
# HelloRequest {name: "bench"} behind its 5-byte prefix.
printf '\0\0\0\0\007\012\005bench' > "$WORK/call.bin"

BARE=$(port)
BARE_H2=1 BARE_LISTEN=127.0.0.1:$BARE BARE_UPSTREAM=127.0.0.1:$UP \
  target/release/examples/bare_proxy 2>"$WORK/bare.log" & PIDS+=($!); BARE_PID=$!
MUX=$(port)
BARE_H2=1 BARE_H2_STREAMS=100 BARE_LISTEN=127.0.0.1:$MUX BARE_UPSTREAM=127.0.0.1:$UP \
  target/release/examples/bare_proxy 2>"$WORK/mux.log" & PIDS+=($!); MUX_PID=$!
# bare-mux on a current-thread runtime, as the gateway runs by default: bare Pingora set up
# like the gateway.
LOCAL=$(port)
BARE_NO_STEAL=1 BARE_H2=1 BARE_H2_STREAMS=100 BARE_LISTEN=127.0.0.1:$LOCAL BARE_UPSTREAM=127.0.0.1:$UP \
  target/release/examples/bare_proxy 2>"$WORK/local.log" & PIDS+=($!); LOCAL_PID=$!

GW=$(port)
cat > "$WORK/gw.yaml" <<YAML
server: {threads: 1, pid_file: $WORK/gw.pid, upgrade_sock: $WORK/gw.sock}
listen: ['127.0.0.1:$GW']
h2c: true
admin: {listen: null}
access_log: {enabled: false}
services:
  greeter: {backends: ['127.0.0.1:$UP'], http2: true}
routes:
  - {path: /demo.Greeter/, service: greeter, strip_prefix: false, protocol: grpc}
YAML
RUST_LOG=warn "$BIN" -c "$WORK/gw.yaml" 2>"$WORK/gw.log" & PIDS+=($!); GW_PID=$!

NGX=$(port)
mkdir -p "$WORK/ngx"
cat > "$WORK/ngx/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $WORK/ngx/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off;
  upstream greeter { server 127.0.0.1:$UP; keepalive 32; }
  server { listen 127.0.0.1:$NGX http2; http2_max_requests 1000000; keepalive_requests 1000000;
    location / { grpc_pass grpc://greeter; } } }
CONF
nginx -c "$WORK/ngx/nginx.conf" & PIDS+=($!); NGX_PID=$!

HAP=$(port)
cat > "$WORK/haproxy.cfg" <<CONF
$HAPROXY_COMMON
frontend f
  bind 127.0.0.1:$HAP proto h2
  default_backend b
backend b
  server s 127.0.0.1:$UP proto h2
CONF
haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" & PIDS+=($!); HAP_PID=$!
for p in $BARE $MUX $LOCAL $GW $NGX $HAP; do wait_port "$p"; done

declare -A PORT=([bare]=$BARE [bare-mux]=$MUX [bare-local]=$LOCAL [gateway]=$GW [nginx]=$NGX [haproxy]=$HAP)
declare -A PID=([bare]=$BARE_PID [bare-mux]=$MUX_PID [bare-local]=$LOCAL_PID [gateway]=$GW_PID [nginx]=$NGX_PID [haproxy]=$HAP_PID)
TARGETS=(bare bare-mux bare-local gateway nginx haproxy)

# Every proxy answers the call with grpc-status 0 (in the trailers).
for t in "${TARGETS[@]}"; do
  status=$(curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$WORK/call.bin" -D - -o /dev/null "http://127.0.0.1:${PORT[$t]}/demo.Greeter/SayHello" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "grpc-status" {print $2}')
  [ "$status" = 0 ] || { echo "$t: grpc-status '$status'"; exit 1; }
done

# h2load_calls PORT DURATION|-n N: unary calls, 10 connections x 10 streams; prints calls done.
h2load_calls() {
  local out done
  out=$(h2load -c 10 -m 10 -t 1 "${@:2}" -d "$WORK/call.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://127.0.0.1:$1/demo.Greeter/SayHello")
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  # Run in $(...): a failure is reported as the count "failed", which the caller's awk cannot
  # divide by.
  if ! grep -q " 0 failed, 0 errored, 0 timeout" <<<"$out" || ! grep -q " 0 4xx, 0 5xx" <<<"$out"; then
    echo "h2load: failed calls or non-2xx answers:" >&2; echo "$out" >&2; echo failed; return
  fi
  echo "$done"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  for t in "${TARGETS[@]}"; do
    before=$(awk '{print $14 + $15}' "/proc/${PID[$t]}/stat")
    calls=$(h2load_calls "${PORT[$t]}" -D "$DURATION")
    [ "$calls" = failed ] && exit 1
    after=$(awk '{print $14 + $15}' "/proc/${PID[$t]}/stat")
    awk -v t="$t" -v n="$calls" -v d="$DURATION" -v c=$((after - before)) -v hz="$(getconf CLK_TCK)" \
      'BEGIN {printf "%s %.0f %.2f\n", t, n / d, c / hz * 1e6 / n}' | tee -a "$WORK/raw.txt"
  done
done
save_results grpc
cpu_table target bare "${TARGETS[@]}"
echo "gateway vs bare-mux: $(ratio "$(med gateway 3)" "$(med bare-mux 3)")× CPU per call" | tee -a "$OUT/table.md"
echo "gateway vs bare-local: $(ratio "$(med gateway 3)" "$(med bare-local 3)")× CPU per call" | tee -a "$OUT/table.md"

# Instructions per call, bare-local and gateway, under callgrind.
for t in bare-local gateway; do kill "${PID[$t]}"; done
CG=(valgrind --tool=callgrind --instr-atstart=no --dump-instr=no)
BARE_NO_STEAL=1 BARE_H2=1 BARE_H2_STREAMS=100 BARE_LISTEN=127.0.0.1:$LOCAL BARE_UPSTREAM=127.0.0.1:$UP \
  "${CG[@]}" --callgrind-out-file="$WORK/cg.bare" target/release/examples/bare_proxy 2>>"$WORK/local.log" & PIDS+=($!); CG_BARE=$!
RUST_LOG=warn "${CG[@]}" --callgrind-out-file="$WORK/cg.gw" "$BIN" -c "$WORK/gw.yaml" 2>>"$WORK/gw.log" & PIDS+=($!); CG_GW=$!
for p in $LOCAL $GW; do wait_port "$p" 1200; done
{
  echo
  echo "| target | instructions per call |"
  echo "|---|---:|"
  for t in bare-local gateway; do
    if [ "$t" = bare-local ]; then pid=$CG_BARE; out="$WORK/cg.bare"; else pid=$CG_GW; out="$WORK/cg.gw"; fi
    h2load_calls "${PORT[$t]}" -n 500 >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    h2load_calls "${PORT[$t]}" -n "$REQUESTS" >/dev/null
    ir1=$(dump_ir "$pid" "$out")
    h2load_calls "${PORT[$t]}" -n $((2 * REQUESTS)) >/dev/null
    ir2=$(dump_ir "$pid" "$out")
    echo "| $t | $(awk -v a="$ir1" -v b="$ir2" -v n="$REQUESTS" 'BEGIN {printf "%d", (b - a) / n}') |"
  done
} | tee -a "$OUT/table.md"
kill -9 "$CG_BARE" "$CG_GW" 2>/dev/null || true
