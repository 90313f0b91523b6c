#!/usr/bin/env bash
# bench/delay.sh -- W1, W4, W5 and W6 with PostgreSQL a network hop away (issue #35).
#
#   bench/delay.sh                                   # direct, then 0, 0.5 and 1 ms each way
#   DELAYS="direct 1ms" DURATION=3s bench/delay.sh   # a smoke run
#
# Every figure of bench/run.sh has Hearth and PostgreSQL on one machine over loopback. A cloud
# database is a hop away, and these machines' kernel has no netem, so the delay is a proxy:
# `hearth-bench bench db-delay` (bench/src/db_delay.rs) holds every chunk DELAY in each direction
# and counts round trips (turns: client bytes after server bytes on a connection). For each side
# of DELAYS ("direct" is no proxy at all, "0ms" is the proxy's own cost): the measured delay
# (`bench db-rtt`, sequential SELECT 1), then on a fresh `hearth-bench serve` whose DATABASE_URL
# goes through the proxy: W1 (wrk c=CONNS on /bench/page, then on /bench/page-pipelined), round trips per request of real pages
# (one request at a time, less the background's own turns over as long idle), W5 and W6 with the
# Rust clients (turns per message sent), then W4 (`bench jobs both`, turns per job).
# Results: $OUTDIR/delay.json (one JSON line per measurement); BENCHMARKS.md gets its section
# (bench/scripts/delay_report.py, through report.py) and bench/delay.svg.
#
# Knobs (env): DELAYS="direct 0ms 0.5ms 1ms" DURATION=10s WARMUP=3s TRIPS=3s CONNS=64 THREADS=2
#   WS_CLIENTS=1000 WS_MESSAGES=200 WS_RATE=20 SSE_CLIENTS=500 SSE_MESSAGES=100 SSE_RATE=10 JOBS_N=20000 LATENCY_N=200
#   HEARTH_PORT=8100 PROXY_PORT=6543 STATS_PORT=6544 PG=127.0.0.1:5432 DB=hearth_bench
#   SKIP_BUILD=1 NO_REPORT=1 OUTDIR=bench/results/<UTC timestamp>-delay NOTE="..."
set -uo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"

DELAYS="${DELAYS:-direct 0ms 0.5ms 1ms}"
DURATION="${DURATION:-10s}"; DURATION="${DURATION%s}"
WARMUP="${WARMUP:-3s}"; WARMUP="${WARMUP%s}"
TRIPS="${TRIPS:-3s}"; TRIPS="${TRIPS%s}"
CONNS="${CONNS:-64}"; THREADS="${THREADS:-2}"
WS_CLIENTS="${WS_CLIENTS:-1000}"; WS_MESSAGES="${WS_MESSAGES:-200}"; WS_RATE="${WS_RATE:-20}"
SSE_CLIENTS="${SSE_CLIENTS:-500}"; SSE_MESSAGES="${SSE_MESSAGES:-100}"; SSE_RATE="${SSE_RATE:-10}"
JOBS_N="${JOBS_N:-20000}"; LATENCY_N="${LATENCY_N:-200}"
HEARTH_PORT="${HEARTH_PORT:-8100}"; PROXY_PORT="${PROXY_PORT:-6543}"; STATS_PORT="${STATS_PORT:-6544}"
PG="${PG:-127.0.0.1:5432}"; DB="${DB:-hearth_bench}"
export NOTE="${NOTE:-}"
HEARTH="$ROOT/target/release/hearth-bench"
OUTDIR="${OUTDIR:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)-delay}"
mkdir -p "$OUTDIR/logs"
LOG="$OUTDIR/logs/run.log"; OUT="$OUTDIR/delay.json"
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$LOG" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STARTED=()
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return 0; }; sleep 0.2; done
  kill -KILL -- "-$1" 2>/dev/null; wait "$1" 2>/dev/null
}
cleanup() { for p in "${STARTED[@]}"; do stop_group "$p"; done; STARTED=(); }
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM
listening() { ss -ltn "sport = :$1" | grep -q LISTEN; }
for p in "$HEARTH_PORT" "$PROXY_PORT" "$STATS_PORT"; do
  listening "$p" && { say "port $p is busy: stop what listens there or set its knob"; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release -p hearth-bench"
  cargo build --release -p hearth-bench >"$OUTDIR/logs/cargo.log" 2>&1 || { say "build failed: $OUTDIR/logs/cargo.log"; exit 1; }
fi
[ -x "$HEARTH" ] || { say "no $HEARTH"; exit 1; }
DIRECT_URL="postgres://postgres@$PG/$DB"
if [ "$(psql -qtAX "postgres://postgres@$PG/postgres" -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
  psql -qtAX "postgres://postgres@$PG/postgres" -c "CREATE DATABASE $DB" || { say "cannot create $DB"; exit 1; }
fi
python3 - "$OUTDIR/meta.json" <<'EOF'
import json, os, subprocess, sys
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
json.dump({"commit": sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -- src bench Cargo.lock") else ""),
           "when": sh("date -u +%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(), "note": os.environ.get("NOTE", ""),
           "kernel": sh("uname -r"), "postgres": sh("psql -qtAX -h 127.0.0.1 -U postgres -c 'SHOW server_version'")},
          open(sys.argv[1], "w"), indent=1)
EOF

# ---- the proxy, its counters, the server ------------------------------------------------------
PROXY_PID=""; SERVER_PID=""
start_proxy() { # delay
  setsid "$HEARTH" bench db-delay --listen "127.0.0.1:$PROXY_PORT" --upstream "$PG" --delay "$1" \
    --stats "127.0.0.1:$STATS_PORT" >>"$OUTDIR/logs/proxy.log" 2>&1 </dev/null &
  PROXY_PID=$!; STARTED+=("$PROXY_PID")
  for _ in $(seq 1 50); do listening "$STATS_PORT" && return 0; sleep 0.1; done
  say "the proxy did not start (see $OUTDIR/logs/proxy.log)"; return 1
}
# The proxy's counters, one JSON line ({} when there is no proxy).
counters() {
  [ -n "$PROXY_PID" ] || { echo '{}'; return; }
  exec 3<>"/dev/tcp/127.0.0.1/$STATS_PORT" && cat <&3; exec 3<&-
}
turns() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("turns", 0))' "$1"; }
start_server() {
  env HEARTH_WS_MAX_PER_ADDRESS=0 HEARTH_BIND="127.0.0.1:$HEARTH_PORT" DATABASE_URL="$URL" \
    HEARTH_DATA_DIR="$OUTDIR/hearth-data" RUST_LOG=warn setsid "$HEARTH" serve >>"$OUTDIR/logs/hearth.log" 2>&1 </dev/null &
  SERVER_PID=$!; STARTED+=("$SERVER_PID")
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$HEARTH_PORT/bench/page" && return 0; sleep 0.2; done
  say "the server did not answer (see $OUTDIR/logs/hearth.log)"; return 1
}
stop() { # pid variable name
  local pid="${!1}"; [ -n "$pid" ] || return 0
  stop_group "$pid"; printf -v "$1" '%s' ""
}
record() { # side workload json [extra json fields]
  python3 - "$@" >>"$OUT" <<'EOF'
import json, sys
side, workload, result = sys.argv[1], sys.argv[2], sys.argv[3]
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
try:
    result = json.loads(result)
except ValueError:
    result = None
print(json.dumps({"side": side, "workload": workload, "result": result, **extra}))
EOF
  tail -1 "$OUT" | cut -c1-200 | tee -a "$LOG" >&2
}
# Round trips a measured stretch cost beyond the background's own (the same length idle before it).
extra_turns() { # before after idle_turns_per_s seconds
  python3 -c 'import sys; b,a,i,s=map(float,sys.argv[1:]); print(max(0.0, a-b-i*s))' "$(turns "$1")" "$(turns "$2")" "$3" "$4"
}
idle_rate() {
  local a b; a=$(counters); sleep "$TRIPS"; b=$(counters)
  python3 -c 'import sys; print((float(sys.argv[2])-float(sys.argv[1]))/float(sys.argv[3]))' "$(turns "$a")" "$(turns "$b")" "$TRIPS"
}

# ---- one side: a delay ----------------------------------------------------------------------------
pages() { # side: round trips per request, one request at a time
  local idle path a b out n t
  idle=$(idle_rate)
  for path in /bench/page /bench/page-pipelined / /posts /healthz; do
    a=$(counters)
    out=$(wrk -t1 -c1 -d"${TRIPS}s" -s "$BENCH/clients/wrk_json.lua" "http://127.0.0.1:$HEARTH_PORT$path" 2>&1 | grep '^{' | tail -1)
    b=$(counters)
    n=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "${out:-{\"requests\":0\}}")
    t=$(extra_turns "$a" "$b" "$idle" "$TRIPS")
    record "$1" "trips" "$out" "{\"path\":\"$path\",\"requests\":$n,\"turns\":$t,\"idle_turns_per_s\":$idle}"
  done
}
w1() { # side workload path: W1's page through the pool (w1) or the pipeline (w1p)
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$HEARTH_PORT$3" >/dev/null 2>&1
  record "$1" "$2" "$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$BENCH/clients/wrk_json.lua" \
    "http://127.0.0.1:$HEARTH_PORT$3" 2>&1 | grep '^{' | tail -1)"
}
w5() {
  local a b out; a=$(counters)
  out=$(timeout 300 "$HEARTH" bench ws chat --url "ws://127.0.0.1:$HEARTH_PORT/ws/chat/bench/" --clients "$WS_CLIENTS" \
    --messages "$WS_MESSAGES" --rate "$WS_RATE" 2>>"$OUTDIR/logs/clients.log" | grep '^{' | tail -1)
  b=$(counters)
  record "$1" w5 "$out" "{\"sent\":$WS_MESSAGES,\"turns\":$(extra_turns "$a" "$b" 0 0)}"
}
w6() {
  local a b out; a=$(counters)
  out=$(timeout 240 "$HEARTH" bench sse --base "http://127.0.0.1:$HEARTH_PORT" --clients "$SSE_CLIENTS" \
    --messages "$SSE_MESSAGES" --rate "$SSE_RATE" 2>>"$OUTDIR/logs/clients.log" | grep '^{' | tail -1)
  b=$(counters)
  record "$1" w6 "$out" "{\"sent\":$SSE_MESSAGES,\"turns\":$(extra_turns "$a" "$b" 0 0)}"
}
w4() {
  local a b out; a=$(counters)
  out=$(env LATENCY_N="$LATENCY_N" DATABASE_URL="$URL" HEARTH_DATA_DIR="$OUTDIR/hearth-data" RUST_LOG=warn \
    timeout 600 "$HEARTH" bench jobs both "$JOBS_N" 1 2>>"$OUTDIR/logs/jobs.log")
  b=$(counters)
  record "$1" w4 "$(grep '"throughput"' <<<"$out" | tail -1)" "{\"n\":$((JOBS_N + LATENCY_N)),\"turns\":$(extra_turns "$a" "$b" 0 0)}"
  record "$1" w4lat "$(grep '"latency"' <<<"$out" | tail -1)"
}

for side in $DELAYS; do
  say "== $side"
  URL="$DIRECT_URL"
  if [ "$side" != direct ]; then
    start_proxy "$side" || exit 1
    URL="postgres://postgres@127.0.0.1:$PROXY_PORT/$DB"
  fi
  record "$side" rtt "$("$HEARTH" bench db-rtt --url "$URL" --n 2000 2>>"$LOG")"
  start_server || exit 1
  sleep 2  # start-up's own queries (migrations check, seed, schedules) are over
  pages "$side"; w1 "$side" w1 /bench/page; w1 "$side" w1p /bench/page-pipelined; w5 "$side"; w6 "$side"
  stop SERVER_PID
  w4 "$side"
  stop PROXY_PID
done
cleanup
say "done in $(( $(date +%s) - T0 ))s; raw JSON in $OUT"
if [ "${NO_REPORT:-0}" != 1 ]; then
  source "$BENCH/scripts/rewrite_benchmarks.sh"
  rewrite_benchmarks && say "wrote BENCHMARKS.md (its delay section is $OUT) and bench/delay.svg"
fi
