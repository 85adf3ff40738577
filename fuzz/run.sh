#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (30) each and prints executions, corpus size and the
# outcome; a crash leaves its input in fuzz/artifacts/TARGET/ and fails the run. Needs the
# nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
TARGETS=(${FUZZ_TARGETS:-config path_routing jwt json_transform aggregate_merge forwarded_for})
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  log="fuzz/target/$t.log"
  if cargo +nightly fuzz run -O "$t" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
      -timeout=10 -max_len=8192 > "$log" 2>&1; then
    outcome=clean
  else
    outcome="FAILED (see $log and fuzz/artifacts/$t/)"; status=1
  fi
  execs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}' | tail -1)
  # libFuzzer's last status line: coverage, features, corpus (inputs/bytes), peak RSS.
  stats=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9.]*[KMb]*' "$log" | tail -1)
  rss=$(grep -o 'rss: [0-9]*Mb' "$log" | tail -1)
  echo "$t: ${execs:-?} executions in ${FUZZ_SECONDS}s, ${stats:-no stats}, ${rss:-}: $outcome"
done
exit $status
