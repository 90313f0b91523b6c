"""BENCHMARKS.md's section on a sustained job stream (bench/jobs-sustained.sh, issue #36), and
bench/sustained.svg.

report.py calls section(): it finds the newest bench/results/*/sustained.json and returns its
Markdown lines (and draws the chart), or nothing when no such run was made.
"""
import glob
import json
import os
from html import escape

TARGET_MS = 10


def newest(bench_dir):
    runs = sorted(glob.glob(os.path.join(bench_dir, "results", "*", "sustained.json")))
    return runs[-1] if runs else None


def f(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def section(bench_dir, md_dir, svg_path):
    path = newest(bench_dir)
    if not path:
        return []
    rows = [json.loads(l) for l in open(path) if l.strip()]
    folder = os.path.dirname(path)
    rel = os.path.relpath(folder, md_dir)
    meta_path = os.path.join(folder, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    out = ["## Sustained job stream (issue #36)", "",
           f"Generated from `{rel}/sustained.json` (`bench/jobs-sustained.sh`, commit {meta.get('commit', '?')}, "
           f"{meta.get('when', '?')}). Jobs inserted one per transaction "
           "at a fixed rate while workers drain them; the wait is from just before a job's INSERT (Hearth) or its "
           "transaction start (floor) to its start. The **floor** is pgbench, a C client, running the same INSERT "
           "and the worker's lease and record statements with nothing else: the least this machine and PostgreSQL "
           "need for the stream. Alternately in the same rounds, each on a fresh database; busy = the machine's "
           "CPU not idle over the run (both cores).", ""]
    if meta.get("note"):
        out += [f"> Note on this run: {meta['note']}", ""]
    out += ["| side | round | target rate | achieved rate | jobs | p50 ms | p99 ms | max ms | worst window p99 ms | machine busy |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    series = []
    for r in rows:
        windows = [w for w in (r.get("windows") or []) if w.get("jobs")]
        worst = max((w["p99_ms"] for w in windows if w.get("p99_ms") is not None), default=None)
        out.append(f"| {r['tool']} | {r.get('repeat')} | {f(r.get('target_rate'), 0)}/s | {f(r.get('achieved_rate'), 0)}/s "
                   f"| {f(r.get('n'), 0)} | {f(r.get('p50_ms'), 2)} | {f(r.get('p99_ms'), 2)} | {f(r.get('max_ms'), 1)} "
                   f"| {f(worst, 2)} | {f(r.get('busy_pct'))} % |")
        series.append((f"{r['tool']} (round {r.get('repeat')})", [(w["from_s"], w["p99_ms"]) for w in windows]))
    out += ["", f"![p99 wait per window against the 10 ms target]({os.path.relpath(svg_path, md_dir)})", "",
            "Configs: " + "; ".join(sorted({r.get('config', '') for r in rows})) + ".", ""]
    write_svg(svg_path, series)
    return out


def write_svg(path, series):
    """p99 wait per window of enqueue time, one line per side and round, and the target."""
    W, H, left, right, top, bottom = 860, 340, 60, 190, 50, 40
    xs = [x for _, pts in series for x, _ in pts] or [0]
    ys = [y for _, pts in series for _, y in pts if y is not None] or [TARGET_MS]
    xmax, ymax = max(xs) or 1, max(max(ys), TARGET_MS) * 1.1
    X = lambda v: left + v / xmax * (W - left - right)
    Y = lambda v: top + (1 - v / ymax) * (H - top - bottom)
    colours = ["#3b7dd8", "#2e8b57", "#e08a00", "#8e44ad", "#555", "#c0392b"]
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="600">Sustained stream: p99 wait per window</text>',
         f'<text x="{left}" y="40" fill="#555">ms against seconds of enqueue time; red: the {TARGET_MS} ms target; lower is better</text>']
    for i in range(0, 6):
        v = ymax * i / 5
        s.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{W - right}" y2="{Y(v):.1f}" stroke="#eee"/>')
        s.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" fill="#555">{v:.0f}</text>')
    for i in range(0, 6):
        v = xmax * i / 5
        s.append(f'<text x="{X(v):.1f}" y="{H - bottom + 18}" text-anchor="middle" fill="#555">{v:.0f} s</text>')
    s.append(f'<line x1="{left}" y1="{Y(TARGET_MS):.1f}" x2="{W - right}" y2="{Y(TARGET_MS):.1f}" stroke="#c33" stroke-dasharray="4 3"/>')
    for i, (name, pts) in enumerate(series):
        c = colours[i % len(colours)]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            s.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                     + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts) + '"/>')
        s.append(f'<rect x="{W - right + 12}" y="{top + i * 20}" width="12" height="12" fill="{c}"/>')
        s.append(f'<text x="{W - right + 30}" y="{top + i * 20 + 10}">{escape(name)}</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")
