#!/usr/bin/env bash
# bench/jobs-bulk.sh -- #36's W4 bulk throughput, Hearth and its floor in the same rounds.
#
#   bench/jobs-bulk.sh                       # N=300000 ROUNDS=3, ~3 min
#   N=1000000 ROUNDS=1 bench/jobs-bulk.sh
#
# Each round, on a fresh database:
#   floor   pgbench (a C client, no Rust): FLOOR_WORKERS clients work the queue with the worker's
#           two statements (db/jobs_floor_work.sql: lease up to FLOOR_BATCH, then move them to
#           jobs_done, no pause) while one more inserts N jobs 5,000 per statement
#           (db/jobs_floor_bulk_enqueue.sql). jobs/s = N / (the last job's lease - the start of the
#           enqueue), as Hearth's; "to recorded" uses the last move to jobs_done instead. The most
#           this machine and PostgreSQL do with these statements and nothing else.
#   hearth  `hearth-bench bench jobs throughput N 1 --concurrency SLOTS` (W4 of bench/run.sh):
#           enqueue_many 5,000 per statement while the workers (SLOTS slots, their own pool) run
#           no-op jobs that append a line to a file.
# Both record the machine's busy share. JSON lines go to $OUTDIR/bulk.json; BENCHMARKS.md's
# section (bench/scripts/bulk_report.py, through report.py) and bench/bulk.svg.
#
# Knobs (env): NOTE="..." N=300000 ROUNDS=3 FLOOR_WORKERS=6 FLOOR_BATCH=300 SLOTS=200
#   JOBS_RUNNERS=1 (Hearth: runners sharing the slots) SIDES="floor hearth" (in each round, in this
#   order) DB=hearth_bench PG=127.0.0.1:5432
#   SKIP_BUILD=1 NO_REPORT=1 OUTDIR=bench/results/<UTC timestamp>-bulk
set -uo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"
N="${N:-300000}"; N=$(( (N + 4999) / 5000 * 5000 ))
ROUNDS="${ROUNDS:-3}"; FLOOR_WORKERS="${FLOOR_WORKERS:-6}"; FLOOR_BATCH="${FLOOR_BATCH:-300}"
SLOTS="${SLOTS:-200}"; export JOBS_RUNNERS="${JOBS_RUNNERS:-1}"; SIDES="${SIDES:-floor hearth}"
PG="${PG:-127.0.0.1:5432}"; DB="${DB:-hearth_bench}"
URL="postgres://postgres@$PG/$DB"; ADMIN="postgres://postgres@$PG/postgres"
BIN="$ROOT/target/release/hearth-bench"
OUTDIR="${OUTDIR:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)-bulk}"
mkdir -p "$OUTDIR/logs"; OUT="$OUTDIR/bulk.json"
source "$BENCH/scripts/jobs_lib.sh"
jobs_setup

floor() { # round
  local t0 workers busy left
  busy_start
  # The workers plan each statement (-M extended; see jobs-sustained.sh) and run until stopped.
  pgbench -n -M extended -f "$BENCH/db/jobs_floor_work.sql" -D batch="$FLOOR_BATCH" -D gap=0 \
    -c "$FLOOR_WORKERS" -j "$FLOOR_WORKERS" -T 900 "$URL" >"$OUTDIR/logs/floor-work-$1.txt" 2>&1 &
  workers=$!
  t0=$(date +%s.%N)
  pgbench -n -M prepared -f "$BENCH/db/jobs_floor_bulk_enqueue.sql" -c 1 -t $(( N / 5000 )) "$URL" \
    >"$OUTDIR/logs/floor-enqueue-$1.txt" 2>&1
  # Done when no job of the queue is left (both partial indexes make this cheap to ask).
  for _ in $(seq 1 3000); do
    left=$(psql -qtAX "$URL" -c "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'available' AND queue = 'floor')
                                       OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND queue = 'floor')")
    [ "$left" = f ] && break
    sleep 0.2
  done
  busy=$(busy_pct)
  kill "$workers" 2>/dev/null; wait "$workers" 2>/dev/null
  psql -qtAX "$URL" -c "
    WITH d AS (SELECT count(*) AS n, extract(epoch FROM max(attempted_at)) AS last_start,
                      extract(epoch FROM max(finished_at)) AS last_done FROM jobs_done WHERE queue = 'floor')
    SELECT json_build_object('tool', 'floor', 'mode', 'throughput', 'repeat', $1, 'n', $N, 'completed', d.n,
             'ok', d.n = $N, 'total_s', round((d.last_start - $t0)::numeric, 3),
             'jobs_per_s', round(($N / (d.last_start - $t0))::numeric, 1),
             'recorded_jobs_per_s', round(($N / (d.last_done - $t0))::numeric, 1), 'busy_pct', $busy,
             'config', 'floor: pgbench, ' || $FLOOR_WORKERS || ' clients working (lease up to ' || $FLOOR_BATCH
                       || ', move them to jobs_done), 1 inserting 5,000 per statement')
      FROM d" >>"$OUT"
  tail -1 "$OUT" >&2
}

hearth() { # round
  busy_start
  DATABASE_URL="$URL" RUST_LOG=warn "$BIN" bench jobs throughput "$N" 1 --concurrency "$SLOTS" \
    2>"$OUTDIR/logs/hearth-$1.err" | grep '^{' >"$OUTDIR/logs/hearth-$1.json"
  local busy; busy=$(busy_pct)
  python3 -c "
import json; d=json.load(open('$OUTDIR/logs/hearth-$1.json')); d['repeat']=$1; d['busy_pct']=$busy
print(json.dumps(d))" >>"$OUT"
  tail -1 "$OUT" >&2
}

for round in $(seq 1 "$ROUNDS"); do
  for side in $SIDES; do say "round $round: $side"; fresh_db; "$side" "$round"; done
done
say "results: $OUT"
if [ "${NO_REPORT:-0}" != 1 ]; then
  source "$BENCH/scripts/rewrite_benchmarks.sh"
  rewrite_benchmarks && say "wrote BENCHMARKS.md (its bulk section is $OUT) and bench/bulk.svg"
fi
