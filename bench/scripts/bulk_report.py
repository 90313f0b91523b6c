"""BENCHMARKS.md's section on W4's bulk throughput beside its floor (bench/jobs-bulk.sh, issue
#36), and bench/bulk.svg.

report.py calls section(): it finds the newest bench/results/*/bulk.json and returns its
Markdown lines (and draws the chart), or nothing when no such run was made.
"""
import glob
import json
import os
import statistics
from html import escape

TARGET = 50_000


def newest(bench_dir):
    runs = sorted(glob.glob(os.path.join(bench_dir, "results", "*", "bulk.json")))
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
    out = ["## W4 bulk throughput beside its floor (issue #36)", "",
           f"Generated from `{rel}/bulk.json` (`bench/jobs-bulk.sh`, commit {meta.get('commit', '?')}, "
           f"{meta.get('when', '?')}). N jobs enqueued 5,000 per statement while workers drain them; jobs/s = N over "
           "the time from the start of the enqueue to the last job's start (its lease, for the floor), as W4's; "
           "\"to recorded\" ends at the last outcome written instead. The **floor** is pgbench, a C client, running "
           "a plain 5,000-row INSERT and the worker's lease and record statements with nothing else: the most this "
           "machine and PostgreSQL do with those statements. Alternately in the same rounds, each on a fresh "
           "database; busy = the machine's CPU not idle over the run (both cores).", ""]
    if meta.get("note"):
        out += [f"> Note on this run: {meta['note']}", ""]
    out += ["| side | round | jobs | jobs/s | to recorded, jobs/s | seconds | machine busy |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['tool']} | {r.get('repeat')} | {f(r.get('completed'), 0)} of {f(r.get('n'), 0)} "
                   f"| {f(r.get('jobs_per_s'), 0)} | {f(r.get('recorded_jobs_per_s'), 0)} | {f(r.get('total_s'), 2)} "
                   f"| {f(r.get('busy_pct'))} % |")
    sides = {}
    for r in rows:
        if r.get("jobs_per_s"):
            sides.setdefault(r["tool"], []).append(r["jobs_per_s"])
    med = {k: statistics.median(v) for k, v in sides.items()}
    if "hearth" in med and "floor" in med:
        out += ["", f"Median: Hearth **{f(med['hearth'], 0)}** jobs/s, the floor **{f(med['floor'], 0)}** jobs/s: Hearth at "
                f"**{100 * med['hearth'] / med['floor']:.1f} %** of the floor. The target, {TARGET:,} jobs/s, is "
                + ("within" if med["floor"] >= TARGET else "beyond") + " what the floor reaches on this machine."]
    out += ["", f"![jobs/s per side against the {TARGET:,} target]({os.path.relpath(svg_path, md_dir)})", "",
            "Configs: " + "; ".join(sorted({r.get('config', '') for r in rows})) + ".", ""]
    write_svg(svg_path, sides)
    return out


def write_svg(path, sides):
    """Median jobs/s per side, the rounds' range as a whisker, and the target as a line."""
    W, H, left, right, top, bottom = 640, 300, 80, 30, 50, 40
    names = sorted(sides, key=lambda k: k != "floor")
    ymax = max([TARGET] + [max(v) for v in sides.values()]) * 1.1
    Y = lambda v: top + (1 - v / ymax) * (H - top - bottom)
    band = (W - left - right) / max(len(names), 1)
    colours = {"floor": "#888", "hearth": "#3b7dd8"}
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="600">W4 bulk: jobs per second</text>',
         f'<text x="{left}" y="40" fill="#555">median of the rounds, whisker: min–max; red: the {TARGET:,} target; higher is better</text>']
    for i in range(0, 6):
        v = ymax * i / 5
        s.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{W - right}" y2="{Y(v):.1f}" stroke="#eee"/>')
        s.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" fill="#555">{v:,.0f}</text>')
    for i, name in enumerate(names):
        vals = sides[name]
        m, x = statistics.median(vals), left + band * i + band * 0.25
        s.append(f'<rect x="{x:.1f}" y="{Y(m):.1f}" width="{band * 0.5:.1f}" height="{Y(0) - Y(m):.1f}" '
                 f'fill="{colours.get(name, "#2e8b57")}"/>')
        cx = x + band * 0.25
        s.append(f'<line x1="{cx:.1f}" y1="{Y(min(vals)):.1f}" x2="{cx:.1f}" y2="{Y(max(vals)):.1f}" stroke="#222"/>')
        s.append(f'<text x="{cx:.1f}" y="{Y(m) - 6:.1f}" text-anchor="middle">{m:,.0f}</text>')
        s.append(f'<text x="{cx:.1f}" y="{H - bottom + 18}" text-anchor="middle">{escape(name)}</text>')
    s.append(f'<line x1="{left}" y1="{Y(TARGET):.1f}" x2="{W - right}" y2="{Y(TARGET):.1f}" stroke="#c33" stroke-dasharray="4 3"/>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")
