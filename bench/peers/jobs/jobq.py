#!/usr/bin/env python
"""W4 job-queue command for the Python peers (PROTOCOL.md "W4 contract").

    jobq.py --tool celery|procrastinate both|throughput|latency N REPEATS

Starts the tool's workers (own process groups), waits for a warm-up job, pushes
$JOBS_WARMUP_N (2000) unreported jobs through the bulk path, then per repeat
measures throughput (N bulk-enqueued jobs: N / (last job start - t0)) and pickup
latency ($LATENCY_N jobs one at a time, $LATENCY_GAP_MS apart), printing one JSON
line each; stops its workers.
"""
import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from record import RECORD_BYTES  # noqa: E402

BIN = os.path.dirname(sys.executable)
PG_DSN = os.environ.get("BENCH_PEER_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bench_peer")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
GAP_S = float(os.environ.get("LATENCY_GAP_MS", "20")) / 1000
WAIT_S = float(os.environ.get("JOBS_WAIT_LIMIT_S", "240"))
WARMUP_N = int(os.environ.get("JOBS_WARMUP_N", "2000"))
CELERY_ARGS = os.environ.get(
    "CELERY_WORKER_ARGS",
    "--pool=prefork --concurrency=2 --prefetch-multiplier=4 --without-gossip --without-mingle "
    "--without-heartbeat --loglevel=WARNING")
PROC_PROCS = int(os.environ.get("PROCRASTINATE_PROCS", "2"))
PROC_CONC = int(os.environ.get("PROCRASTINATE_CONCURRENCY", "4"))
LOGDIR = os.environ.get("BENCH_LOGDIR", "/tmp")


def nearest_rank(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def count(path):
    try:
        return os.path.getsize(path) // RECORD_BYTES
    except FileNotFoundError:
        return 0


def wait_for(path, n, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        if count(path) >= n:
            return True
        time.sleep(0.005)
    return False


def records(path):
    with open(path, "rb") as f:
        return [tuple(map(float, line.split())) for line in f.read().splitlines()]


class Celery:
    name = "celery"

    def __init__(self):
        import redis
        from celery import group

        import celery_tasks

        self.group, self.noop = group, celery_tasks.noop
        self.redis = redis.Redis.from_url(REDIS_URL + "/2")
        self.config = f"celery worker {CELERY_ARGS}; bulk = group(noop.s() x N).apply_async()"

    def reset(self):
        self.redis.flushdb()

    def between(self):
        pass

    def workers(self):
        return [[f"{BIN}/celery", "-A", "celery_tasks", "worker", "-Q", "bench", *CELERY_ARGS.split()]]

    def bulk(self, n):
        self.group(self.noop.s(0.0) for _ in range(n)).apply_async()

    def one(self, t):
        self.noop.apply_async((t,))

    def close(self):
        pass


class Procrastinate:
    name = "procrastinate"

    def __init__(self):
        import procrastinate_tasks

        self.app, self.noop = procrastinate_tasks.app, procrastinate_tasks.noop
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.app.open_async())
        self.config = (f"{PROC_PROCS} x procrastinate worker --concurrency={PROC_CONC}; "
                       "bulk = noop.batch_defer_async(*kwargs)")

    def sql(self, *stmts):
        import psycopg
        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute("SET lock_timeout = '10s'")
            for s in stmts:
                c.execute(s)

    def reset(self):
        self.sql("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE",
                 "VACUUM ANALYZE procrastinate_jobs, procrastinate_events")

    def between(self):
        self.sql("DELETE FROM procrastinate_jobs WHERE status NOT IN ('todo', 'doing')",
                 "VACUUM ANALYZE procrastinate_jobs, procrastinate_events")

    def workers(self):
        return [[f"{BIN}/procrastinate", "--app=procrastinate_tasks.app", "worker", "--queues=bench",
                 f"--concurrency={PROC_CONC}", f"--name=w{i}"] for i in range(PROC_PROCS)]

    def bulk(self, n):
        self.loop.run_until_complete(self.noop.batch_defer_async(*({"t_enq": 0.0} for _ in range(n))))

    def one(self, t):
        self.loop.run_until_complete(self.noop.defer_async(t_enq=t))

    def close(self):
        self.loop.run_until_complete(self.app.close_async())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", choices=["celery", "procrastinate"], required=True)
    ap.add_argument("mode", choices=["both", "throughput", "latency"])
    ap.add_argument("n", type=int)
    ap.add_argument("repeats", type=int, nargs="?", default=1)
    a = ap.parse_args()

    rec = f"/tmp/hearth-bench-jobs-{a.tool}.rec"
    env = dict(os.environ, PYTHONPATH=HERE, BENCH_RECORD=rec)
    os.environ["BENCH_RECORD"] = rec
    tool = Celery() if a.tool == "celery" else Procrastinate()
    tool.reset()
    open(rec, "wb").close()
    procs = [subprocess.Popen(cmd, cwd=HERE, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(f"{LOGDIR}/jobq-{a.tool}-w{i}.log", "wb"))
             for i, cmd in enumerate(tool.workers())]
    try:
        tool.one(time.time())
        if not wait_for(rec, 1, 60):
            raise SystemExit(f"{a.tool}: the warm-up job did not run within 60 s")
        if WARMUP_N and a.mode != "latency":
            tool.between()
            open(rec, "wb").close()
            tool.bulk(WARMUP_N)
            wait_for(rec, WARMUP_N, WAIT_S)
        time.sleep(1)
        for rep in range(1, a.repeats + 1):
            for mode in (["throughput", "latency"] if a.mode == "both" else [a.mode]):
                tool.between()
                open(rec, "wb").close()
                if mode == "throughput":
                    t0 = time.time()
                    tool.bulk(a.n)
                    enq = time.time() - t0
                    ok = wait_for(rec, a.n, WAIT_S)
                    rs = records(rec)
                    last = max(r[0] for r in rs) if rs else float("nan")
                    out = {"n": a.n, "completed": len(rs), "ok": ok and len(rs) == a.n,
                           "enqueue_s": round(enq, 3), "total_s": round(last - t0, 3),
                           "jobs_per_s": round(len(rs) / (last - t0), 1) if rs else 0.0}
                else:
                    n = a.n if a.mode == "latency" else int(os.environ.get("LATENCY_N", "200"))
                    for _ in range(n):
                        tool.one(time.time())
                        time.sleep(GAP_S)
                    ok = wait_for(rec, n, 60)
                    lat = [(s - e) * 1000 for s, e in records(rec)]
                    out = {"n": n, "completed": len(lat), "ok": ok and len(lat) == n,
                           "p50_ms": round(nearest_rank(lat, 50), 2) if lat else None,
                           "p99_ms": round(nearest_rank(lat, 99), 2) if lat else None,
                           "max_ms": round(max(lat), 2) if lat else None}
                print(json.dumps({"tool": a.tool, "mode": mode, "repeat": rep, **out, "config": tool.config}),
                      flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        tool.close()


if __name__ == "__main__":
    main()
