#!/usr/bin/env bash
# bench/sockets.sh -- one machine pushed to its limit with sockets (issue #36).
#
#   bench/sockets.sh                                   # every part, ~12 min
#   PARTS="fanout" FANOUT_MESSAGES=25 bench/sockets.sh # one part, shorter
#
# Parts (PARTS, in this order):
#   base    the RSS of an idle `hearth serve` (target/release/hearth) on this external database
#   one     IDLE_CLIENTS WebSockets held by one instance: server RSS over its base per socket, and
#           the CPU the instance spends holding them for HOLD seconds (heartbeats and idle timers)
#   fanout  one group of FANOUT_CLIENTS sockets, FANOUT_RATE messages/s: on one instance, then
#           with the receivers split over two (a message sent on A reaching sockets on B)
#   fanoutfloor  the same on one and two `bench ws-floor` servers (the sender writes to each)
#   many    MANY_CLIENTS sockets over INSTANCES instances on one database, one receiving client
#           process per instance (each under the 20,000 open-files cap), the CPU of all instances
#           holding them for HOLD seconds, then MANY_MESSAGES broadcasts at MANY_RATE/s to all
#   floor   the same receivers on INSTANCES `bench ws-floor` servers (no database, no channel
#           layer; the sender writes each message to every one): the machine's own cost
# Every client process spreads its sockets over SOURCES loopback addresses of its own
# (127.0.<process>.1, .2, ...): one address has ~28,000 ports to a server port, and Hearth limits
# connections per address (HEARTH_WS_MAX_PER_ADDRESS, 5,000), which this keeps at its default.
# Results: one JSON line per measurement in $OUTDIR/sockets.json; BENCHMARKS.md's section
# (bench/scripts/sockets_report.py, through report.py) and bench/sockets.svg.
#
# Knobs (env): PARTS="base one fanout fanoutfloor many floor" IDLE_CLIENTS=19000 HOLD=30 FANOUT_CLIENTS=10000
#   FANOUT_RATE=5 FANOUT_MESSAGES=100 MANY_CLIENTS=100000 INSTANCES=6 MANY_MESSAGES=10 MANY_RATE=0.5
#   SOURCES=4 BASE_PORT=8400 DB=hearth_bench PG=127.0.0.1:5432 SKIP_BUILD=1 NO_REPORT=1 NOTE=...
#   OUTDIR=bench/results/<UTC timestamp>-sockets
set -uo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"

PARTS="${PARTS:-base one fanout fanoutfloor many floor}"
IDLE_CLIENTS="${IDLE_CLIENTS:-19000}"; HOLD="${HOLD:-30}"
FANOUT_CLIENTS="${FANOUT_CLIENTS:-10000}"; FANOUT_RATE="${FANOUT_RATE:-5}"; FANOUT_MESSAGES="${FANOUT_MESSAGES:-100}"
MANY_CLIENTS="${MANY_CLIENTS:-100000}"; INSTANCES="${INSTANCES:-6}"
MANY_MESSAGES="${MANY_MESSAGES:-10}"; MANY_RATE="${MANY_RATE:-0.5}"
SOURCES="${SOURCES:-4}"; BASE_PORT="${BASE_PORT:-8400}"
PG="${PG:-127.0.0.1:5432}"; DB="${DB:-hearth_bench}"
export NOTE="${NOTE:-}"
BIN="$ROOT/target/release/hearth-bench"; PRODUCT="$ROOT/target/release/hearth"
URL="postgres://postgres@$PG/$DB"
OUTDIR="${OUTDIR:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)-sockets}"
mkdir -p "$OUTDIR/logs"
LOG="$OUTDIR/logs/run.log"; OUT="$OUTDIR/sockets.json"
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$LOG" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STARTED=()
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return 0; }; sleep 0.2; done
  kill -KILL -- "-$1" 2>/dev/null; wait "$1" 2>/dev/null
}
cleanup() { for p in "${STARTED[@]}"; do stop_group "$p"; done; STARTED=(); }
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release -p hearth -p hearth-bench"
  cargo build --release -p hearth -p hearth-bench >"$OUTDIR/logs/cargo.log" 2>&1 || { say "build failed: $OUTDIR/logs/cargo.log"; exit 1; }
fi
[ -x "$BIN" ] || { say "no $BIN"; exit 1; }
if [ "$(psql -qtAX "postgres://postgres@$PG/postgres" -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
  psql -qtAX "postgres://postgres@$PG/postgres" -c "CREATE DATABASE $DB" || { say "cannot create $DB"; exit 1; }
fi
python3 - "$OUTDIR/meta.json" <<'EOF'
import json, os, subprocess, sys
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
json.dump({"commit": sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -- src bench Cargo.lock") else ""),
           "when": sh("date -u +%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(), "note": os.environ.get("NOTE", ""),
           "open_files_hard": sh("ulimit -Hn"), "kernel": sh("uname -r")},
          open(sys.argv[1], "w"), indent=1)
EOF

record() { # part json [extra json fields]
  python3 - "$@" >>"$OUT" <<'EOF'
import json, sys
part, result = sys.argv[1], sys.argv[2]
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
try:
    result = json.loads(result)
except ValueError:
    result = None
print(json.dumps({"part": part, "result": result, **extra}))
EOF
  tail -1 "$OUT" | cut -c1-240 | tee -a "$LOG" >&2
}
# The source addresses of client process $1: 127.0.<$1+1>.1 ... .SOURCES
sources() { local i s=""; for i in $(seq 1 "$SOURCES"); do s+="${s:+,}127.0.$(( $1 + 1 )).$i"; done; echo "$s"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }

SERVERS=()
start_servers() { # count [extra env...]
  local n=$1 i; shift; SERVERS=()
  for i in $(seq 0 $(( n - 1 ))); do
    env "$@" HEARTH_BIND="127.0.0.1:$(( BASE_PORT + i ))" DATABASE_URL="$URL" HEARTH_DATA_DIR="$OUTDIR/logs/hearth-data-$i" \
      RUST_LOG=warn setsid "$BIN" serve >>"$OUTDIR/logs/hearth-$i.log" 2>&1 </dev/null &
    SERVERS+=("$!"); STARTED+=("$!")
  done
  for i in $(seq 0 $(( n - 1 ))); do
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$(( BASE_PORT + i ))/healthz" && break; sleep 0.2; done
  done
  sleep 3  # start-up's own work (seed, schedules) is over
}
# $1 `bench ws-floor` servers (no database, no channel layer) where start_servers puts Hearth's.
start_floors() {
  local i; SERVERS=()
  for i in $(seq 0 $(( $1 - 1 ))); do
    setsid "$BIN" bench ws-floor --listen "127.0.0.1:$(( BASE_PORT + i ))" >>"$OUTDIR/logs/floor-$i.log" 2>&1 </dev/null &
    SERVERS+=("$!"); STARTED+=("$!")
  done
  sleep 1
}
stop_servers() { local p; for p in "${SERVERS[@]}"; do stop_group "$p"; done; SERVERS=(); }
ws_url() { echo "ws://127.0.0.1:$(( BASE_PORT + $1 ))/ws/chat/bench/"; }

part_base() {
  [ -x "$PRODUCT" ] || { say "no $PRODUCT: base skipped"; return; }
  env HEARTH_BIND="127.0.0.1:$BASE_PORT" DATABASE_URL="$URL" HEARTH_DATA_DIR="$OUTDIR/logs/hearth-data-base" RUST_LOG=warn \
    setsid "$PRODUCT" serve >>"$OUTDIR/logs/hearth-base.log" 2>&1 </dev/null &
  local pid=$!; STARTED+=("$pid")
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$BASE_PORT/healthz" && break; sleep 0.2; done
  sleep 10
  local idle; idle=$(rss_kib "$pid")
  curl -sf -o /dev/null "http://127.0.0.1:$BASE_PORT/"; curl -sf -o /dev/null "http://127.0.0.1:$BASE_PORT/posts"; sleep 2
  record base "{\"rss_idle_mib\": $(python3 -c "print(round($idle/1024,1))"), \"rss_after_two_pages_mib\": $(python3 -c "print(round($(rss_kib "$pid")/1024,1))")}"
  stop_group "$pid"
}

part_one() {
  start_servers 1
  record one "$("$BIN" bench ws idle --url "$(ws_url 0)" --clients "$IDLE_CLIENTS" --sources "$(sources 0)" \
    --rss-pid "${SERVERS[0]}" --hold-s "$HOLD" --connect-concurrency 200 2>>"$OUTDIR/logs/clients.log" | grep '^{' | tail -1)"
  stop_servers
}

# One group of FANOUT_CLIENTS, on one server then split over two. $1: hearth (the sender on the
# first instance; the channel layer carries each message to the second) or floor (`bench
# ws-floor` servers, the sender writing to each: the same receivers with nothing in between).
fanout() {
  local side=$1 n urls i to_all=()
  for n in 1 2; do
    if [ "$side" = hearth ]; then start_servers "$n"; else start_floors "$n"; to_all=(--send-to-all); fi
    urls=""; for i in $(seq 0 $(( n - 1 ))); do urls+="${urls:+,}$(ws_url "$i")"; done
    record fanout "$("$BIN" bench ws chat --url "$urls" "${to_all[@]}" --clients "$FANOUT_CLIENTS" --messages "$FANOUT_MESSAGES" \
      --rate "$FANOUT_RATE" --sources "$(sources 0)" --connect-concurrency 200 --settle 3 2>>"$OUTDIR/logs/clients.log" \
      | grep '^{' | tail -1)" "{\"instances\": $n, \"side\": \"$side\"}"
    stop_servers
  done
}
part_fanout() { fanout hearth; }
part_fanoutfloor() { fanout floor; }

# MANY_CLIENTS receivers over INSTANCES servers, one client process each, then broadcasts from
# another process. $1: hearth (a message sent to instance 0 reaches the others through the
# channel layer) or floor (`bench ws-floor` servers: no database, no channel layer; the sender
# sends each message to every one of them, so what is left is what the kernel and the clients cost).
many() {
  local side=$1 per=$(( (MANY_CLIENTS + INSTANCES - 1) / INSTANCES )) i pids=() before after rss="" urls="" to_all=()
  rm -f "$OUTDIR"/logs/receiver-*.json "$OUTDIR"/logs/receiver-*.log
  if [ "$side" = hearth ]; then
    # Each instance's connections to the database stay small, so six fit PostgreSQL's default 100.
    start_servers "$INSTANCES" HEARTH_DB_MAX_CONNECTIONS=4 HEARTH_JOB_DB_CONNECTIONS=2
  else
    start_floors "$INSTANCES"
    to_all=(--send-to-all)
  fi
  for i in $(seq 0 $(( INSTANCES - 1 ))); do
    urls+="${urls:+,}$(ws_url "$i")"
    "$BIN" bench ws chat --role receive --url "$(ws_url "$i")" --clients "$per" --messages "$MANY_MESSAGES" \
      --rate "$MANY_RATE" --sources "$(sources "$i")" --connect-concurrency 100 --drain-s 20 \
      >"$OUTDIR/logs/receiver-$i.json" 2>"$OUTDIR/logs/receiver-$i.log" &
    pids+=("$!"); STARTED+=("$!")
  done
  for i in $(seq 0 $(( INSTANCES - 1 ))); do
    until grep -q '^ready' "$OUTDIR/logs/receiver-$i.log" 2>/dev/null; do
      kill -0 "${pids[$i]}" 2>/dev/null || { say "receiver $i ended early (see logs/receiver-$i.log)"; break; }
      sleep 1
    done
  done
  say "$side: $(cat "$OUTDIR"/logs/receiver-*.log | grep -h '^ready' | tr '\n' ' ')"
  for i in "${SERVERS[@]}"; do rss+="${rss:+,}$(rss_kib "$i")"; done
  before=$(cpu_ticks "${SERVERS[@]}"); sleep "$HOLD"; after=$(cpu_ticks "${SERVERS[@]}")
  [ "$side" = hearth ] && urls="$(ws_url 0)"
  "$BIN" bench ws chat --role send --url "$urls" "${to_all[@]}" --messages "$MANY_MESSAGES" --rate "$MANY_RATE" \
    --settle 0 >"$OUTDIR/logs/sender-$side.json" 2>>"$OUTDIR/logs/clients.log"
  for i in "${pids[@]}"; do wait "$i"; done
  record "many" "$(cat "$OUTDIR"/logs/receiver-*.json | grep -h '^{' | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
total = lambda k: sum(r.get(k) or 0 for r in rows)
p = lambda k: [r.get(k) for r in rows if r.get(k) is not None]
print(json.dumps({"processes": len(rows), "connected": total("connected"), "connect_failed": total("connect_failed"),
                  "expected": total("expected"), "delivered": total("delivered"), "lost": total("lost"),
                  "duplicates": total("duplicates"), "messages": rows[0].get("messages") if rows else None,
                  "rate": rows[0].get("rate") if rows else None,
                  "p50_ms_range": [min(p("p50_ms"), default=None), max(p("p50_ms"), default=None)],
                  "p99_ms_max": max(p("p99_ms"), default=None), "max_ms": max(p("max_ms"), default=None),
                  "per_process": rows}))')" \
    "{\"side\": \"$side\", \"instances\": $INSTANCES, \"hold_s\": $HOLD, \"servers_cpu_pct_held\": $(python3 -c "print(round(($after-$before)/$HOLD, 1))"), \"server_rss_kib\": [$rss]}"
  stop_servers
}
part_many() { many hearth; }
part_floor() { many floor; }

for part in $PARTS; do
  say "== $part"
  "part_$part"
done
cleanup
say "done in $(( $(date +%s) - T0 ))s; raw JSON in $OUT"
if [ "${NO_REPORT:-0}" != 1 ]; then
  source "$BENCH/scripts/rewrite_benchmarks.sh"
  rewrite_benchmarks && say "wrote BENCHMARKS.md (its sockets section is $OUT) and bench/sockets.svg"
fi
