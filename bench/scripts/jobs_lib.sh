# Sourced by jobs-sustained.sh and jobs-bulk.sh (which set ROOT, BENCH, OUTDIR, PG, DB, URL,
# ADMIN and BIN): the build, the run's meta.json, a fresh database per measurement and the
# machine's busy share, shared by both job benchmarks.
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$OUTDIR/logs/run.log" >&2; }

jobs_setup() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    say "cargo build --release -p hearth-bench"
    cargo build --release -p hearth-bench >"$OUTDIR/logs/cargo.log" 2>&1 || { say "build failed"; exit 1; }
  fi
  command -v pgbench >/dev/null || { say "pgbench not found (Debian: postgresql-client)"; exit 1; }
  python3 - "$OUTDIR/meta.json" <<'PY'
import json, os, subprocess, sys
sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
json.dump({"commit": sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -- src bench Cargo.lock") else ""),
           "when": sh("date -u +%Y-%m-%dT%H:%M:%SZ"), "cpus": os.cpu_count(), "note": os.environ.get("NOTE", ""),
           "postgres": sh("psql -qtAX postgres://postgres@" + os.environ.get("PG", "127.0.0.1:5432") + "/postgres -c 'SHOW server_version'")},
          open(sys.argv[1], "w"), indent=1)
PY
}

fresh_db() {
  psql -qtAX "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  # The schema: every migration, applied by the binary itself (a no-op bench run).
  DATABASE_URL="$URL" RUST_LOG=warn "$BIN" migrate >/dev/null 2>&1 ||
    DATABASE_URL="$URL" RUST_LOG=warn "$BIN" bench jobs latency 0 1 >/dev/null 2>&1
}
busy_start() { head -1 /proc/stat >"$OUTDIR/logs/stat0"; }
busy_pct() { # the machine's busy share (not idle, not waiting for I/O) since busy_start, in %
  python3 -c "
a = list(map(int, open('$OUTDIR/logs/stat0').read().split()[1:]))
b = list(map(int, open('/proc/stat').readline().split()[1:]))
d = [y - x for x, y in zip(a, b)]
print(round(100 - 100 * (d[3] + d[4]) / sum(d), 1))"
}
