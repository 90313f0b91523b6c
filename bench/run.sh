#!/usr/bin/env bash
# bench/run.sh -- Hearth and the Django peer stack side by side (bench/peers, PROTOCOL.md v1),
# alternately in one run, then BENCHMARKS.md and bench/ratios.svg.
#
#   bench/run.sh                                          # the full run (about 25-35 minutes)
#   ROUNDS=1 DURATION=2s WORKLOADS="w1 w2" bench/run.sh   # a smoke run
#
# Method: for every workload, ROUNDS rounds; in each round Hearth then the peer (A B A B A B).
# Every measurement gets a FRESH server process (started, health-checked, warmed up, measured,
# stopped), so no measurement inherits sockets, caches or heap growth from the one before; both
# sides run alone on the machine while measured (Postgres, Redis and the upstream stub are shared).
# W4 runs with no server up: `hearth-bench bench jobs` then each peer queue's command, once per round.
# `login` (issue #30) is Hearth only: per round, a flood of wrong logins against one account
# (`login1`) then against random accounts (`loginrand`), each on a fresh server (VmHWM is the peak
# since start). `latency` (issue #34) is Hearth only: per round, on a fresh idle server, requests one
# at a time on kept-alive connections (/healthz, the cached W2 page, its 304, the uncached W1 page;
# bench/clients/latency.py). `w2proto` (issue #34) is Hearth only: W2 with h2load over HTTP/1.1, h2c,
# and TLS with HTTP/1.1 and h2 (ALPN), a fresh server per protocol per round. A run of only
# Hearth-only workloads needs neither the peer nor setup.sh, and its report keeps the full
# comparison: see REPORT_BASE.
#
# Knobs (env):
#   ROUNDS=3  DURATION=10s  WARMUP=3s  WORKLOADS="w1 w2 w3 w3c256 w5 w5rust w6 w6rust login latency w2proto w4"
#   CONNS=64 THREADS=2 (wrk)   WS_CLIENTS=1000 WS_MESSAGES=200 WS_RATE=20   SSE_CLIENTS=500
#   SSE_MESSAGES=100 SSE_RATE=10   JOBS_N=20000 LATENCY_N=200   JOBQ_PEERS="celery procrastinate graphile-worker"
#   HEARTH_PORT=8100 PEER_PORT=8200 UPSTREAM_PORT=8081   UVICORN_WORKERS=2
#   HEARTH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/hearth_bench
#   BENCH_PEER_PG_DSN=postgresql://postgres@127.0.0.1:5432/bench_peer?sslmode=disable   BENCH_REDIS_URL=redis://127.0.0.1:6379
#   OUTDIR=bench/results/<UTC timestamp>   SKIP_BUILD=1 (use the existing target/release/hearth-bench)
#   NO_REPORT=1 (do not regenerate BENCHMARKS.md / ratios.svg)
#   FLOOR=1 (the default: w1, w2, w3, w3c256 and w5rust also measure a floor server, the least a server can do on this
#     machine, as a third side: `hearth-bench bench http-floor` for W1-W3, `hearth-bench bench ws-floor` for W5)
#   LOGIN_CONCURRENCY=500 LOGIN_ADDRESSES=256 LOGIN_USERS=1000 (flood0..flood999)
#   LOGIN_HASH_CONCURRENCY=4 LOGIN_HASH_QUEUE=16 (HEARTH_PASSWORD_HASH_CONCURRENCY / _QUEUE of the login server)
#   LAT_REQUESTS=20000 LAT_WARMUP=2000 (latency: measured and warm-up requests of each kind, per round)
#   W2PROTO_SIDES="h1 h2c h1tls h2tls" (w2proto: the protocols measured, in this order in each round)
#   REPORT_BASE=bench/results/<ts> (report = that folder, with this run's results for the workloads it lacks;
#     the default for a run of Hearth-only workloads is the folder BENCHMARKS.md was generated from, and the
#     other folders it already took workloads from after this run's)
#   NOTE="..." (a remark about the run, e.g. a shared machine; stored in meta.json, printed in BENCHMARKS.md)
#   NICE=-10 (root: Hearth and the latency/w2proto clients run at this niceness, so that other work on a shared
#     machine takes less of their time; stored in meta.json, printed with those sections; unset by default)
#   HEARTH_COMMIT=... (with SKIP_BUILD=1: what the binary was built from, if not this working tree)
set -uo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"; DURATION="${DURATION%s}"
WARMUP="${WARMUP:-3s}"; WARMUP="${WARMUP%s}"
WORKLOADS="${WORKLOADS:-w1 w2 w3 w3c256 w5 w5rust w6 w6rust login latency w2proto w4}"
CONNS="${CONNS:-64}"; THREADS="${THREADS:-2}"
WS_CLIENTS="${WS_CLIENTS:-1000}"; WS_MESSAGES="${WS_MESSAGES:-200}"; WS_RATE="${WS_RATE:-20}"
SSE_CLIENTS="${SSE_CLIENTS:-500}"; SSE_MESSAGES="${SSE_MESSAGES:-100}"; SSE_RATE="${SSE_RATE:-10}"
JOBS_N="${JOBS_N:-20000}"; export LATENCY_N="${LATENCY_N:-200}"
JOBQ_PEERS="${JOBQ_PEERS:-celery procrastinate graphile-worker}"
HEARTH_PORT="${HEARTH_PORT:-8100}"; PEER_PORT="${PEER_PORT:-8200}"; UPSTREAM_PORT="${UPSTREAM_PORT:-8081}"
UVICORN_WORKERS="${UVICORN_WORKERS:-2}"
LOGIN_CONCURRENCY="${LOGIN_CONCURRENCY:-500}"; LOGIN_ADDRESSES="${LOGIN_ADDRESSES:-256}"; LOGIN_USERS="${LOGIN_USERS:-1000}"
LOGIN_HASH_CONCURRENCY="${LOGIN_HASH_CONCURRENCY:-4}"; LOGIN_HASH_QUEUE="${LOGIN_HASH_QUEUE:-16}"
LAT_REQUESTS="${LAT_REQUESTS:-20000}"; LAT_WARMUP="${LAT_WARMUP:-2000}"
W2PROTO_SIDES="${W2PROTO_SIDES:-h1 h2c h1tls h2tls}"
export NOTE="${NOTE:-}"
NICE="${NICE:-}"; PRIO=(); [ -n "$NICE" ] && PRIO=(nice -n "$NICE")
HEARTH_DATABASE_URL="${HEARTH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/hearth_bench}"
# Both sides reach Postgres on loopback without TLS: Hearth by default (no sslmode in a loopback
# DATABASE_URL), the peer through this sslmode (Django, procrastinate and graphile-worker honour it).
export BENCH_PEER_PG_DSN="${BENCH_PEER_PG_DSN:-postgresql://postgres@127.0.0.1:5432/bench_peer?sslmode=disable}"
export BENCH_REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
UPSTREAM_URL="http://127.0.0.1:$UPSTREAM_PORT"
BENCH_VENV="${BENCH_VENV:-$BENCH/.venv}"; PY="$BENCH_VENV/bin/python"
HEARTH="$ROOT/target/release/hearth-bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUTDIR="${OUTDIR:-$BENCH/results/$STAMP}"
mkdir -p "$OUTDIR/logs"
export BENCH_LOGDIR="$OUTDIR/logs"
LOG="$OUTDIR/logs/run.log"
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$LOG" >&2; }
has() { [[ " $WORKLOADS " == *" $1 "* ]]; }
# Workloads measured against the peer too; a run without any needs no peer, no venv, no setup.sh.
HEARTH_ONLY=1; for w in w1 w2 w3 w3c256 w5 w5rust w6 w6rust w4; do has "$w" && HEARTH_ONLY=0; done
# Hearth-only runs need no venv: the helpers (meta.json, procutil.py, report.py, login_flood.py) are stdlib only.
[ "$HEARTH_ONLY" = 1 ] && [ ! -x "$PY" ] && PY="$(command -v python3)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- processes we start: each in its own process group; stopped by group id only --------
STARTED=()
stop_group() {
  local p="$1"
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }; sleep 0.2; done
  kill -KILL -- "-$p" 2>/dev/null; wait "$p" 2>/dev/null; sleep 0.3
}
cleanup() { for p in "${STARTED[@]}"; do stop_group "$p"; done; STARTED=(); }
trap 'cleanup' EXIT
trap 'say "interrupted"; exit 130' INT TERM
listening() { ss -ltn "sport = :$1" | grep -q LISTEN; }
# -k: the w2proto TLS server has a self-signed certificate made for the run.
wait_http() { for _ in $(seq 1 "${2:-150}"); do curl -skf -o /dev/null "$1" && return 0; sleep 0.2; done; return 1; }
# The exact commands, once each, for BENCHMARKS.md.
note_cmd() { grep -qxF -- "$*" "$OUTDIR/commands.txt" 2>/dev/null || printf '%s\n' "$*" >> "$OUTDIR/commands.txt"; }

# ---- build, setup, facts ------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release -p hearth-bench"
  note_cmd "cargo build --release -p hearth-bench"
  cargo build --release -p hearth-bench >"$OUTDIR/logs/cargo.log" 2>&1 || { say "cargo build failed (see $OUTDIR/logs/cargo.log)"; exit 1; }
fi
[ -x "$HEARTH" ] || { say "no $HEARTH"; exit 1; }
psql_h() { psql -v ON_ERROR_STOP=1 -qtAX "$HEARTH_DATABASE_URL" "$@"; }
if [ "$HEARTH_ONLY" = 1 ]; then
  # No peer: only Hearth's database must exist (what setup.sh would do for it).
  db="${HEARTH_DATABASE_URL##*/}"; db="${db%%\?*}"
  if [ "$(psql -qtAX "${HEARTH_DATABASE_URL%/*}/postgres" -c "SELECT 1 FROM pg_database WHERE datname='$db'")" != 1 ]; then
    say "creating database $db"
    psql -qtAX "${HEARTH_DATABASE_URL%/*}/postgres" -c "CREATE DATABASE $db" || { say "cannot create $db"; exit 1; }
  fi
else
  say "bench/setup.sh (idempotent)"
  note_cmd "bench/setup.sh"
  "$BENCH/setup.sh" >"$OUTDIR/logs/setup.log" 2>&1 || { say "setup failed (see $OUTDIR/logs/setup.log)"; exit 1; }
fi
for p in "$HEARTH_PORT" "$PEER_PORT"; do listening "$p" && { say "port $p is busy: stop what listens there or set HEARTH_PORT/PEER_PORT"; exit 1; }; done

# Issue #34's W2 per protocol (w2proto) needs h2load; installed before meta.json records its version.
# shellcheck disable=SC2206
W2PROTO=(); has w2proto && W2PROTO=($W2PROTO_SIDES)
if ((${#W2PROTO[@]})); then
  command -v h2load >/dev/null || { [ "$(id -u)" = 0 ] && say "installing h2load (nghttp2-client)" \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >>"$OUTDIR/logs/setup.log" 2>&1; }
  command -v h2load >/dev/null || { say "w2proto needs h2load: apt-get install nghttp2-client"; exit 1; }
fi

"$PY" - "$OUTDIR/meta.json" <<EOF
import json, os, platform, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e: return f"? ({e})"
mem_kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
  "started_utc": "$STAMP", "rounds": $ROUNDS, "duration_s": $DURATION, "warmup_s": $WARMUP,
  "workloads": "$WORKLOADS".split(), "conns": $CONNS, "threads": $THREADS,
  "ws": {"clients": $WS_CLIENTS, "messages": $WS_MESSAGES, "rate": $WS_RATE},
  "sse": {"clients": $SSE_CLIENTS, "messages": $SSE_MESSAGES, "rate": $SSE_RATE},
  "jobs": {"n": $JOBS_N, "latency_n": $LATENCY_N, "peers": "$JOBQ_PEERS".split()},
  "uvicorn_workers": $UVICORN_WORKERS,
  "login": {"concurrency": $LOGIN_CONCURRENCY, "addresses": $LOGIN_ADDRESSES, "users": $LOGIN_USERS,
            "hash_concurrency": $LOGIN_HASH_CONCURRENCY, "hash_queue": $LOGIN_HASH_QUEUE},
  "latency": {"requests": $LAT_REQUESTS, "warmup": $LAT_WARMUP},
  "w2proto": {"sides": "$W2PROTO_SIDES".split()},
  "note": os.environ.get("NOTE", ""),
  "nice": "$NICE",
  "machine": {
    "nproc": sh("nproc"), "cpu": cpu, "memory_gib": round(mem_kib / 1048576, 1),
    "kernel": platform.release(), "os": sh(". /etc/os-release && echo \$PRETTY_NAME"),
    "postgres": sh("psql -qtAX '$HEARTH_DATABASE_URL' -c 'SHOW server_version'"),
    "redis": sh("redis-cli -u '$BENCH_REDIS_URL' INFO server | grep redis_version | cut -d: -f2"),
    "rustc": sh("rustc -V"), "python": platform.python_version(), "node": sh("node --version"),
    "wrk": sh("dpkg-query -W -f='\${Version}' wrk 2>/dev/null || wrk -v 2>&1 | head -1"),
    "h2load": sh("h2load --version 2>/dev/null | head -1"),
    "django": sh("$PY -c 'import django; print(django.__version__)'"),
    "hearth_commit": os.environ.get("HEARTH_COMMIT") or sh("git -C '$ROOT' rev-parse --short HEAD") + (" (+ uncommitted changes)" if sh("git -C '$ROOT' status --porcelain -- src Cargo.toml Cargo.lock templates migrations") else ""),
  },
}, open(sys.argv[1], "w"), indent=1)
EOF

# ---- upstream stub (W3), shared by both sides --------------------------------------------------
if [ "$HEARTH_ONLY" = 1 ]; then
  :  # no W3 in this run: no stub
elif ! listening "$UPSTREAM_PORT"; then
  UPSTREAM_PORT="$UPSTREAM_PORT" setsid node "$BENCH/upstream/stub.js" >"$OUTDIR/logs/upstream.log" 2>&1 </dev/null &
  STUB_PID=$!; STARTED+=("$STUB_PID")
  note_cmd "UPSTREAM_PORT=$UPSTREAM_PORT node bench/upstream/stub.js"
  wait_http "$UPSTREAM_URL/upstream/1" || { say "upstream stub did not start"; exit 1; }
else
  say "an upstream stub already listens on :$UPSTREAM_PORT; using it"
fi

# ---- servers: one fresh server per measurement ---------------------------------------------------
SERVER_PID=""; BASE=""; WS=""
HEARTH_EXTRA_ENV=()  # VAR=value pairs added to Hearth's environment for one workload (login, w2proto's TLS)
HEARTH_SCHEME=http   # https when HEARTH_EXTRA_ENV gives it a certificate
start_server() { # side
  if [ "$1" = floor ]; then
    # The floors (bench/src/ws_floor.rs, bench/src/http_floor.rs): W5's writes each message to every
    # socket and nothing else; W1-W3's is a bare hyper server (one pipelined database connection,
    # stored bytes, three upstream calls).
    local kind=ws-floor; [ "$W" = w5rust ] || kind=http-floor
    note_cmd "DATABASE_URL=$HEARTH_DATABASE_URL HEARTH_BENCH_UPSTREAM_URL=$UPSTREAM_URL target/release/hearth-bench bench $kind --listen 127.0.0.1:$HEARTH_PORT"
    env DATABASE_URL="$HEARTH_DATABASE_URL" HEARTH_BENCH_UPSTREAM_URL="$UPSTREAM_URL" HEARTH_DATA_DIR="$OUTDIR/hearth-data" \
      setsid "$HEARTH" bench "$kind" --listen "127.0.0.1:$HEARTH_PORT" >>"$OUTDIR/logs/floor.log" 2>&1 </dev/null &
    SERVER_PID=$!; STARTED+=("$SERVER_PID"); BASE="http://127.0.0.1:$HEARTH_PORT"; WS="ws://${BASE#http://}"
    for _ in $(seq 1 50); do listening "$HEARTH_PORT" && return 0; sleep 0.1; done
    say "the floor server did not listen (see $OUTDIR/logs/floor.log)"; return 1
  elif [ "$1" = hearth ]; then
    local cmd="HEARTH_WS_MAX_PER_ADDRESS=0 HEARTH_BIND=127.0.0.1:$HEARTH_PORT HEARTH_BENCH_UPSTREAM_URL=$UPSTREAM_URL DATABASE_URL=$HEARTH_DATABASE_URL HEARTH_DATA_DIR=$OUTDIR/hearth-data RUST_LOG=warn ${HEARTH_EXTRA_ENV[*]/#HEARTH_METRICS_TOKEN=*/HEARTH_METRICS_TOKEN=<token>} ${PRIO[*]:+${PRIO[*]} }target/release/hearth-bench serve"
    note_cmd "${cmd//  / }"
    # env and setsid exec in turn (no fork: a background job of a non-interactive shell is no group
    # leader), so $! is the hearth process itself, whose /proc/PID/status the login client reads.
    env HEARTH_WS_MAX_PER_ADDRESS=0 HEARTH_BIND="127.0.0.1:$HEARTH_PORT" HEARTH_BENCH_UPSTREAM_URL="$UPSTREAM_URL" \
      DATABASE_URL="$HEARTH_DATABASE_URL" HEARTH_DATA_DIR="$OUTDIR/hearth-data" RUST_LOG=warn "${HEARTH_EXTRA_ENV[@]}" \
      setsid "${PRIO[@]}" "$HEARTH" serve >>"$OUTDIR/logs/hearth.log" 2>&1 </dev/null &
    SERVER_PID=$!; BASE="$HEARTH_SCHEME://127.0.0.1:$HEARTH_PORT"
  else
    redis-cli -u "$BENCH_REDIS_URL/0" FLUSHDB >/dev/null  # channel-layer groups of an earlier run
    local args="peer.asgi:application --host 127.0.0.1 --port $PEER_PORT --workers $UVICORN_WORKERS --loop uvloop --http httptools --ws auto --timeout-graceful-shutdown 5 --no-access-log --log-level warning"
    note_cmd "cd bench/peers && UPSTREAM_URL=$UPSTREAM_URL PYTHONPATH=. ../.venv/bin/uvicorn $args"
    # shellcheck disable=SC2086
    ( cd "$BENCH/peers" && UPSTREAM_URL="$UPSTREAM_URL" PYTHONPATH=. exec setsid "$BENCH_VENV/bin/uvicorn" $args \
        >>"$OUTDIR/logs/peer.log" 2>&1 </dev/null ) &
    SERVER_PID=$!; BASE="http://127.0.0.1:$PEER_PORT"
  fi
  STARTED+=("$SERVER_PID"); WS="ws://${BASE#*://}"
  wait_http "$BASE/bench/page" 300 || { say "$1 did not answer $BASE/bench/page (see $OUTDIR/logs/$1.log)"; return 1; }
  "$PY" "$BENCH/clients/procutil.py" wait-idle "$SERVER_PID" 30 >/dev/null 2>&1
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  stop_group "$SERVER_PID"
  local keep=(); for p in "${STARTED[@]}"; do [ "$p" = "$SERVER_PID" ] || keep+=("$p"); done; STARTED=("${keep[@]}")
  SERVER_PID=""
}

# ---- one measurement --------------------------------------------------------------------------------
save() { # workload round side json-line
  local f="$OUTDIR/$1-r$2-$3.json"
  if [[ "$4" == "{"* ]]; then
    "$PY" -c 'import json,sys; d=json.loads(sys.argv[4]); print(json.dumps({"workload":sys.argv[1],"round":int(sys.argv[2]),"side":sys.argv[3],"result":d}))' \
      "$1" "$2" "$3" "$4" > "$f"
    "$PY" "$BENCH/scripts/report.py" --line "$f"
  else
    printf '{"workload":"%s","round":%s,"side":"%s","result":null}\n' "$1" "$2" "$3" > "$f"; echo "no result"
  fi
}
measure() { # workload side -> prints the client's JSON line
  local w="$1" out=""
  case "$w" in
    w1|w2|w3|w3c256)
      local path c=$CONNS
      case "$w" in w1) path=/bench/page;; w2) path=/bench/cached;; *) path=/bench/gather;; esac
      [ "$w" = w3c256 ] && c=256
      note_cmd "wrk -t$THREADS -c$c -d${WARMUP}s --timeout 10s <base>$path   # warm-up"
      note_cmd "wrk -t$THREADS -c$c -d${DURATION}s --timeout 10s -s bench/clients/wrk_json.lua <base>$path"
      wrk -t"$THREADS" -c"$c" -d"${WARMUP}s" --timeout 10s "$BASE$path" >/dev/null 2>&1
      "$PY" "$BENCH/clients/procutil.py" wait-idle "$SERVER_PID" 10 >/dev/null 2>&1
      out=$(timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$c" -d"${DURATION}s" --timeout 10s -s "$BENCH/clients/wrk_json.lua" "$BASE$path" 2>&1)
      echo "$out" >> "$OUTDIR/logs/wrk.log";;
    w5)
      note_cmd "node bench/clients/ws_load.js --mode chat --url <ws>/ws/chat/bench/ --clients $WS_CLIENTS --messages $WS_MESSAGES --rate $WS_RATE"
      out=$(timeout 300 node "$BENCH/clients/ws_load.js" --mode chat --url "$WS/ws/chat/bench/" --clients "$WS_CLIENTS" \
            --messages "$WS_MESSAGES" --rate "$WS_RATE" 2>>"$OUTDIR/logs/clients.log");;
    w5rust)
      note_cmd "target/release/hearth-bench bench ws chat --url <ws>/ws/chat/bench/ --clients $WS_CLIENTS --messages $WS_MESSAGES --rate $WS_RATE"
      out=$(timeout 300 "$HEARTH" bench ws chat --url "$WS/ws/chat/bench/" --clients "$WS_CLIENTS" \
            --messages "$WS_MESSAGES" --rate "$WS_RATE" 2>>"$OUTDIR/logs/clients.log");;
    w6)
      note_cmd "node bench/clients/sse_load.js --base <base> --clients $SSE_CLIENTS --messages $SSE_MESSAGES --rate $SSE_RATE"
      out=$(timeout 240 node "$BENCH/clients/sse_load.js" --base "$BASE" --clients "$SSE_CLIENTS" \
            --messages "$SSE_MESSAGES" --rate "$SSE_RATE" 2>>"$OUTDIR/logs/clients.log");;
    w6rust)
      note_cmd "target/release/hearth-bench bench sse --base <base> --clients $SSE_CLIENTS --messages $SSE_MESSAGES --rate $SSE_RATE"
      out=$(timeout 240 "$HEARTH" bench sse --base "$BASE" --clients "$SSE_CLIENTS" \
            --messages "$SSE_MESSAGES" --rate "$SSE_RATE" 2>>"$OUTDIR/logs/clients.log");;
  esac
  grep '^{' <<<"$out" | tail -1
}

ORDER=(w1 w2 w3 w3c256 w5 w5rust w6 w6rust)
SERVER_WLS=(); for w in "${ORDER[@]}"; do has "$w" && SERVER_WLS+=("$w"); done
JOBQ_LIST=(); has w4 && JOBQ_LIST=(hearth $JOBQ_PEERS)
# W1-W3 and W5 with the Rust client are also measured against a floor server, in the same rounds.
floored() { [ "${FLOOR:-1}" = 1 ] && [[ " w1 w2 w3 w3c256 w5rust " == *" $1 "* ]]; }
sides() { if floored "$1"; then echo hearth peer floor; else echo hearth peer; fi; }
# The login flood: one account, then a random one of LOGIN_USERS accounts per attempt.
LOGIN_SCENARIOS=(); has login && LOGIN_SCENARIOS=(login1 loginrand)
# Issue #34: one request at a time (latency), and W2 per protocol (w2proto).
LAT_RUNS=0; has latency && LAT_RUNS=1
TOTAL=$(( (${#SERVER_WLS[@]} * 2 + ${#JOBQ_LIST[@]} + ${#LOGIN_SCENARIOS[@]} + LAT_RUNS + ${#W2PROTO[@]}) * ROUNDS )); DONE=0
for w in "${SERVER_WLS[@]}"; do floored "$w" && TOTAL=$((TOTAL + ROUNDS)); done
LAT_NAME=""; ((LAT_RUNS)) && LAT_NAME=latency
say "OUTDIR $OUTDIR; $TOTAL measurements: ${SERVER_WLS[*]} ${LOGIN_SCENARIOS[*]} $LAT_NAME ${W2PROTO[*]/#/w2proto-} ${JOBQ_LIST:+w4} x $ROUNDS rounds, ${DURATION}s each (HTTP)"

for w in "${SERVER_WLS[@]}"; do
  for r in $(seq 1 "$ROUNDS"); do
    for side in $(sides "$w"); do
      DONE=$((DONE + 1))
      printf '[%4ss] [%s round %d/%d] %s... (%d/%d) ' "$(( $(date +%s) - T0 ))" "$w" "$r" "$ROUNDS" "$side" "$DONE" "$TOTAL" | tee -a "$LOG" >&2
      W="$w"
      if start_server "$side"; then
        line=$(measure "$w")
      else
        line=""
      fi
      stop_server
      save "$w" "$r" "$side" "$line" | tee -a "$LOG" >&2
    done
  done
done

# ---- login flood (issue #30): Hearth only; wrong logins against one account, then random accounts ------
# LOGIN_USERS accounts flood0.. share one password hash: `hearth createuser flood0` (which also
# migrates the database), then one INSERT ... SELECT copies its hash to the others; done once.
login_users() {
  local n copy="INSERT INTO users (username, password_hash) SELECT 'flood' || g, u.password_hash FROM users u, generate_series(1, $((LOGIN_USERS - 1))) g WHERE u.username = 'flood0' ON CONFLICT DO NOTHING"
  note_cmd "DATABASE_URL=$HEARTH_DATABASE_URL target/release/hearth-bench createuser flood0 --password-stdin   # a random password; once (skipped when the users exist)"
  note_cmd "psql $HEARTH_DATABASE_URL -c \"$copy\"   # once"
  n=$(psql_h -c "SELECT count(*) FROM users WHERE username ~ '^flood[0-9]+$'" 2>/dev/null)
  [ "$n" = "$LOGIN_USERS" ] && return 0
  say "creating users flood0..flood$((LOGIN_USERS - 1))"
  if [ "$(psql_h -c "SELECT count(*) FROM users WHERE username = 'flood0'" 2>/dev/null)" != 1 ]; then
    head -c 24 /dev/urandom | base64 | DATABASE_URL="$HEARTH_DATABASE_URL" HEARTH_DATA_DIR="$OUTDIR/hearth-data" RUST_LOG=warn \
      "$HEARTH" createuser flood0 --password-stdin >>"$OUTDIR/logs/hearth.log" 2>&1 || return 1
  fi
  psql_h -c "$copy" >/dev/null || return 1
  n=$(psql_h -c "SELECT count(*) FROM users WHERE username ~ '^flood[0-9]+$'")
  [ "$n" -ge "$LOGIN_USERS" ] || { say "only $n flood users"; return 1; }
}
if ((${#LOGIN_SCENARIOS[@]})); then
  login_users || { say "cannot create the flood users"; LOGIN_SCENARIOS=(); }
  LOGIN_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
for r in $(seq 1 "$ROUNDS"); do
  for sc in "${LOGIN_SCENARIOS[@]}"; do
    DONE=$((DONE + 1))
    printf '[%4ss] [%s round %d/%d] hearth... (%d/%d) ' "$(( $(date +%s) - T0 ))" "$sc" "$r" "$ROUNDS" "$DONE" "$TOTAL" | tee -a "$LOG" >&2
    accounts=flood0; [ "$sc" = loginrand ] && accounts="flood0-$((LOGIN_USERS - 1))"
    # No counters or sessions from the run before: every run starts from the same state.
    note_cmd "psql $HEARTH_DATABASE_URL -c 'DELETE FROM login_throttle; DELETE FROM sessions'   # before each run"
    psql_h -c "DELETE FROM login_throttle; DELETE FROM sessions" >/dev/null
    HEARTH_EXTRA_ENV=("HEARTH_METRICS_TOKEN=$LOGIN_TOKEN" "HEARTH_PASSWORD_HASH_CONCURRENCY=$LOGIN_HASH_CONCURRENCY"
                      "HEARTH_PASSWORD_HASH_QUEUE=$LOGIN_HASH_QUEUE")
    line=""
    if start_server hearth; then
      note_cmd "python3 bench/clients/login_flood.py --url <base> --pid <hearth pid> --metrics-token <token> --accounts $accounts --concurrency $LOGIN_CONCURRENCY --duration $DURATION --addresses $LOGIN_ADDRESSES"
      out=$(timeout $((DURATION + 180)) "$PY" "$BENCH/clients/login_flood.py" --url "$BASE" --pid "$SERVER_PID" \
            --metrics-token "$LOGIN_TOKEN" --accounts "$accounts" --concurrency "$LOGIN_CONCURRENCY" \
            --duration "$DURATION" --addresses "$LOGIN_ADDRESSES" 2>>"$OUTDIR/logs/clients.log")
      # The client prints one indented JSON object; save() takes one line.
      line=$("$PY" -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read())))' <<<"$out" 2>>"$OUTDIR/logs/clients.log")
    fi
    stop_server
    HEARTH_EXTRA_ENV=()
    save "$sc" "$r" hearth "$line" | tee -a "$LOG" >&2
  done
done

# ---- issue #34, Hearth only: one request at a time on an idle server; W2 per protocol -----------------
if ((LAT_RUNS)); then
  note_cmd "${PRIO[*]:+${PRIO[*]} }python3 bench/clients/latency.py --base <base> --n $LAT_REQUESTS --warmup $LAT_WARMUP"
fi
for r in $(seq 1 "$((ROUNDS * LAT_RUNS))"); do
  DONE=$((DONE + 1))
  printf '[%4ss] [latency round %d/%d] hearth... (%d/%d) ' "$(( $(date +%s) - T0 ))" "$r" "$ROUNDS" "$DONE" "$TOTAL" | tee -a "$LOG" >&2
  line=""
  if start_server hearth; then
    out=$(timeout 900 "${PRIO[@]}" "$PY" "$BENCH/clients/latency.py" --base "$BASE" --n "$LAT_REQUESTS" --warmup "$LAT_WARMUP" \
          2>>"$OUTDIR/logs/clients.log")
    line=$(grep '^{' <<<"$out" | tail -1)
  fi
  stop_server
  save latency "$r" hearth "$line" | tee -a "$LOG" >&2
done
if ((${#W2PROTO[@]})); then
  # A self-signed certificate for the run (logs/ is not committed); hearth checks its dates at start.
  TLSDIR="$OUTDIR/logs/tls"; mkdir -p "$TLSDIR"
  note_cmd "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem   # once"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TLSDIR/key.pem" -out "$TLSDIR/cert.pem" \
    >>"$OUTDIR/logs/setup.log" 2>&1 || { say "openssl could not make a certificate"; W2PROTO=(); }
fi
for r in $(seq 1 "$ROUNDS"); do
  for proto in "${W2PROTO[@]}"; do
    DONE=$((DONE + 1))
    printf '[%4ss] [w2proto round %d/%d] %s... (%d/%d) ' "$(( $(date +%s) - T0 ))" "$r" "$ROUNDS" "$proto" "$DONE" "$TOTAL" | tee -a "$LOG" >&2
    flags=(); [[ "$proto" == h1* ]] && flags=(--h1)
    if [[ "$proto" == *tls ]]; then
      HEARTH_SCHEME=https; HEARTH_EXTRA_ENV=("HEARTH_TLS_CERT=$TLSDIR/cert.pem" "HEARTH_TLS_KEY=$TLSDIR/key.pem")
    fi
    line=""
    if start_server hearth; then
      # -m1: one request in flight per connection on every protocol, 64 in all, as wrk's W2 has.
      note_cmd "${PRIO[*]:+${PRIO[*]} }python3 bench/clients/h2load_json.py ${flags[*]:+${flags[*]} }-c$CONNS -t$THREADS -m1 -D$DURATION --warm-up-time=$WARMUP <base>/bench/cached   # ${proto}: <base> is $HEARTH_SCHEME://"
      out=$(timeout $((DURATION + WARMUP + 60)) "${PRIO[@]}" "$PY" "$BENCH/clients/h2load_json.py" "${flags[@]}" -c"$CONNS" -t"$THREADS" -m1 \
            -D"$DURATION" --warm-up-time="$WARMUP" "$BASE/bench/cached" 2>>"$OUTDIR/logs/clients.log")
      line=$(grep '^{' <<<"$out" | tail -1)
    fi
    stop_server
    HEARTH_SCHEME=http; HEARTH_EXTRA_ENV=()
    save w2proto "$r" "$proto" "$line" | tee -a "$LOG" >&2
  done
done

# ---- W4: no server running; Hearth's in-process workers, then each peer queue ---------------------------
jobq_cmd() {
  case "$1" in
    hearth) echo "env DATABASE_URL=$HEARTH_DATABASE_URL RUST_LOG=warn $HEARTH bench jobs both $JOBS_N 1";;
    celery|procrastinate) echo "$PY $BENCH/peers/jobs/jobq.py --tool $1 both $JOBS_N 1";;
    graphile-worker) echo "node $BENCH/peers/jobs/graphile.js both $JOBS_N 1";;
  esac
}
for r in $(seq 1 "$ROUNDS"); do
  for q in "${JOBQ_LIST[@]}"; do
    DONE=$((DONE + 1))
    printf '[%4ss] [w4 round %d/%d] %s... (%d/%d) ' "$(( $(date +%s) - T0 ))" "$r" "$ROUNDS" "$q" "$DONE" "$TOTAL" | tee -a "$LOG" >&2
    cmd=$(jobq_cmd "$q")
    note_cmd "${cmd//$ROOT\//}   # LATENCY_N=$LATENCY_N, once per round"
    # shellcheck disable=SC2086
    out=$(cd "$BENCH/peers/jobs" && timeout 600 $cmd 2>>"$OUTDIR/logs/jobs-$q.log")
    tp=$(grep '^{' <<<"$out" | grep '"throughput"' | tail -1)
    lat=$(grep '^{' <<<"$out" | grep '"latency"' | tail -1)
    { save "w4tp" "$r" "$q" "$tp"; save "w4lat" "$r" "$q" "$lat"; } | paste -sd' ' | tee -a "$LOG" >&2
  done
done

cleanup
say "measurements done in $(( $(date +%s) - T0 ))s; raw JSON in $OUTDIR"
if [ "${NO_REPORT:-0}" != 1 ]; then
  # A run of Hearth-only workloads alone (e.g. WORKLOADS=login) does not replace the comparison:
  # the report is the folder BENCHMARKS.md was generated from, plus this run for what it lacks.
  base="${REPORT_BASE:-}"; extras=(--extra "$OUTDIR")
  if [ -z "$base" ] && [ "$HEARTH_ONLY" = 1 ]; then
    base=$(sed -n 's/.*(raw JSON: `\([^`]*\)\/`.*/\1/p' "$ROOT/BENCHMARKS.md" 2>/dev/null | head -1)
    [ -n "$base" ] && base="$ROOT/$base"
    # The folders the report already takes other workloads from (e.g. the login flood's), after this
    # run: report.py takes each workload from the first folder that has it.
    while read -r e; do
      [ -n "$e" ] && [ -d "$ROOT/$e" ] && [ "$(cd "$ROOT/$e" && pwd)" != "$(cd "$OUTDIR" && pwd)" ] && extras+=(--extra "$ROOT/$e")
    done < <(grep -o -- '--extra [^` ]*' "$ROOT/BENCHMARKS.md" 2>/dev/null | sed 's/^--extra //' | sort -u)
  fi
  if [ -n "$base" ] && [ -d "$base" ] && [ "$(cd "$base" && pwd)" != "$(cd "$OUTDIR" && pwd)" ]; then
    say "report: $base, with this run's results (then $(( ${#extras[@]} / 2 - 1 )) earlier runs') for the workloads it lacks"
    "$PY" "$BENCH/scripts/report.py" "$base" "${extras[@]}" --md "$ROOT/BENCHMARKS.md" --svg "$BENCH/ratios.svg" \
      && say "wrote BENCHMARKS.md and bench/ratios.svg"
  else
    "$PY" "$BENCH/scripts/report.py" "$OUTDIR" --md "$ROOT/BENCHMARKS.md" --svg "$BENCH/ratios.svg" \
      && say "wrote BENCHMARKS.md and bench/ratios.svg"
  fi
fi
