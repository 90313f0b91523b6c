"""BENCHMARKS.md's section on a database a network hop away (bench/delay.sh), and bench/delay.svg.

report.py calls section(): it finds the newest bench/results/*/delay.json and returns its
Markdown lines (and draws the chart), or nothing when no delayed run was made.
"""
import glob
import json
import os
from html import escape


def newest(bench_dir):
    runs = sorted(glob.glob(os.path.join(bench_dir, "results", "*", "delay.json")))
    return runs[-1] if runs else None


def load(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    sides = []
    for r in rows:
        if r["side"] not in sides:
            sides.append(r["side"])
    return rows, sides


def pick(rows, side, workload, path=None):
    for r in rows:
        if r["side"] == side and r["workload"] == workload and (path is None or r.get("path") == path):
            return r
    return None


def f(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def res(r, key):
    return r["result"].get(key) if r and r.get("result") else None


def per(r, denom_key):
    if not r or r.get("turns") is None or not r.get(denom_key):
        return None
    return r["turns"] / r[denom_key]


def label(side):
    return "loopback, no proxy" if side == "direct" else f"{side} each way"


def section(bench_dir, md_dir, svg_path):
    path = newest(bench_dir)
    if not path:
        return []
    rows, sides = load(path)
    folder = os.path.dirname(path)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    rel = os.path.relpath(folder, md_dir)
    out = ["## PostgreSQL a network hop away (issue #35)", "",
           f"Generated from `{rel}/delay.json` (`bench/delay.sh`, commit {meta.get('commit')}, {meta.get('when')}). "
           "A cloud database is 0.3–2 ms away; these machines' kernel has no netem, so `hearth-bench bench db-delay` "
           "(a TCP proxy, `bench/src/db_delay.rs`) holds every chunk of bytes the given time in each direction. "
           "`0ms` is the proxy alone (its own cost); *measured RTT* is the p50 of 2,000 sequential `SELECT 1` "
           "through it (`bench db-rtt`). One run per delay, each on a fresh server.", ""]
    if meta.get("note"):
        out += [f"> Note on this run: {meta['note']}", ""]
    out += ["| database | measured RTT p50 ms | W1 req/s | W1 p50 / p99 ms | W1 pipelined req/s | W4 jobs/s "
            "| W4 pickup p50 ms | W5 p50 / p99 ms (lost) | W6 p50 / p99 ms (lost) |",
            "|---|---|---|---|---|---|---|---|---|"]
    chart = []
    for s in sides:
        rtt, w1, w1p, w4, w4l, w5, w6 = (pick(rows, s, w) for w in ("rtt", "w1", "w1p", "w4", "w4lat", "w5", "w6"))
        out.append(
            f"| {label(s)} | {f(res(rtt, 'p50_ms'), 3)} | {f(res(w1, 'rps'), 0)} "
            f"| {f(res(w1, 'p50_ms'), 2)} / {f(res(w1, 'p99_ms'), 2)} | {f(res(w1p, 'rps'), 0)} "
            f"| {f(res(w4, 'jobs_per_s'), 0)} "
            f"| {f(res(w4l, 'p50_ms'), 2)} "
            f"| {f(res(w5, 'p50_ms'), 2)} / {f(res(w5, 'p99_ms'), 2)} ({f(res(w5, 'lost'), 0)}) "
            f"| {f(res(w6, 'p50_ms'), 2)} / {f(res(w6, 'p99_ms'), 2)} ({f(res(w6, 'lost'), 0)}) |")
        chart.append((s, res(w1, "rps"), res(w1p, "rps"), res(w4, "jobs_per_s")))
    out += ["", f"![W1 and W4 against the database's delay]({os.path.relpath(svg_path, md_dir)})", "",
            "**Round trips to the database** (turns: client bytes after server bytes on a connection, counted by the "
            "proxy; a pipelined batch is one). Pages: one request at a time for a few seconds (`wrk -t1 -c1`), less the "
            "turns the idle server's background made over as long; `/posts` is answered by the page cache. W4: turns of "
            "`bench jobs both` (enqueue, work, complete, and the latency run) per job. W5 and W6: turns of the whole run "
            "(connecting every client included) per message sent.", "",
            "| database | /bench/page | /bench/page-pipelined | / (home) | /posts | /healthz | per job (W4) "
            "| per W5 message | per W6 message |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s in sides:
        if s == "direct":
            continue
        cells = [f(per(pick(rows, s, "trips", p), "requests"), 2)
                 for p in ("/bench/page", "/bench/page-pipelined", "/", "/posts", "/healthz")]
        cells += [f(per(pick(rows, s, "w4"), "n"), 2), f(per(pick(rows, s, "w5"), "sent"), 1),
                  f(per(pick(rows, s, "w6"), "sent"), 1)]
        out.append(f"| {label(s)} | " + " | ".join(cells) + " |")
    out += ["", "Commands: `bench/delay.sh` (knobs at its top); by hand, `hearth-bench bench db-delay --delay 1ms "
            "--listen 127.0.0.1:6543` and `DATABASE_URL=postgres://postgres@127.0.0.1:6543/hearth_bench "
            "hearth-bench serve`.", ""]
    write_svg(svg_path, chart)
    return out


def write_svg(path, chart):
    """W1 and W4 at each delay as a percentage of loopback without the proxy."""
    names = ("W1 req/s", "W1 pipelined req/s", "W4 jobs/s")
    base = dict(zip(names, chart[0][1:])) if chart and chart[0][0] == "direct" else {}
    colours = dict(zip(names, ("#3b7dd8", "#6a3d9a", "#e08a1e")))
    rows = []
    for side, *values in chart:
        for name, v in zip(names, values):
            b = base.get(name)
            if v is not None and b:
                rows.append((f"{name}, {label(side)}", v / b * 100, v, colours[name]))
    W, left, right, rowh, top = 860, 300, 120, 26, 56
    H = top + rowh * len(rows) + 50
    span = W - left - right

    def x(v):
        return left + min(v, 120) / 120 * span

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         '<text x="20" y="22" font-size="15" font-weight="600">W1 (through the pool and pipelined) and W4 with the database a hop away</text>',
         '<text x="20" y="40" fill="#555">100 % = the same workload on loopback without the proxy</text>']
    for v in range(0, 121, 20):
        xx = x(v)
        s.append(f'<line x1="{xx:.1f}" y1="{top - 6}" x2="{xx:.1f}" y2="{H - 40}" stroke="{"#ccc" if v in (0, 100) else "#eee"}"/>')
        s.append(f'<text x="{xx:.1f}" y="{H - 24}" text-anchor="middle" fill="#555">{v} %</text>')
    for i, (name, pct, v, colour) in enumerate(rows):
        y = top + i * rowh
        s.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(name)}</text>')
        s.append(f'<rect x="{left}" y="{y + 4}" width="{max(1, x(pct) - left):.1f}" height="{rowh - 8}" fill="{colour}"/>')
        s.append(f'<text x="{x(pct) + 6:.1f}" y="{y + 15}">{pct:.0f} % ({v:,.0f})</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")
