# Sourced by delay.sh, sockets.sh, jobs-sustained.sh and jobs-bulk.sh (which set ROOT and BENCH): rewrites
# BENCHMARKS.md from the run it was generated from (its "raw JSON:" folder) and its --extra
# folders, so that the sections these scripts add (each from its newest run) are redrawn too.
rewrite_benchmarks() {
  local base e extras=()
  base=$(sed -n 's/.*(raw JSON: `\([^`]*\)\/`.*/\1/p' "$ROOT/BENCHMARKS.md" 2>/dev/null | head -1)
  while read -r e; do [ -n "$e" ] && extras+=(--extra "$ROOT/$e"); done \
    < <(grep -o -- '--extra [^` ]*' "$ROOT/BENCHMARKS.md" 2>/dev/null | sed 's/^--extra //' | sort -u)
  [ -n "$base" ] && python3 "$BENCH/scripts/report.py" "$ROOT/$base" "${extras[@]}" --md "$ROOT/BENCHMARKS.md" \
    --svg "$BENCH/ratios.svg"
}
