#!/usr/bin/env bash
# Throughput of 1, 2 and 4 `hearth-bench serve` instances on one database and one machine, and the
# W5 fan-out with its receivers spread over two instances (a message sent on instance A reaching
# sockets on instance B through the channel layer).
#
#   bench/scale.sh                          # W1 page, 10 s per instance count, then W5 across two
#   COUNTS="1 2" DURATION=5 bench/scale.sh
#
# Every instance serves the W1 page (`/bench/page`: one query + a template); one `wrk` per
# instance drives it at CONNS/N connections for DURATION seconds, all at once, and the request
# rates are summed. The load clients share the machine's cores with the servers and Postgres:
# on a 2-core machine more instances share the same two cores, so this measures what the
# coordination costs (one database, one channel layer), not how far more machines would go.
# Writes bench/results/scale-<UTC timestamp>.json and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS="${COUNTS:-1 2 4}"; DURATION="${DURATION:-10}"; CONNS="${CONNS:-64}"; BASE_PORT="${BASE_PORT:-8300}"
DATABASE_URL="${HEARTH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hearth_bench}"
HEARTH=target/release/hearth-bench
OUT="bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ).json"
LOGS="$(mktemp -d)"
[ -x "$HEARTH" ] || { echo "bench/scale.sh: build first: cargo build --release -p hearth-bench" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench/scale.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
psql -qtAX "${DATABASE_URL%/*}/postgres" -c "SELECT 1 FROM pg_database WHERE datname = '${DATABASE_URL##*/}'" | grep -q 1 \
  || psql -qX "${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE ${DATABASE_URL##*/}" >/dev/null

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done; PIDS=(); }
trap stop_all EXIT

start() { # count
  for i in $(seq 0 $(($1 - 1))); do
    HEARTH_WS_MAX_PER_ADDRESS=0 HEARTH_BIND="127.0.0.1:$((BASE_PORT + i))" \
      HEARTH_DB_MAX_CONNECTIONS=$((20 / $1 + 2)) DATABASE_URL="$DATABASE_URL" RUST_LOG=warn \
      setsid "$HEARTH" serve >>"$LOGS/hearth-$i.log" 2>&1 </dev/null &
    PIDS+=("$!")
  done
  for i in $(seq 0 $(($1 - 1))); do
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$((BASE_PORT + i))/bench/page" >/dev/null && break; sleep 0.2; done
  done
}

results="["
for n in $COUNTS; do
  echo "== $n instance(s): starting"
  start "$n"
  per=$((CONNS / n)); [ "$per" -ge 1 ] || per=1
  # Wait for the load clients only (the servers are background jobs too).
  clients=()
  for i in $(seq 0 $((n - 1))); do wrk -t1 -c"$per" -d3s "http://127.0.0.1:$((BASE_PORT + i))/bench/page" >/dev/null 2>&1 & clients+=("$!"); done
  wait "${clients[@]}"
  echo "== $n instance(s): $CONNS connections for ${DURATION}s"
  clients=()
  for i in $(seq 0 $((n - 1))); do
    wrk -t1 -c"$per" -d"${DURATION}s" --latency "http://127.0.0.1:$((BASE_PORT + i))/bench/page" >"$LOGS/wrk-$n-$i.txt" 2>&1 &
    clients+=("$!")
  done
  wait "${clients[@]}"
  total=$(awk '/Requests\/sec/ {s += $2} END {printf "%.0f", s}' "$LOGS"/wrk-"$n"-*.txt)
  p99=$(awk '/ 99%/ {print $2}' "$LOGS"/wrk-"$n"-*.txt | sort -V | tail -1)
  echo "   $total req/s (worst instance p99 $p99)"
  results="$results{\"instances\":$n,\"req_per_s\":$total,\"worst_p99\":\"$p99\"},"
  stop_all
done

echo "== W5 across two instances: receivers on both, sender on the first"
start 2
w5=$("$HEARTH" bench ws chat --url "ws://127.0.0.1:$BASE_PORT/ws/chat/bench/,ws://127.0.0.1:$((BASE_PORT + 1))/ws/chat/bench/" \
  --clients 1000 --messages 200 --rate 20 2>"$LOGS/w5.err" | tail -1)
echo "   $w5"
stop_all
printf '{"w1":%s],"w5_two_instances":%s,"duration_s":%s,"connections":%s}\n' "${results%,}" "${w5:-null}" "$DURATION" "$CONNS" > "$OUT"
echo "wrote $OUT"
