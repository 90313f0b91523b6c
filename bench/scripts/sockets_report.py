"""BENCHMARKS.md's section on sockets at the machine's limit (bench/sockets.sh, issue #36), and
bench/sockets.svg.

report.py calls section(): it finds the newest bench/results/*/sockets.json and returns its
Markdown lines (and draws the chart), or nothing when no such run was made.
"""
import glob
import json
import os
from html import escape


def newest(bench_dir):
    runs = sorted(glob.glob(os.path.join(bench_dir, "results", "*", "sockets.json")))
    return runs[-1] if runs else None


def f(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, (int, float)) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def rows_of(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def section(bench_dir, md_dir, svg_path):
    path = newest(bench_dir)
    if not path:
        return []
    rows = rows_of(path)
    folder = os.path.dirname(path)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    rel = os.path.relpath(folder, md_dir)
    out = ["## Sockets at the machine's limit (issue #36)", "",
           f"Generated from `{rel}/sockets.json` (`bench/sockets.sh`, commit {meta.get('commit')}, {meta.get('when')}; "
           f"open files per process capped at {meta.get('open_files_hard')} here). Servers are `hearth-bench serve` "
           "on one PostgreSQL; clients are `hearth-bench bench ws` processes on the same 2 cores, each spreading its "
           "sockets over loopback addresses of its own. One run.", ""]
    if meta.get("note"):
        out += [f"> Note on this run: {meta['note']}", ""]
    out += ["| measurement | target | result |", "|---|---|---|"]
    chart = []
    for r in rows:
        res = r.get("result") or {}
        part = r["part"]
        if part == "base":
            out.append(f"| RSS of an idle `hearth serve` on an external database | < 30 MiB "
                       f"| {f(res.get('rss_idle_mib'))} MiB idle, {f(res.get('rss_after_two_pages_mib'))} MiB after two pages |")
        elif part == "one":
            out.append(f"| WebSockets held by one instance | 19,000 at ≤ 4 KiB each "
                       f"| {f(res.get('connected'), 0)} of {f(res.get('clients'), 0)} ({f(res.get('connect_failed'), 0)} refused), "
                       f"{f(res.get('kb_per_conn'))} KiB each over a base of {f(res.get('server_rss_before_mb'))} MiB; "
                       f"holding them: {f(res.get('server_cpu_pct_held'))} % of a core over {f(res.get('hold_s'), 0)} s |")
        elif part == "fanout":
            n, floor = r.get("instances"), r.get("side") == "floor"
            where = (f"{n} `bench ws-floor` server{'s' if n != 1 else ''} (no database or channel layer; the sender "
                     "writes to each): the machine's floor" if floor else f"{n} instance{'s' if n != 1 else ''}")
            out.append(f"| one group of {f(res.get('connected'), 0)} sockets on {where}, "
                       f"{res.get('rate')} messages/s × {res.get('messages')} | {'–' if floor else 'p99 ≤ 100 ms, none lost'} "
                       f"| p50 {f(res.get('p50_ms'), 2)} ms, p99 {f(res.get('p99_ms'), 2)} ms, max {f(res.get('max_ms'), 1)} ms; "
                       f"lost {f(res.get('lost'), 0)} of {f(res.get('expected'), 0)} |")
            chart.append((f"{'floor: ' if floor else ''}fan-out 10k, {n} {'server' if floor else 'instance'}"
                          f"{'s' if n != 1 else ''}", res.get("p99_ms"), 100))
        elif part == "many":
            rss = r.get("server_rss_kib") or []
            lo, hi = res.get("p50_ms_range") or [None, None]
            floor = r.get("side") == "floor"
            what = ("the same on `bench ws-floor` servers (no database or channel layer; the sender writes to each): "
                    "the machine's floor" if floor else
                    f"{f(res.get('connected'), 0)} sockets over {r.get('instances')} instances "
                    f"({res.get('processes')} client processes), then broadcasts sent to one instance")
            out.append(f"| {what}, {res.get('messages')} broadcasts at {res.get('rate')}/s "
                       f"| {'–' if floor else '100,000, p99 ≤ 1 s, none lost'} "
                       f"| {f(res.get('connected'), 0)} connected, {f(res.get('connect_failed'), 0)} refused; "
                       f"holding them: {f(r.get('servers_cpu_pct_held'))} % of a core for all servers; "
                       f"server RSS {f(min(rss) / 1024 if rss else None, 0)}–{f(max(rss) / 1024 if rss else None, 0)} MiB each; "
                       f"p50 {f(lo, 1)}–{f(hi, 1)} ms, p99 ≤ {f(res.get('p99_ms_max'), 1)} ms (the worst process's), "
                       f"max {f(res.get('max_ms'), 1)} ms; lost {f(res.get('lost'), 0)} of {f(res.get('expected'), 0)} |")
            name = "floor: broadcast to" if floor else "broadcast to"
            chart.append((f"{name} {f(res.get('connected'), 0)} at {res.get('rate')}/s", res.get("p99_ms_max"), 1000))
    out += ["", f"![p99 delivery against its target]({os.path.relpath(svg_path, md_dir)})", "",
            "The p99 of the many-instance broadcast is the largest of the receiving processes' p99s, an upper bound "
            "of the p99 over all deliveries. Commands: `bench/sockets.sh` (knobs at its top).", ""]
    write_svg(svg_path, chart)
    return out


def write_svg(path, chart):
    """Each fan-out's p99 as a share of its target (100 % = the target)."""
    W, left, right, rowh, top = 860, 300, 160, 30, 56
    H = top + rowh * len(chart) + 50
    span = W - left - right

    def x(v):
        return left + min(v, 150) / 150 * span

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="600">p99 delivery as a share of its target</text>',
         f'<text x="{left}" y="40" fill="#555">100 % = the target (100 ms for 10k receivers, 1 s for the broadcast); shorter is better</text>']
    for v in range(0, 151, 25):
        xx = x(v)
        s.append(f'<line x1="{xx:.1f}" y1="{top - 6}" x2="{xx:.1f}" y2="{H - 40}" stroke="{"#c33" if v == 100 else "#eee"}"/>')
        s.append(f'<text x="{xx:.1f}" y="{H - 24}" text-anchor="middle" fill="#555">{v} %</text>')
    for i, (name, p99, target) in enumerate(chart):
        y = top + i * rowh
        s.append(f'<text x="{left - 8}" y="{y + 18}" text-anchor="end">{escape(name)}</text>')
        if p99 is None:
            continue
        pct = p99 / target * 100
        s.append(f'<rect x="{left}" y="{y + 5}" width="{max(1, x(pct) - left):.1f}" height="{rowh - 10}" '
                 f'fill="{"#2e8b57" if pct <= 100 else "#d9534f"}"/>')
        s.append(f'<text x="{x(pct) + 6:.1f}" y="{y + 18}">{p99:,.1f} ms ({pct:.0f} %)</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")
