#!/usr/bin/env bash
# Measures how long `hearth serve` takes from exec to a 200 from /readyz, with the embedded
# PostgreSQL: first on an empty data dir (initdb included), then on the existing one.
# Usage: scripts/coldstart.sh [path/to/hearth]   (default: target/release/hearth)
set -euo pipefail
bin=${1:-target/release/hearth}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
trap 'rm -rf "$dir"' EXIT

measure() {
  local start end pid
  start=$(date +%s%N)
  env -u DATABASE_URL HEARTH_DATA_DIR="$dir" HEARTH_BIND="127.0.0.1:$port" RUST_LOG=warn "$bin" serve &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.01; done
  end=$(date +%s%N)
  kill -INT "$pid"
  wait "$pid"
  echo "$1: $(( (end - start) / 1000000 )) ms to /readyz"
}

measure "first start (initdb)"
measure "second start"
measure "third start"
