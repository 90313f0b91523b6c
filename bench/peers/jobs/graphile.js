#!/usr/bin/env node
// W4 job-queue command for graphile-worker (PROTOCOL.md "W4 contract").
//   node graphile.js both|throughput|latency N REPEATS      (worker processes: node graphile.js --worker)
// $GRAPHILE_PROCS (2) processes x run({concurrentJobs: $GRAPHILE_CONCURRENCY (4)}), library defaults
// otherwise. Bulk enqueue = WorkerUtils.addJobs(specs), single = WorkerUtils.addJob.
// The job appends the same 36-byte record as the Python peers to $BENCH_RECORD.
"use strict";
const fs = require("node:fs");
const { spawn } = require("node:child_process");
const { performance } = require("node:perf_hooks");
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

const DSN = process.env.BENCH_PEER_PG_DSN || "postgresql://postgres@127.0.0.1:5432/bench_peer";
const PROCS = Number(process.env.GRAPHILE_PROCS || 2);
const CONC = Number(process.env.GRAPHILE_CONCURRENCY || 4);
const GAP_MS = Number(process.env.LATENCY_GAP_MS || 20);
const WAIT_S = Number(process.env.JOBS_WAIT_LIMIT_S || 240);
const WARMUP_N = Number(process.env.JOBS_WARMUP_N || 2000);
const LOGDIR = process.env.BENCH_LOGDIR || "/tmp";
const REC = process.env.BENCH_RECORD || "/tmp/hearth-bench-jobs-graphile.rec";
const RECORD_BYTES = 36;
const now = () => (performance.timeOrigin + performance.now()) / 1000;
const f17 = (t) => t.toFixed(6).padStart(17, "0");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const logger = new Logger(() => (level, msg) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${msg}`);
});

async function worker() {
  const fd = fs.openSync(REC, "a");
  const runner = await run({
    connectionString: DSN, concurrency: CONC, noHandleSignals: true, pollInterval: 2000, logger,
    preset: { worker: { connectionString: DSN, concurrentJobs: CONC, maxPoolSize: Math.max(10, CONC + 2) } },
    taskList: { noop: async (p) => { fs.writeSync(fd, `${f17(now())} ${f17(p.t_enq || 0)}\n`); } },
  });
  const stop = async () => { await runner.stop(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await runner.promise;
}

const count = () => { try { return Math.floor(fs.statSync(REC).size / RECORD_BYTES); } catch { return 0; } };
async function waitFor(n, limitS) {
  const end = Date.now() + limitS * 1000;
  while (Date.now() < end) { if (count() >= n) return true; await sleep(5); }
  return false;
}
const records = () => fs.readFileSync(REC, "utf8").split("\n").filter(Boolean).map((l) => l.split(" ").map(Number));
const rank = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]; };
const r2 = (x) => Math.round(x * 100) / 100;
const noops = (n) => Array.from({ length: n }, () => ({ identifier: "noop", payload: { t_enq: 0 } }));

async function bench(mode, N, repeats) {
  const utils = await makeWorkerUtils({ connectionString: DSN, logger });
  await utils.migrate();
  await utils.withPgClient((c) => c.query("DELETE FROM graphile_worker._private_jobs"));
  fs.writeFileSync(REC, "");
  const procs = [];
  for (let i = 0; i < PROCS; i++) {
    const log = fs.openSync(`${LOGDIR}/jobq-graphile-w${i}.log`, "w");
    procs.push(spawn(process.execPath, [__filename, "--worker"], { env: { ...process.env, BENCH_RECORD: REC }, stdio: ["ignore", log, log] }));
  }
  const config = `${PROCS} x graphile-worker run() concurrentJobs=${CONC}; bulk = WorkerUtils.addJobs(specs)`;
  try {
    await utils.addJob("noop", { t_enq: now() });
    if (!(await waitFor(1, 60))) throw new Error("graphile-worker: warm-up job did not run within 60 s");
    if (WARMUP_N > 0 && mode !== "latency") {
      fs.writeFileSync(REC, "");
      await utils.addJobs(noops(WARMUP_N));
      await waitFor(WARMUP_N, WAIT_S);
    }
    await sleep(1000);
    for (let rep = 1; rep <= repeats; rep++) {
      for (const m of mode === "both" ? ["throughput", "latency"] : [mode]) {
        fs.writeFileSync(REC, "");
        let out;
        if (m === "throughput") {
          const specs = noops(N);
          const t0 = now();
          await utils.addJobs(specs);
          const enq = now() - t0;
          const ok = await waitFor(N, WAIT_S);
          const rs = records();
          const last = Math.max(...rs.map((r) => r[0]));
          out = { n: N, completed: rs.length, ok: ok && rs.length === N, enqueue_s: Math.round(enq * 1000) / 1000,
                  total_s: Math.round((last - t0) * 1000) / 1000, jobs_per_s: Math.round((rs.length / (last - t0)) * 10) / 10 };
        } else {
          const n = mode === "latency" ? N : Number(process.env.LATENCY_N || 200);
          for (let i = 0; i < n; i++) { await utils.addJob("noop", { t_enq: now() }); await sleep(GAP_MS); }
          const ok = await waitFor(n, 60);
          const lat = records().map((r) => (r[0] - r[1]) * 1000);
          out = { n, completed: lat.length, ok: ok && lat.length === n, p50_ms: r2(rank(lat, 50)),
                  p99_ms: r2(rank(lat, 99)), max_ms: r2(Math.max(...lat)) };
        }
        console.log(JSON.stringify({ tool: "graphile-worker", mode: m, repeat: rep, ...out, config }));
      }
    }
  } finally {
    for (const p of procs) p.kill("SIGTERM");
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r() : p.on("exit", r)))));
    await utils.release();
  }
}

if (process.argv[2] === "--worker") {
  worker().catch((e) => { console.error(e); process.exit(1); });
} else {
  const [mode, n, repeats] = process.argv.slice(2);
  if (!["both", "throughput", "latency"].includes(mode)) { console.error("usage: graphile.js both|throughput|latency N [REPEATS]"); process.exit(2); }
  setTimeout(() => { console.error("graphile.js: time limit"); process.exit(3); }, (WAIT_S * 4 + 300) * 1000 * Number(repeats || 1)).unref();
  bench(mode, Number(n), Number(repeats || 1)).then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
}
