#!/usr/bin/env bash
# HTTPS throughput, side by side, interleaved rounds: the gateway vs nginx, both terminating
# TLS with the same certificate (ECDSA P-256) and proxying to the same nginx upstream over
# keep-alive, one worker thread each. h2load drives HTTP/1.1 (--h1) and HTTP/2 (ALPN h2);
# connections are long-lived, so this measures TLS records + proxying, not handshakes.
#   gw-h1 / nginx-h1      HTTP/1.1 over TLS, 50 connections
#   gw-h2 / nginx-h2      HTTP/2 over TLS, 50 connections, 1 stream each
#   gw-h2m / nginx-h2m    HTTP/2 over TLS, 10 connections, 10 concurrent streams each
# Usage: bench/tls.sh   (env: ROUNDS, DURATION seconds)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
. bench/common.sh
install_missing h2load:nghttp2-client nginx:nginx-light openssl:openssl

cargo build --release --bin apigateway >/dev/null
bench_workdir
UP=$(port); NGX=$(port); GW=$(port); GWP=$(port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

start_json_upstream "$UP"
mkdir -p "$WORK/ngx"
cat > "$WORK/ngx/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $WORK/ngx/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location /api/users/ { proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$WORK/gw.yaml" <<CONF
server: {threads: 1, pid_file: $WORK/gw.pid, upgrade_sock: $WORK/gw.sock}
access_log: {enabled: false}
admin: {listen: null}
listen: ['127.0.0.1:$GWP']
tls:
  listen: ['127.0.0.1:$GW']
  certificates: [{cert: $WORK/cert.pem, key: $WORK/key.pem}]
services:
  users: {backends: ['127.0.0.1:$UP']}
routes:
  - {path: /api/users, service: users}
CONF

nginx -c "$WORK/ngx/nginx.conf" & PIDS+=($!)
RUST_LOG=warn target/release/apigateway -c "$WORK/gw.yaml" & PIDS+=($!)
for p in $UP $NGX $GW; do wait_port "$p"; done
for p in $NGX $GW; do
  code=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{http_version}' "https://127.0.0.1:$p/api/users/42")
  [ "$code" = "200 2" ] || { echo "port $p answered $code"; exit 1; }
done

declare -A ARGS=( [gw-h1]="--h1 -c50 -m1" [nginx-h1]="--h1 -c50 -m1" [gw-h2]="-c50 -m1" [nginx-h2]="-c50 -m1"
                  [gw-h2m]="-c10 -m10" [nginx-h2m]="-c10 -m10" )
declare -A PORT=( [gw-h1]=$GW [gw-h2]=$GW [gw-h2m]=$GW [nginx-h1]=$NGX [nginx-h2]=$NGX [nginx-h2m]=$NGX )
TARGETS=(gw-h1 nginx-h1 gw-h2 nginx-h2 gw-h2m nginx-h2m)
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)-tls
RAW="bench/results/$STAMP"
mkdir -p "$RAW"
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    h2load ${ARGS[$t]} -t1 -D "$DURATION" --warm-up-time=1 "https://127.0.0.1:${PORT[$t]}/api/users/42" > "$RAW/$t.round$r.txt"
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$RAW/$t.round$r.txt")
    ok=$(awk '/^requests:/ {print $8}' "$RAW/$t.round$r.txt")
    mean=$(awk '/^time for request:/ {print $6}' "$RAW/$t.round$r.txt")
    echo "$t $rps $mean $ok" >> "$RAW/summary.txt"
    echo "round $r $t: $rps req/s, mean $mean, $ok succeeded"
  done
done
{
  echo "Date: $STAMP · $(nproc) cores · h2load -t1 -D ${DURATION}s · $ROUNDS interleaved rounds · medians"
  echo
  echo "| mode | gateway req/s | nginx req/s | gateway / nginx |"
  echo "|---|---:|---:|---:|"
  for m in h1 h2 h2m; do
    g=$(awk -v t="gw-$m" '$1==t {print $2}' "$RAW/summary.txt" | median)
    n=$(awk -v t="nginx-$m" '$1==t {print $2}' "$RAW/summary.txt" | median)
    echo "| $m | $g | $n | $(awk -v a="$g" -v b="$n" 'BEGIN {printf "%.2f", a/b}')× |"
  done
} | tee "$RAW/table.md"
