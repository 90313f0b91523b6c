#!/usr/bin/env bash
# bench/setup.sh -- idempotent setup of everything bench/run.sh needs, except Hearth itself
# (run.sh builds it). Safe to run repeatedly; does nothing that is already done.
#   - apt: wrk (and redis-server / postgresql client tools if missing)
#   - Python venv for the Django peer at $BENCH_VENV (default bench/.venv), pinned requirements
#   - npm packages (graphile-worker, pg, ws) into bench/node_modules
#   - Postgres (127.0.0.1:5432, user postgres, trust auth) and Redis (127.0.0.1:6379) must be
#     running or startable; Redis is started without persistence if it is not answering
#   - databases: $BENCH_PEER_DB (bench_peer: the peer's data, procrastinate's and graphile-worker's
#     schemas) and $HEARTH_BENCH_DB (hearth_bench: Hearth's own database; Hearth seeds bench_posts
#     itself: `hearth-bench serve` and `hearth-bench bench http-floor` create and fill it)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_VENV="${BENCH_VENV:-$HERE/.venv}"
PGHOST="${PGHOST:-127.0.0.1}"; PGPORT="${PGPORT:-5432}"; PGUSER_="${PGUSER_:-postgres}"
BENCH_PEER_DB="${BENCH_PEER_DB:-bench_peer}"
HEARTH_BENCH_DB="${HEARTH_BENCH_DB:-hearth_bench}"
REDIS_PORT="${REDIS_PORT:-6379}"
log() { printf '[setup] %s\n' "$*"; }

# ---- apt ----------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v psql >/dev/null || need+=(postgresql-client)
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && ! command -v redis-server >/dev/null; then need+=(redis-server); fi
if ((${#need[@]})); then
  log "apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v node >/dev/null || { log "node (>= 20) is required"; exit 1; }

# ---- Python venv ---------------------------------------------------------------------
if [ ! -x "$BENCH_VENV/bin/python" ]; then
  log "creating venv $BENCH_VENV"
  python3 -m venv "$BENCH_VENV"
fi
stamp="$BENCH_VENV/.requirements.sha"
sum=$(sha256sum "$HERE/peers/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
  log "pip install -r peers/requirements.txt"
  "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/peers/requirements.txt"
  echo "$sum" > "$stamp"
fi

# ---- npm ------------------------------------------------------------------------------
if [ ! -d "$HERE/node_modules/graphile-worker" ] || [ ! -d "$HERE/node_modules/ws" ]; then
  log "npm install (bench/node_modules)"
  (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# ---- Redis ------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting redis on 127.0.0.1:$REDIS_PORT (no persistence)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --maxclients 20000 --logfile /tmp/hearth-bench-redis.log --pidfile /tmp/hearth-bench-redis.pid
  for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

# ---- Postgres -----------------------------------------------------------------------------
for _ in $(seq 1 30); do pg_isready -q -h "$PGHOST" -p "$PGPORT" && break; sleep 0.5; done
pg_isready -q -h "$PGHOST" -p "$PGPORT" || { log "no Postgres at $PGHOST:$PGPORT"; exit 1; }
psql_() { psql -v ON_ERROR_STOP=1 -qtAX -h "$PGHOST" -p "$PGPORT" -U "$PGUSER_" "$@"; }
for db in "$BENCH_PEER_DB" "$HEARTH_BENCH_DB"; do
  if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$db'")" != 1 ]; then
    log "creating database $db"
    psql_ -d postgres -c "CREATE DATABASE $db"
  fi
done
psql_ -d "$BENCH_PEER_DB" -f "$HERE/db/seed.sql" >/dev/null
log "$BENCH_PEER_DB.bench_posts rows: $(psql_ -d "$BENCH_PEER_DB" -c 'SELECT count(*) FROM bench_posts')"
PEER_DSN="postgresql://$PGUSER_@$PGHOST:$PGPORT/$BENCH_PEER_DB"
if [ "$(psql_ -d "$BENCH_PEER_DB" -c "SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL")" != t ]; then
  log "applying procrastinate schema to $BENCH_PEER_DB"
  (cd "$HERE/peers/jobs" && PYTHONPATH=. BENCH_PEER_PG_DSN="$PEER_DSN" \
     "$BENCH_VENV/bin/procrastinate" --app=procrastinate_tasks.app schema --apply >/dev/null)
fi
log "ready (venv $BENCH_VENV, node_modules in bench/, peer db $BENCH_PEER_DB, hearth db $HEARTH_BENCH_DB, redis :$REDIS_PORT)"
