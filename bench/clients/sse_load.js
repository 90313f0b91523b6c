#!/usr/bin/env node
// Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
// W6 SSE load client. N clients hold GET /bench/events open; a publisher POSTs
// {"message": "<seq>"} to /bench/publish M times at R/s; each client records
// when `data: {"message": "<seq>"}` arrives. Latency = receive - POST start.
// node sse_load.js --base http://127.0.0.1:8000 --clients 500 --messages 100 --rate 10
"use strict";
const http = require("node:http");
const { performance } = require("node:perf_hooks");
const { pct, parseArgs, sleep } = require("./common");

const a = parseArgs(process.argv.slice(2), {
  base: "http://127.0.0.1:8000", clients: 500, messages: 100, rate: 10, "connect-concurrency": 100,
  "drain-s": 10, settle: 2, "time-limit-s": 180,
});
const N = Number(a.clients), M = Number(a.messages), RATE = Number(a.rate);
const base = new URL(a.base);
const hardStop = setTimeout(() => { console.error("sse_load: time limit hit"); process.exit(3); },
                            Number(a["time-limit-s"]) * 1000);
hardStop.unref();

const sendT = new Float64Array(M).fill(NaN);
const lat = [];
let got = 0, dup = 0, lastRecv = 0;
const seen = new Uint8Array(N * M);
const noKeepAlive = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function open(i) {
  return new Promise((resolve) => {
    const req = http.get({ host: base.hostname, port: base.port, path: "/bench/events", agent: noKeepAlive,
                           headers: { accept: "text/event-stream" } }, (res) => {
      if (res.statusCode !== 200) { res.resume(); resolve({ error: "status " + res.statusCode }); return; }
      res.setEncoding("utf8");
      let buf = "", ready = false;
      res.on("data", (chunk) => {
        const t = performance.now();
        buf += chunk;
        let idx;
        while ((idx = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, idx); buf = buf.slice(idx + 2);
          if (!ready) { ready = true; resolve({ req }); }
          for (const line of ev.split("\n")) {
            if (!line.startsWith("data:")) continue;
            let seq;
            try { seq = Number(JSON.parse(line.slice(5)).message); } catch { continue; }
            if (!(seq >= 0 && seq < M)) continue;
            const k = i * M + seq;
            if (seen[k]) { dup++; continue; }
            seen[k] = 1; got++; lastRecv = t;
            lat.push(t - sendT[seq]);
          }
        }
      });
      res.on("error", () => {});
    });
    req.on("error", (e) => resolve({ error: String(e.message || e) }));
  });
}

const pubAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
function publish(seq) {
  return new Promise((resolve) => {
    const body = JSON.stringify({ message: String(seq) });
    const req = http.request({ host: base.hostname, port: base.port, path: "/bench/publish", method: "POST",
      agent: pubAgent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => { res.resume(); res.on("end", () => resolve(res.statusCode)); });
    req.on("error", () => resolve(0));
    req.end(body);
  });
}

(async () => {
  const t0 = performance.now();
  const streams = []; let failed = 0, next = 0; const errs = [];
  await Promise.all(Array.from({ length: Math.min(N, Number(a["connect-concurrency"])) }, async () => {
    while (next < N) {
      const i = next++;
      const r = await open(i);
      if (r.error) { failed++; if (errs.length < 3) errs.push(r.error); } else streams.push(r.req);
    }
  }));
  const connectS = (performance.now() - t0) / 1000;
  await sleep(Number(a.settle) * 1000);
  const cpu0 = process.cpuUsage(); const w0 = performance.now();
  const first = performance.now(); let pubFail = 0; const pubs = [];
  for (let s = 0; s < M; s++) {
    const wait = first + (s * 1000) / RATE - performance.now();
    if (wait > 0) await sleep(wait);
    sendT[s] = performance.now();
    pubs.push(publish(s).then((st) => { if (st !== 204 && st !== 200) pubFail++; }));
  }
  await Promise.all(pubs);
  const expected = streams.length * M;
  const until = performance.now() + Number(a["drain-s"]) * 1000;
  while (got < expected && performance.now() < until) await sleep(20);
  const cpu = process.cpuUsage(cpu0); const wall = performance.now() - w0;
  lat.sort((x, y) => x - y);
  console.log(JSON.stringify({
    workload: "sse", clients: N, connected: streams.length, connect_failed: failed, connect_errors: errs,
    connect_s: +connectS.toFixed(2), messages: M, rate: RATE, publish_failed: pubFail, expected, delivered: got,
    lost: expected - got, duplicates: dup,
    deliveries_per_s: got ? +(got / ((lastRecv - first) / 1000)).toFixed(1) : 0,
    p50_ms: got ? +pct(lat, 50).toFixed(2) : null, p99_ms: got ? +pct(lat, 99).toFixed(2) : null,
    max_ms: got ? +lat[lat.length - 1].toFixed(2) : null,
    client_cpu_pct: +(((cpu.user + cpu.system) / 1000 / wall) * 100).toFixed(1),
  }));
  for (const r of streams) r.destroy();
  setTimeout(() => process.exit(0), 200);
})().catch((e) => { console.error(e); process.exit(1); });
