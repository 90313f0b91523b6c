#!/usr/bin/env bash
# bench/jobs-sustained.sh -- #36's sustained job stream, Hearth and its floor in the same rounds.
#
#   bench/jobs-sustained.sh                          # RATE=5000 SECONDS=20 ROUNDS=3, ~3 min
#   RATE=5000 SECONDS=200 ROUNDS=1 bench/jobs-sustained.sh   # 1,000,000 jobs each
#
# Each round, on a fresh database:
#   floor   pgbench (a C client, no Rust) inserts RATE jobs/s one per transaction from PRODUCERS
#           clients (db/jobs_floor_enqueue.sql, the INSERT of `Enqueue::enqueue`) while one more
#           pgbench client works them with the worker's two statements (db/jobs_floor_work.sql:
#           lease up to 100, then move them to jobs_done), 200 us apart. Wait = attempted_at -
#           created_at, from jobs_done. The least this machine and PostgreSQL need for the stream.
#   hearth  `hearth-bench bench jobs sustained --rate RATE --seconds SECONDS --producers PRODUCERS`:
#           PRODUCERS tokio tasks insert one job per transaction (Enqueue::enqueue on the app
#           pool, given PRODUCERS connections), the workers (200 slots, their own pool) run them. Wait = job start - the moment before its INSERT, so it includes the commit.
# Both report the achieved insert rate, the wait's p50/p99/max, per WINDOW seconds too, and the
# machine's busy share (/proc/stat). JSON lines go to $OUTDIR/sustained.json.
#
# Knobs (env): NOTE="..." RATE=5000 SECONDS=20 PRODUCERS=32 WINDOW=10 ROUNDS=3 DB=hearth_bench
#   PG=127.0.0.1:5432 SKIP_BUILD=1 NO_REPORT=1 OUTDIR=bench/results/<UTC timestamp>-sustained
set -uo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-5000}"; SECONDS_="${SECONDS:-20}"; PRODUCERS="${PRODUCERS:-32}"; WINDOW="${WINDOW:-10}"
ROUNDS="${ROUNDS:-3}"; PG="${PG:-127.0.0.1:5432}"; DB="${DB:-hearth_bench}"
URL="postgres://postgres@$PG/$DB"; ADMIN="postgres://postgres@$PG/postgres"
BIN="$ROOT/target/release/hearth-bench"
OUTDIR="${OUTDIR:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)-sustained}"
mkdir -p "$OUTDIR/logs"; OUT="$OUTDIR/sustained.json"
source "$BENCH/scripts/jobs_lib.sh"
jobs_setup

floor() { # round
  psql -qtAX "$URL" -c "DELETE FROM jobs WHERE queue = 'floor'" -c "DELETE FROM jobs_done WHERE queue = 'floor'" >/dev/null
  busy_start
  # The worker plans each statement (-M extended): with -M prepared, PostgreSQL switches to a
  # generic plan for the lease after five runs, one made while the new table looked empty, and
  # the worker fell behind for good within a minute (52,636 jobs waiting after 30 s).
  pgbench -n -M extended -f "$BENCH/db/jobs_floor_work.sql" -D batch=100 -D gap=200 -c 1 -T $(( SECONDS_ + 2 )) "$URL" >"$OUTDIR/logs/floor-work-$1.txt" 2>&1 &
  local worker=$!
  pgbench -n -M prepared -f "$BENCH/db/jobs_floor_enqueue.sql" -c "$PRODUCERS" -j 2 -R "$RATE" -T "$SECONDS_" "$URL" \
    >"$OUTDIR/logs/floor-enqueue-$1.txt" 2>&1
  wait "$worker"
  local busy; busy=$(busy_pct)
  local tps; tps=$(awk '/^tps/ {print $3}' "$OUTDIR/logs/floor-enqueue-$1.txt")
  psql -qtAX "$URL" -c "
    WITH w AS (SELECT extract(epoch FROM created_at) AS enq, extract(epoch FROM attempted_at - created_at) * 1000 AS ms
                 FROM jobs_done WHERE queue = 'floor'),
    t0 AS (SELECT min(enq) AS t0 FROM w),
    win AS (SELECT floor((enq - t0) / $WINDOW) * $WINDOW AS from_s, count(*) AS jobs,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS p50, percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
                   max(ms) AS mx
              FROM w, t0 GROUP BY 1 ORDER BY 1)
    SELECT json_build_object('tool', 'floor', 'mode', 'sustained', 'repeat', $1, 'target_rate', $RATE,
             'achieved_rate', round(${tps:-0}::numeric, 1), 'producers', $PRODUCERS, 'busy_pct', $busy,
             'n', (SELECT count(*) FROM w), 'left_in_queue', (SELECT count(*) FROM jobs WHERE queue = 'floor'),
             'p50_ms', (SELECT round(percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3) FROM w),
             'p99_ms', (SELECT round(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3) FROM w),
             'max_ms', (SELECT round(max(ms)::numeric, 3) FROM w),
             'windows', (SELECT json_agg(json_build_object('from_s', from_s, 'jobs', jobs, 'p50_ms', round(p50::numeric, 3),
                                                           'p99_ms', round(p99::numeric, 3), 'max_ms', round(mx::numeric, 3))) FROM win),
             'config', 'floor: pgbench, ' || $PRODUCERS || ' clients inserting, 1 working (lease up to 100, move them to jobs_done)')" >>"$OUT"
  tail -1 "$OUT" | cut -c1-200 >&2
}

hearth() { # round
  busy_start
  # The app pool as large as pgbench's set of clients: each producer holds a connection while
  # its commit waits, as each pgbench client does.
  HEARTH_DB_MAX_CONNECTIONS="$PRODUCERS" DATABASE_URL="$URL" RUST_LOG=warn "$BIN" bench jobs sustained --rate "$RATE" --seconds "$SECONDS_" \
    --producers "$PRODUCERS" --window "$WINDOW" 2>"$OUTDIR/logs/hearth-$1.err" | grep '^{' >"$OUTDIR/logs/hearth-$1.json"
  local busy; busy=$(busy_pct)
  python3 -c "
import json; d=json.load(open('$OUTDIR/logs/hearth-$1.json')); d['repeat']=$1; d['busy_pct']=$busy; print(json.dumps(d))" >>"$OUT"
  tail -1 "$OUT" | cut -c1-200 >&2
}

for round in $(seq 1 "$ROUNDS"); do
  say "round $round: floor"; fresh_db; floor "$round"
  say "round $round: hearth"; fresh_db; hearth "$round"
done
say "results: $OUT"
if [ "${NO_REPORT:-0}" != 1 ]; then
  source "$BENCH/scripts/rewrite_benchmarks.sh"
  rewrite_benchmarks && say "wrote BENCHMARKS.md (its sustained section is $OUT) and bench/sustained.svg"
fi
