#!/usr/bin/env python3
"""bench/scripts/report.py -- turn a bench/run.sh results folder into BENCHMARKS.md and ratios.svg.

    report.py OUTDIR --md BENCHMARKS.md --svg bench/ratios.svg
    report.py OUTDIR --extra OTHER_OUTDIR ... --md BENCHMARKS.md --svg bench/ratios.svg
    report.py --line FILE.json        (one-line summary of one measurement, for run.sh's progress)

--extra (repeatable) takes from another results folder the workloads OUTDIR has no results for
(e.g. a later `WORKLOADS=login` run beside the last full run); BENCHMARKS.md names each folder used.

Stdlib only. Every cell is "median [min-max]" over the rounds; ratios are Hearth's median over the
peer's median from the same run. The chart is hand-made SVG (log scale, one bar per ratio, a tick at
the issue's target).
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys
from html import escape

import bulk_report
import delay_report
import sockets_report
import sustained_report

TITLES = {
    "w1": "W1 page (one query, template), wrk c={conns}",
    "w2": "W2 cached page (framework page cache), wrk c={conns}",
    "w3": "W3 gather (3 concurrent upstream GETs, 50 ms each), wrk c={conns}",
    "w3c256": "W3 gather, wrk c=256",
    "w5": "W5 WebSocket chat, Node `ws` client: {wsc} receivers, {wsm} msgs at {wsr}/s",
    "w5rust": "W5 WebSocket chat, Rust client (`hearth-bench bench ws`): {wsc} receivers, {wsm} msgs at {wsr}/s",
    "w6": "W6 server-sent events, Node client: {ssec} streams, {ssem} msgs at {sser}/s",
    "w6rust": "W6 server-sent events, Rust client (`hearth-bench bench sse`): {ssec} streams, {ssem} msgs at {sser}/s",
    "w4tp": "W4 jobs, throughput: {jobs} no-op jobs bulk-enqueued, first enqueue to last job start",
    "w4lat": "W4 jobs, pickup latency: {latn} jobs one at a time, 20 ms apart",
    "login1": "one account (flood0)",
    "loginrand": "random accounts (flood0..flood{last})",
}
LOGIN = ("login1", "loginrand")
# Issue #34: one request at a time (latency.py's probes, in table order), W2 per protocol (h2load).
LATENCY_PROBES = (
    ("healthz", "`GET /healthz`"),
    ("cached", "`GET /bench/cached`: W2's page, from the page cache"),
    ("cached304", "`GET /bench/cached` with `If-None-Match`: the same page revalidated"),
    ("page", "`GET /bench/page`: W1's page, not cached (a query and a template)"),
)
W2PROTO = (
    ("h1", "HTTP/1.1, cleartext"),
    ("h2c", "HTTP/2 cleartext (h2c, prior knowledge)"),
    ("h1tls", "HTTP/1.1 over TLS"),
    ("h2tls", "HTTP/2 over TLS (ALPN h2)"),
)
FLOOR_LABEL = "floor (`hearth-bench bench ws-floor`)"
HTTP_FLOOR_LABEL = "floor (`hearth-bench bench http-floor`)"
HTTP = ("w1", "w2", "w3", "w3c256")
# What the HTTP floor server (bench/src/http_floor.rs) does for each workload: a bare hyper server.
FLOOR_WHAT = {
    "w1": "a bare hyper server that runs the same query over one pipelined connection and writes the page "
          "rendered once at start, with no router, middleware, session, template or pool.",
    "w2": "a bare hyper server that writes the same stored bytes, with no router, middleware, cache lookup or "
          "revalidation.",
    "w3": "a bare hyper server that makes the three upstream calls at once on one keep-alive client and writes "
          "their bodies unparsed.",
}
FLOOR_WHAT["w3c256"] = FLOOR_WHAT["w3"]
WS = ("w5", "w5rust", "w6", "w6rust")


def load(outdir):
    rows = []
    for f in sorted(glob.glob(os.path.join(outdir, "*-r*-*.json"))):
        try:
            rows.append(json.load(open(f)))
        except (OSError, ValueError):
            pass
    return rows


def errors(r):
    return sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))


def summary(workload, r):
    if r is None:
        return "no result"
    if workload in HTTP:
        return f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {errors(r)}"
    if workload in WS:
        return (f"{r.get('deliveries_per_s', 0):,.0f} deliveries/s, p50 {r.get('p50_ms')} ms, "
                f"p99 {r.get('p99_ms')} ms, lost {r.get('lost')} of {r.get('expected')}")
    if workload == "w4tp":
        return f"{r.get('jobs_per_s', 0):,.0f} jobs/s (enqueue {r.get('enqueue_s')} s, ok={r.get('ok')})"
    if workload == "w4lat":
        return f"pickup p50 {r.get('p50_ms')} ms, p99 {r.get('p99_ms')} ms"
    if workload == "latency":
        return "; ".join(f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms ({v['status']}, errors {v['errors']})"
                         for k, v in r.get("probes", {}).items())
    if workload == "w2proto":
        return (f"{r.get('protocol')}: {r['rps']:,.0f} req/s, p50 {r.get('p50_ms')} ms, p99 {r.get('p99_ms')} ms, "
                f"errors {errors(r)}")
    if workload in LOGIN:
        st = ", ".join(f"{k}: {v}" for k, v in r.get("statuses", {}).items())
        return (f"{r.get('requests')} requests ({st}), {r.get('hashes_computed'):.0f} hashes, at most "
                f"{r.get('hashes_running_peak') or 0:.0f} at once, VmHWM {r['memory_mib_before'].get('VmHWM')} -> "
                f"{r['memory_mib_after'].get('VmHWM')} MiB")
    return json.dumps(r)


def num(v, nd=1):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{nd}f}"


def cell(vals, nd=1, unit=""):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return f"{num(med, nd)}{unit}"
    return f"{num(med, nd)}{unit} [{num(min(vals), nd)}–{num(max(vals), nd)}]"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fx(v):
    return "-" if v is None else (f"{v:,.0f}×" if v >= 100 else f"{v:.1f}×" if v >= 10 else f"{v:.2f}×")


def is_smoke(meta):
    return (meta["rounds"] < 3 or meta["duration_s"] < 10 or meta["ws"]["clients"] < 1000
            or meta["jobs"]["n"] < 20000 or meta["sse"]["clients"] < 500)


def report(outdir, md_path, svg_path, extras=()):
    meta = json.load(open(os.path.join(outdir, "meta.json")))
    rows = load(outdir)
    by = {}
    for row in rows:
        by.setdefault((row["workload"], row["side"]), []).append(row["result"])
    # Workloads the main folder lacks, from the extra folders (the first one that has them).
    mine = {w for (w, _) in by}
    used = []  # (folder, its meta, the workloads taken from it)
    for extra in extras:
        taken = {}
        for row in load(extra):
            if row["workload"] not in mine:
                taken.setdefault((row["workload"], row["side"]), []).append(row["result"])
        if taken:
            by.update(taken)
            mine |= {w for (w, _) in taken}
            used.append((extra, json.load(open(os.path.join(extra, "meta.json"))), sorted({w for (w, _) in taken})))
    source = {w: (e, m) for e, m, ws in used for w in ws}
    md_dir = os.path.dirname(os.path.abspath(md_path))
    fmtargs = dict(conns=meta["conns"], wsc=meta["ws"]["clients"], wsm=meta["ws"]["messages"], wsr=meta["ws"]["rate"],
                   ssec=meta["sse"]["clients"], ssem=meta["sse"]["messages"], sser=meta["sse"]["rate"],
                   jobs=f"{meta['jobs']['n']:,}", latn=meta["jobs"]["latency_n"])

    def col(w, side, key):
        return [r.get(key) if r else None for r in by.get((w, side), [])]

    smoke = is_smoke(meta)
    out = ["# Benchmarks: Hearth and the Django peer stack, side by side", ""]
    if smoke:
        out += [f"> **SMOKE RUN — not the real figures.** {meta['rounds']} round(s), {meta['duration_s']} s per HTTP "
                f"measurement, W5 {meta['ws']['clients']} clients, W6 {meta['sse']['clients']} streams, W4 N="
                f"{meta['jobs']['n']:,}, on a machine that was busy with other work. It only shows that the "
                "suite runs end to end. Run `bench/run.sh` (defaults: 3 rounds × 10 s) on a quiet machine for "
                "the figures.", ""]
    out += [
        f"Generated by `bench/run.sh` on {meta['started_utc']} (raw JSON: `{os.path.relpath(outdir, os.path.dirname(os.path.abspath(md_path)))}/`). "
        "Hearth (release build, its own database) and the peer (`bench/peers`: Django 5 ASGI under uvicorn with "
        f"{meta['uvicorn_workers']} workers, Channels + channels_redis, Redis page cache, httpx; Celery, procrastinate "
        "and graphile-worker for W4) implement the same protocol (`bench/PROTOCOL.md`) and are measured by the same "
        f"clients, **alternately**: for each workload, {meta['rounds']} rounds of Hearth then the peer, each on a freshly "
        "started server. Cells are median [min–max] over the rounds; the ratio is Hearth's median over the peer's.",
        "",
        "![Hearth/peer ratios against the targets](bench/ratios.svg)",
        "",
    ]
    if meta.get("note"):
        out += [f"> Note on this run: {meta['note']}", ""]
    for e, m, ws in used:
        what = ("The login flood", "is") if set(ws) <= set(LOGIN) else ("These workloads", "are")
        out += [f"> {what[0]} ({', '.join(ws)}) {what[1]} not from that run but from a later run of {' '.join(m['workloads'])} "
                f"alone, `{os.path.relpath(e, md_dir)}/` ({m['started_utc']}, Hearth {m['machine'].get('hearth_commit', '?')}, "
                f"{m['rounds']} rounds), added to this report by `bench/scripts/report.py {os.path.relpath(outdir, md_dir)} "
                f"--extra {os.path.relpath(e, md_dir)}`; every other figure is the full run's."
                + (f" Note on that run: {m['note'].rstrip('.')}." if m.get("note") else "")
                + machine_diff(meta["machine"], m["machine"]), ""]
    chart = []  # (label, ratio, target)
    floors = []  # (label, hearth, peer, floor, hearth/peer, hearth as % of floor)
    verdicts = []

    for w in ("w1", "w2", "w3", "w3c256"):
        if not (by.get((w, "hearth")) or by.get((w, "peer"))):
            continue
        out += [f"## {TITLES[w].format(**fmtargs)}", "",
                "| | req/s | p50 ms | p99 ms | errors (non-2xx, timeouts, socket) | runs |", "|---|---|---|---|---|---|"]
        sides = ("hearth", "peer", "floor") if by.get((w, "floor")) else ("hearth", "peer")
        for side in sides:
            rs = [r for r in by.get((w, side), []) if r]
            out.append(f"| {HTTP_FLOOR_LABEL if side == 'floor' else side} | {cell(col(w, side, 'rps'))} | {cell(col(w, side, 'p50_ms'), 2)} | "
                       f"{cell(col(w, side, 'p99_ms'), 2)} | {cell([errors(r) for r in rs], 0)} | {len(rs)} |")
        h, p = med(col(w, "hearth", "rps")), med(col(w, "peer", "rps"))
        hp50, hp99 = med(col(w, "hearth", "p50_ms")), med(col(w, "hearth", "p99_ms"))
        rr = ratio(h, p)
        out += ["", f"Hearth/peer requests/s: **{fx(rr)}**; p99 peer/Hearth: "
                    f"{fx(ratio(med(col(w, 'peer', 'p99_ms')), hp99))}.", ""]
        f = med(col(w, "floor", "rps"))
        if f:
            out += [f"Hearth reaches **{num(100 * h / f if h else None)} %** of the floor's requests/s "
                    f"({num(f)} req/s): {FLOOR_WHAT[w]}", ""]
            floors.append((w.upper().replace("C256", " c=256") + " req/s", num(h), num(p), num(f), fx(rr),
                           100 * h / f if h else None))
        target = None
        if w == "w1":
            target = 40
            verdicts.append(("W1 ≥ 40× peer req/s, p99 ≤ 20 ms", rr is not None and rr >= 40 and hp99 is not None and hp99 <= 20,
                             f"{fx(rr)}, p99 {num(hp99, 2)} ms"))
        elif w == "w2":
            target = 150
            verdicts.append(("W2 ≥ 150× peer req/s, p99 ≤ 5 ms", rr is not None and rr >= 150 and hp99 is not None and hp99 <= 5,
                             f"{fx(rr)}, p99 {num(hp99, 2)} ms"))
        elif w in ("w3", "w3c256"):
            c = 256 if w == "w3c256" else meta["conns"]
            ideal = c / 0.050
            out += [f"Ideal throughput at c={c} is {ideal:,.0f} req/s (connections ÷ 50 ms); Hearth reaches "
                    f"{num(100 * h / ideal if h else None)} % of it.", ""]
            if w == "w3c256":
                target = ratio(0.9 * ideal, p)
                verdicts.append(("W3 c=256: p50 ≤ 60 ms and ≥ 90 % of ideal throughput",
                                 hp50 is not None and hp50 <= 60 and h is not None and h >= 0.9 * ideal,
                                 f"p50 {num(hp50, 2)} ms, {num(100 * h / ideal if h else None)} % of ideal"))
        chart.append((w.upper().replace("C256", " c=256") + " req/s", rr, target))

    if by.get(("latency", "hearth")):
        section, verdict = latency_section(by, *source.get("latency", (outdir, meta)), md_dir)
        out += section
        verdicts.append(verdict)
    if any(by.get(("w2proto", p)) for p, _ in W2PROTO):
        out += w2proto_section(by, col, *source.get("w2proto", (outdir, meta)), md_dir)

    for w in WS:
        if not (by.get((w, "hearth")) or by.get((w, "peer"))):
            continue
        out += [f"## {TITLES[w].format(**fmtargs)}", "",
                "| | deliveries/s | p50 ms | p99 ms | lost | connected | client CPU % of a core | runs |",
                "|---|---|---|---|---|---|---|---|"]
        sides = ("hearth", "peer", "floor") if by.get((w, "floor")) else ("hearth", "peer")
        for side in sides:
            rs = [r for r in by.get((w, side), []) if r]
            out.append(f"| {FLOOR_LABEL if side == 'floor' else side} | {cell(col(w, side, 'deliveries_per_s'))} | {cell(col(w, side, 'p50_ms'), 2)} | "
                       f"{cell(col(w, side, 'p99_ms'), 2)} | {cell(col(w, side, 'lost'), 0)} of "
                       f"{num(med(col(w, side, 'expected')), 0)} | {cell(col(w, side, 'connected'), 0)} | "
                       f"{cell(col(w, side, 'client_cpu_pct'))} | {len(rs)} |")
        hd, pd = med(col(w, "hearth", "deliveries_per_s")), med(col(w, "peer", "deliveries_per_s"))
        hp50, hp99 = med(col(w, "hearth", "p50_ms")), med(col(w, "hearth", "p99_ms"))
        pp99 = med(col(w, "peer", "p99_ms"))
        lost = max([v for v in col(w, "hearth", "lost") if v is not None] or [None], key=lambda v: v or 0)
        out += ["", f"Hearth/peer deliveries/s: **{fx(ratio(hd, pd))}**; p99 peer/Hearth: **{fx(ratio(pp99, hp99))}**.", ""]
        fp50 = med(col(w, "floor", "p50_ms"))
        if fp50 is not None and hp50 is not None:
            floors.append((f"{w.upper()} p50 latency (ms)", num(hp50, 2), num(med(col(w, "peer", "p50_ms")), 2),
                           num(fp50, 2), fx(ratio(med(col(w, "peer", "p50_ms")), hp50)), 100 * fp50 / hp50 if hp50 else None))
            out += [f"The floor server (`hearth-bench bench ws-floor`) does no work of its own: no database, no channel layer, "
                    "one nonblocking write per socket straight from the task that read the message. Its latency is what "
                    "the kernel's loopback TCP and the load client cost on the same two cores. Its p50 is "
                    f"**{num(fp50, 2)} ms**; Hearth's median is {hp50 - fp50:+.2f} ms from it, a difference that includes "
                    "the database round trips Hearth's channel layer makes for every message (a publish, then a read "
                    "by each instance's listener), which the floor does not make.", ""]
        if w in ("w5", "w5rust"):
            offered = med(col(w, "hearth", "offered_per_s"))
            # deliveries/s is measured over (last receive - first send), which includes the ramp; count
            # "equal to the offered rate" with 5 % slack.
            verdicts.append((f"{w.upper()}: 0 lost, deliveries/s = offered, p50 ≤ 5 ms, p99 ≤ 50 ms",
                             lost == 0 and hd is not None and offered and hd >= 0.95 * offered
                             and hp50 is not None and hp50 <= 5 and hp99 is not None and hp99 <= 50,
                             f"lost {lost}, {num(hd)} of {num(offered)} /s, p50 {num(hp50, 2)} ms, p99 {num(hp99, 2)} ms"
                             + (f" (floor server: p50 {num(fp50, 2)} ms)" if fp50 is not None else "")))
            chart.append((f"{w.upper()} deliveries/s", ratio(hd, pd), ratio(offered, pd)))
            pp50 = med(col(w, "peer", "p50_ms"))
            chart.append((f"{w.upper()} p50 (peer/Hearth)", ratio(pp50, hp50), ratio(pp50, 5)))
        else:
            verdicts.append((f"{w.upper()}: 0 lost, p99 ≤ 20 ms", lost == 0 and hp99 is not None and hp99 <= 20,
                             f"lost {lost}, p99 {num(hp99, 2)} ms"))
            chart.append((f"{w.upper()} p99 (peer/Hearth)", ratio(pp99, hp99), ratio(pp99, 20)))

    tools = [t for t in ["hearth", "graphile-worker", "celery", "procrastinate"] if by.get(("w4tp", t)) or by.get(("w4lat", t))]
    tools += sorted({s for (w, s) in by if w in ("w4tp", "w4lat")} - set(tools))
    if tools:
        out += [f"## W4 background jobs", "", f"{TITLES['w4tp'].format(**fmtargs)}; {TITLES['w4lat'].format(**fmtargs)}. "
                "No HTTP server runs during W4; each queue starts its own workers (Hearth: in the `hearth-bench bench jobs` "
                "process). Per round: Hearth, then each peer queue.", "",
                "| queue | jobs/s | bulk enqueue s | pickup p50 ms | pickup p99 ms | pickup max ms | Hearth/queue jobs/s | runs |",
                "|---|---|---|---|---|---|---|---|"]
        htp = med(col("w4tp", "hearth", "jobs_per_s"))
        hl50, hl99 = med(col("w4lat", "hearth", "p50_ms")), med(col("w4lat", "hearth", "p99_ms"))
        for t in tools:
            tp = med(col("w4tp", t, "jobs_per_s"))
            out.append(f"| {t} | {cell(col('w4tp', t, 'jobs_per_s'))} | {cell(col('w4tp', t, 'enqueue_s'), 2)} | "
                       f"{cell(col('w4lat', t, 'p50_ms'), 2)} | {cell(col('w4lat', t, 'p99_ms'), 2)} | "
                       f"{cell(col('w4lat', t, 'max_ms'), 2)} | {'' if t == 'hearth' else fx(ratio(htp, tp))} | "
                       f"{len([r for r in by.get(('w4tp', t), []) if r])} |")
        out.append("")
        configs = {t: next((r.get("config") for r in by.get(("w4tp", t), []) if r), None) for t in tools}
        out += [f"- {t}: {c}" for t, c in configs.items() if c] + [""]
        for t, tgt in (("graphile-worker", 10), ("celery", 34), ("procrastinate", None)):
            tp = med(col("w4tp", t, "jobs_per_s"))
            if tp:
                chart.append((f"W4 jobs/s vs {t}", ratio(htp, tp), tgt if tgt else ratio(15000, tp)))
        gp99 = med(col("w4lat", "graphile-worker", "p99_ms"))
        if gp99:
            chart.append(("W4 pickup p99 (graphile/Hearth)", ratio(gp99, hl99), ratio(gp99, 5)))
        verdicts.append(("W4 throughput ≥ 15,000 jobs/s, ≥ 10× graphile-worker, ≥ 34× Celery",
                         htp is not None and htp >= 15000
                         and (ratio(htp, med(col("w4tp", "graphile-worker", "jobs_per_s"))) or 99) >= 10
                         and (ratio(htp, med(col("w4tp", "celery", "jobs_per_s"))) or 99) >= 34,
                         f"{num(htp)} jobs/s"))
        verdicts.append(("W4 pickup p50 ≤ 2 ms, p99 ≤ 5 ms", hl50 is not None and hl50 <= 2 and hl99 is not None and hl99 <= 5,
                         f"p50 {num(hl50, 2)} ms, p99 {num(hl99, 2)} ms"))

    if any(by.get((w, "hearth")) for w in LOGIN):
        out += login_section(by, col, *source.get("login1", source.get("loginrand", (outdir, meta))), md_dir)

    if floors:
        out += ["## Hearth beside the peer and the floor", "",
                "Each floor is the least a server can do for that workload on this machine, measured in the same "
                "rounds (see each workload's section). For throughput, Hearth's figure as a percentage of the floor's; "
                "for latency, the floor's p50 as a percentage of Hearth's (100 % = as fast as the floor).", "",
                "| workload | Hearth | peer | floor | Hearth ÷ peer | Hearth as % of floor |", "|---|---|---|---|---|---|"]
        out += [f"| {l} | {h} | {p} | {fl} | {r} | {num(pct)} % |" for l, h, p, fl, r, pct in floors]
        out += ["", "![Hearth as a percentage of each floor](bench/floors.svg)", ""]

    if verdicts:
        out += ["## Targets (issue 8, and the jobs, real-time and HTTP issues)", "", "| target | Hearth in this run | met |", "|---|---|---|"]
        out += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, ok, v in verdicts]
        out += ["", "The chart plots each ratio on a log scale; the tick is the ratio the target implies in this run "
                "(for absolute targets: the target value over the peer's figure, e.g. W6: peer p99 ÷ 20 ms).", ""]

    # The database a network hop away (bench/delay.sh): its own runs, the newest one.
    bench_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out += delay_report.section(bench_root, md_dir, os.path.join(bench_root, "delay.svg"))
    # Sockets at the machine's limit (bench/sockets.sh): the newest run.
    out += sockets_report.section(bench_root, md_dir, os.path.join(bench_root, "sockets.svg"))
    # A sustained job stream beside its floor (bench/jobs-sustained.sh): the newest run.
    out += sustained_report.section(bench_root, md_dir, os.path.join(bench_root, "sustained.svg"))
    # W4's bulk throughput beside its floor (bench/jobs-bulk.sh): the newest run.
    out += bulk_report.section(bench_root, md_dir, os.path.join(bench_root, "bulk.svg"))

    m = meta["machine"]
    out += ["## Machine", "", "| fact | value |", "|---|---|"]
    for k, label in (("nproc", "nproc"), ("cpu", "CPU"), ("memory_gib", "memory (GiB)"), ("os", "OS"), ("kernel", "kernel"),
                     ("postgres", "PostgreSQL"), ("redis", "Redis"), ("rustc", "rustc"), ("python", "Python (run.sh helpers)"),
                     ("django", "Django (peer venv)"), ("node", "Node"), ("wrk", "wrk"), ("h2load", "h2load"),
                     ("hearth_commit", "Hearth commit")):
        if k == "h2load" and k not in m:
            continue
        out.append(f"| {label} | {escape(str(m.get(k, '?')))} |")
    out += ["", "Everything (both servers, Postgres, Redis, the upstream stub and the load clients) shares the same cores.", ""]
    cmds_file = os.path.join(outdir, "commands.txt")
    if os.path.exists(cmds_file):
        out += ["## Exact commands", "", "One command reproduces everything: `bench/run.sh` "
                f"(this run: `ROUNDS={meta['rounds']} DURATION={meta['duration_s']}s WORKLOADS=\"{' '.join(meta['workloads'])}\"`). "
                "What it ran, once each (`<base>` is `http://127.0.0.1:8100` for Hearth and `http://127.0.0.1:8200` for "
                "the peer, `<ws>` the same with `ws://`):", "", "```sh"]
        out += [relative_bench(l.replace(os.path.abspath(outdir), "$OUTDIR"))
                for l in open(cmds_file).read().splitlines()]
        out += ["```", ""]
    bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for e, m, ws in used:
        cf = os.path.join(e, "commands.txt")
        if os.path.exists(cf):
            out += [f"The run of {', '.join(ws)} (`{os.path.relpath(e, md_dir)}/`: "
                    f"`ROUNDS={m['rounds']} DURATION={m['duration_s']}s WORKLOADS=\"{' '.join(m['workloads'])}\""
                    + (f" NICE={m['nice']}" if m.get("nice") else "") + " bench/run.sh`):",
                    "", "```sh"]
            out += [relative_bench(l.replace(os.path.abspath(e), "$OUTDIR"))
                    for l in open(cf).read().splitlines()]
            out += ["```", ""]
    open(md_path, "w").write("\n".join(out))
    if svg_path:
        write_svg(svg_path, chart, smoke)
        if floors:
            write_floor_svg(os.path.join(os.path.dirname(svg_path), "floors.svg"), floors, smoke)


def relative_bench(line):
    """A command line with the absolute paths of the checkout it ran in (any checkout: the run may
    have been made in another working tree than this report) made relative to the repository."""
    return re.sub(r"(^|[\s='\"])/[^\s'\"]*?/bench/", r"\1bench/", line)


def machine_diff(main, other):
    """The machine facts (but the commit) in which another run's machine differs, as a sentence."""
    diff = [f"{k} {other.get(k)} (here: {main.get(k)})" for k in sorted(set(main) | set(other))
            if k not in ("hearth_commit", "django", "wrk", "h2load") and main.get(k) != other.get(k)]
    return (" Its machine differs in: " + "; ".join(diff) + ".") if diff else " Same machine facts as below."


def login_section(by, col, folder, meta, md_dir):
    """The login flood of issue #30: Hearth alone, one table row per scenario."""
    lg = meta.get("login") or {}
    conc, addrs, users = lg.get("concurrency", 500), lg.get("addresses", 256), lg.get("users", 1000)
    hconc, hqueue = lg.get("hash_concurrency", 4), lg.get("hash_queue", 16)
    scen = [w for w in LOGIN if by.get((w, "hearth"))]
    results = {w: [r for r in by[(w, "hearth")] if r] for w in scen}
    statuses = sorted({k for w in scen for r in results[w] for k in r.get("statuses", {})},
                      key=lambda k: (not k.isdigit(), k))

    def mem(w, when):
        return [r.get(f"memory_mib_{when}", {}).get("VmHWM") for r in results[w]]

    out = [f"## Login flood (issue #30): {conc} concurrent wrong logins for {meta['duration_s']} s, Hearth only", ""]
    if is_smoke(meta) or meta["duration_s"] < 10 or conc < 500:
        out += ["> **SMOKE RUN of the login flood — not the real figures.**", ""]
    out += [f"For each scenario and round ({meta['rounds']} rounds; raw JSON: `{os.path.relpath(folder, md_dir)}/`), a freshly started "
            f"`hearth serve` (`HEARTH_PASSWORD_HASH_CONCURRENCY={hconc}`, `HEARTH_PASSWORD_HASH_QUEUE={hqueue}`, login limits "
            f"at their defaults) on a database with {users:,} users flood0..flood{users - 1} sharing one argon2id hash, "
            "`login_throttle` and `sessions` emptied first. `bench/clients/login_flood.py` sends wrong passwords from "
            f"{conc} threads, a fresh connection per attempt, from {addrs} loopback addresses, for {meta['duration_s']} s, "
            "and reads the server's VmHWM (peak resident memory since start) and `hearth_password_*` from `/metrics` "
            "before and after. Cells are median [min–max] over the rounds.", "",
            "| scenario | requests | " + " | ".join(f"answered {k}" if k.isdigit() else f"no answer ({k})" for k in statuses)
            + " | hashes computed | peak concurrent hashes | VmHWM before MiB | VmHWM after MiB | p50 / p99 ms | runs |",
            "|---|---|" + "---|" * len(statuses) + "---|---|---|---|---|---|"]
    for w in scen:
        rs = results[w]
        sts = " | ".join(cell([r.get("statuses", {}).get(k, 0) for r in rs], 0) for k in statuses)
        lat = f"{cell([r.get('latency_ms', {}).get('p50') for r in rs])} / {cell([r.get('latency_ms', {}).get('p99') for r in rs])}"
        out.append(f"| {TITLES[w].format(last=users - 1)} | {cell(col(w, 'hearth', 'requests'), 0)} | {sts} | "
                   f"{cell(col(w, 'hearth', 'hashes_computed'), 0)} | {cell(col(w, 'hearth', 'hashes_running_peak'), 0)} | "
                   f"{cell(mem(w, 'before'))} | {cell(mem(w, 'after'))} | {lat} | {len(rs)} |")
    # What it shows, from the figures.
    before = med([v for w in scen for v in mem(w, "before")])
    after = {w: med(mem(w, "after")) for w in scen}
    hashes = {w: med(col(w, "hearth", "hashes_computed")) for w in scen}
    reqs = {w: med(col(w, "hearth", "requests")) for w in scen}
    peak = max([v for w in scen for v in col(w, "hearth", "hashes_running_peak") if v is not None] or [0])
    rises = [after[w] - before for w in scen if after[w] is not None and before is not None]
    same = len(rises) > 1 and max(rises) - min(rises) <= 0.25 * max(rises)
    mems = " and ".join(f"{num(after[w])} MiB {'against one account' if w == 'login1' else 'against random accounts'}"
                        for w in scen)
    hs = " or ".join(num(hashes[w], 0) for w in scen)
    text = []
    if peak <= hconc:
        text.append(f"Memory stays flat whatever the flood asks for: the peak resident memory rises once, from {num(before)} MiB at start to "
                    f"{mems}" + (f", about the same whether {hs} passwords were hashed" if same else "")
                    + f", because argon2 runs under HEARTH_PASSWORD_HASH_CONCURRENCY={hconc} (never more than {peak:.0f} "
                    f"hashes at once, about 19 MiB each, where {conc} unbounded ones would need about {conc * 19 / 1024:.1f} GiB) "
                    f"and a login beyond those and the {hqueue} waiting is answered 503 without a hash")
    else:
        text.append(f"The peak resident memory went from {num(before)} MiB to {mems}, with up to {peak:.0f} hashes at once "
                    f"against HEARTH_PASSWORD_HASH_CONCURRENCY={hconc}")
    if "login1" in scen:
        text.append(f"against one account only {num(hashes['login1'], 0)} of {num(reqs['login1'], 0)} attempts were hashed, "
                    "because each attempt is counted, under its counters' row locks, before its password is hashed: once "
                    "the account's limit for strangers (HEARTH_LOGIN_LIMIT_PER_ACCOUNT_STRANGERS) was reached, every "
                    "further attempt got 429 without a hash")
    out += ["", "; ".join(text) + ".", ""]
    return out


def priority(meta):
    """What run.sh's NICE did, as a sentence (nothing when unset)."""
    if not meta.get("nice"):
        return ""
    return (f" The server and the client ran at niceness {meta['nice']} (`NICE={meta['nice']}`) because the machine "
            "was shared (see the note at the top): the scheduler gave them the CPU before the other work, which "
            "does not make the machine quiet; the spread of the p99s over the rounds shows what was left.")


def latency_section(by, folder, meta, md_dir):
    """Issue #34's "sub-millisecond cached response": one request at a time on an idle server."""
    results = [r for r in by[("latency", "hearth")] if r]
    lat = meta.get("latency") or {}
    n, warm = lat.get("requests", 20000), lat.get("warmup", 2000)

    def pcol(probe, key):
        return [r["probes"][probe].get(key) for r in results if probe in r.get("probes", {})]

    out = ["## One request at a time: a cached page, its 304 and `/healthz` on an idle server (issue #34), Hearth only", ""]
    if meta["rounds"] < 3 or n < 20000:
        out += ["> **SMOKE RUN of the latency probes — not the real figures.**", ""]
    out += [f"For each round ({meta['rounds']} rounds; raw JSON: `{os.path.relpath(folder, md_dir)}/`), a freshly started "
            f"`hearth serve` with nothing else to do. `bench/clients/latency.py` sends {n:,} requests of each kind after "
            f"{warm:,} of warm-up, one at a time, each kind on a kept-alive HTTP/1.1 connection of its own, the kinds taking "
            "turns so that whatever else the machine does falls on all of them alike. A request is timed from its first "
            "byte written to the last byte of its answer read, by a Python client on the same two cores (raw socket, "
            "`TCP_NODELAY`, a prebuilt request, garbage collector off), so each figure includes the client's own "
            "cost and the loopback." + priority(meta) + " Cells are median [min–max] over the rounds.", "",
            "| request | answer | p50 ms | p90 ms | p99 ms | p99.9 ms | mean ms | errors | runs |",
            "|---|---|---|---|---|---|---|---|---|"]
    for probe, label in LATENCY_PROBES:
        rs = [r["probes"][probe] for r in results if probe in r.get("probes", {})]
        if not rs:
            continue
        answer = f"{rs[0]['status']}, {rs[0]['body_bytes']:,} bytes" if rs[0]["body_bytes"] else f"{rs[0]['status']}, no body"
        out.append(f"| {label} | {answer} | {cell(pcol(probe, 'p50_ms'), 3)} | {cell(pcol(probe, 'p90_ms'), 3)} | "
                   f"{cell(pcol(probe, 'p99_ms'), 3)} | {cell(pcol(probe, 'p999_ms'), 3)} | {cell(pcol(probe, 'mean_ms'), 3)} | "
                   f"{cell(pcol(probe, 'errors'), 0)} | {len(rs)} |")
    m = {p: (med(pcol(p, "p50_ms")), med(pcol(p, "p99_ms"))) for p, _ in LATENCY_PROBES}

    def pair(p):
        a, b = m[p]
        return f"{num(a, 3)} / {num(b, 3)} ms" if a is not None and b is not None else "-"

    ok = all(v is not None and v < 1 for v in m["cached"])
    out += ["", f"A cached page is answered in **{pair('cached')}** (p50 / p99), beside {pair('healthz')} for `/healthz`"
            f"{': under a millisecond' if ok else ''}; revalidated, the same page is a `304` in {pair('cached304')}, and "
            f"rendered for every request (W1's page, a query and a template) it takes {pair('page')}.", ""]
    verdict = ("Cached page under 1 ms at p50 and p99, one request at a time on one connection (issue #34)", ok,
               f"p50 / p99 {pair('cached')} (`/healthz`: {pair('healthz')})")
    return out, verdict


def w2proto_section(by, col, folder, meta, md_dir):
    """W2 over HTTP/1.1, h2c, and TLS with either, with one client (h2load)."""
    sides = [(p, label) for p, label in W2PROTO if by.get(("w2proto", p))]
    out = [f"## W2 cached page over HTTP/2 and TLS beside HTTP/1.1 (issue #34), h2load c={meta['conns']}, Hearth only", ""]
    if is_smoke(meta) or meta["duration_s"] < 10:
        out += ["> **SMOKE RUN of W2 per protocol — not the real figures.**", ""]
    out += [f"For each round ({meta['rounds']} rounds; raw JSON: `{os.path.relpath(folder, md_dir)}/`) and protocol, a freshly "
            "started `hearth serve`, plain or with `HEARTH_TLS_CERT`/`HEARTH_TLS_KEY` (a self-signed P-256 certificate made "
            f"by openssl for the run). `h2load -c{meta['conns']} -t{meta['threads']} -m1 -D{meta['duration_s']} "
            f"--warm-up-time={meta['warmup_s']}` on `/bench/cached` (`--h1` for HTTP/1.1; h2c by prior knowledge; over "
            "TLS the protocol is chosen by ALPN), through `bench/clients/h2load_json.py`, which takes the percentiles "
            "from h2load's per-request log. One request in flight per connection on every protocol, "
            f"{meta['conns']} in all, as in W2 with wrk above (wrk speaks only HTTP/1.1, so the protocols are compared "
            "with one client here, and its figures are not the wrk table's). The connections, and their TLS handshakes, "
            "are made during the warm-up." + priority(meta), "",
            "| protocol | negotiated | req/s | p50 ms | p99 ms | errors | req/s vs HTTP/1.1 | runs |",
            "|---|---|---|---|---|---|---|---|"]
    base = med(col("w2proto", "h1", "rps"))
    for p, label in sides:
        rs = [r for r in by.get(("w2proto", p), []) if r]
        protos = sorted({r.get("protocol", "?") for r in rs})
        out.append(f"| {label} | {', '.join(protos)} | {cell(col('w2proto', p, 'rps'))} | {cell(col('w2proto', p, 'p50_ms'), 2)} | "
                   f"{cell(col('w2proto', p, 'p99_ms'), 2)} | {cell([errors(r) for r in rs], 0)} | "
                   f"{'' if p == 'h1' else fx(ratio(med(col('w2proto', p, 'rps')), base))} | {len(rs)} |")
    out.append("")
    return out


def write_svg(path, chart, smoke):
    import math
    chart = [c for c in chart if c[1]]
    W, left, right, rowh, top = 860, 260, 40, 34, 56
    H = top + rowh * len(chart) + 50
    hi = max([c[1] for c in chart] + [c[2] or 0 for c in chart] + [10])
    lo = min([c[1] for c in chart] + [1]) 
    lmin = math.floor(math.log10(lo * 0.9)) if lo < 1 else 0
    lmax = math.ceil(math.log10(hi * 1.1))
    span = W - left - right

    def x(v):
        return left + (math.log10(v) - lmin) / (lmax - lmin) * span

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="600">Hearth ÷ peer (log scale); tick = target</text>',
         f'<text x="{left}" y="40" fill="{"#c00" if smoke else "#555"}">'
         f'{"SMOKE RUN, not the real figures. " if smoke else ""}green: target met, orange: missed, grey: no target</text>']
    for e in range(lmin, lmax + 1):
        for mlt in (1, 2, 5):
            v = mlt * 10 ** e
            if v < 10 ** lmin or v > 10 ** lmax:
                continue
            xx = x(v)
            s.append(f'<line x1="{xx:.1f}" y1="{top - 6}" x2="{xx:.1f}" y2="{H - 40}" stroke="{"#ccc" if mlt == 1 else "#eee"}"/>')
            if mlt == 1 or lmax - lmin <= 3:
                s.append(f'<text x="{xx:.1f}" y="{H - 24}" text-anchor="middle" fill="#555">{v:g}×</text>')
    s.append(f'<line x1="{x(1):.1f}" y1="{top - 6}" x2="{x(1):.1f}" y2="{H - 40}" stroke="#333"/>')
    for i, (label, r, tgt) in enumerate(chart):
        y = top + i * rowh
        color = "#9aa" if tgt is None else ("#2a9d5c" if r >= tgt else "#e08a1e")
        x0, x1 = x(min(1, r)), x(max(1, r))
        s.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>')
        s.append(f'<rect x="{x0:.1f}" y="{y + 5}" width="{max(1, x1 - x0):.1f}" height="{rowh - 12}" fill="{color}"/>')
        txt = f"{fx(r)}" + (f" (target {fx(tgt)})" if tgt else "")
        tx = min(x1 + 6, W - right - 4)
        anchor = "start" if x1 + 6 < W - right - 150 else "end"
        if anchor == "end":
            tx = x0 - 6 if x0 > left + 160 else x1 - 6
        s.append(f'<text x="{tx:.1f}" y="{y + 17}" text-anchor="{anchor}" fill="{"#fff" if anchor == "end" and tx > x0 else "#222"}">{escape(txt)}</text>')
        if tgt:
            xt = x(tgt)
            s.append(f'<line x1="{xt:.1f}" y1="{y + 1}" x2="{xt:.1f}" y2="{y + rowh - 3}" stroke="#111" stroke-width="3"/>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


def write_floor_svg(path, floors, smoke):
    """Hearth as a percentage of each floor: one bar per workload on a linear 0-100 % scale."""
    rows = [(label, pct) for label, _, _, _, _, pct in floors if pct is not None]
    W, left, right, rowh, top = 860, 260, 60, 34, 56
    H = top + rowh * len(rows) + 50
    span = W - left - right

    def x(v):
        return left + min(v, 100) / 100 * span

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="system-ui, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#fff"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="600">Hearth as a percentage of each floor</text>',
         f'<text x="{left}" y="40" fill="{"#c00" if smoke else "#555"}">'
         f'{"SMOKE RUN, not the real figures. " if smoke else ""}100 % = what a bare server does on this machine</text>']
    for v in range(0, 101, 20):
        xx = x(v)
        s.append(f'<line x1="{xx:.1f}" y1="{top - 6}" x2="{xx:.1f}" y2="{H - 40}" stroke="{"#ccc" if v in (0, 100) else "#eee"}"/>')
        s.append(f'<text x="{xx:.1f}" y="{H - 24}" text-anchor="middle" fill="#555">{v} %</text>')
    for i, (label, pct) in enumerate(rows):
        y = top + i * rowh
        s.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>')
        s.append(f'<rect x="{left}" y="{y + 5}" width="{max(1, x(pct) - left):.1f}" height="{rowh - 12}" fill="#3b7dd8"/>')
        s.append(f'<text x="{x(pct) + 6:.1f}" y="{y + 17}">{num(pct)} %</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--md")
    ap.add_argument("--svg")
    ap.add_argument("--line")
    ap.add_argument("--extra", action="append", default=[],
                    help="another results folder; its workloads that OUTDIR lacks are reported too")
    a = ap.parse_args()
    if a.line:
        d = json.load(open(a.line))
        print(summary(d["workload"], d["result"]))
        return
    report(a.outdir, a.md, a.svg, a.extra)


if __name__ == "__main__":
    sys.exit(main())
