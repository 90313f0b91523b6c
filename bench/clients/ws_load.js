#!/usr/bin/env node
// Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
// W5 WebSocket load client (Node + `ws`). Bounded in count and time.
//
// chat mode:  N receivers + 1 sender join one room; the sender sends M messages
//             {"message": "<seq>"} at a steady R/s; every receiver records the
//             receive time of each {"message": "<seq>"}. Latency = receive - send
//             (same process clock). Prints one JSON result line.
// idle mode:  connect N clients, wait, report the RSS of --rss-pid (+ its
//             descendants) before and after, then close everything.
//
// node ws_load.js --mode chat --url ws://127.0.0.1:8000/ws/chat/bench/ --clients 1000 --messages 200 --rate 20
// node ws_load.js --mode idle --url ... --clients 5000 --rss-pid 1234
"use strict";
const WebSocket = require("ws");
const { performance } = require("node:perf_hooks");
const { rssTreeKB, pct, parseArgs, sleep } = require("./common");

const a = parseArgs(process.argv.slice(2), {
  mode: "chat", url: "ws://127.0.0.1:8000/ws/chat/bench/", clients: 1000, messages: 200, rate: 20,
  "connect-concurrency": 100, "drain-s": 15, settle: 2, "rss-pid": 0, "time-limit-s": 240,
});
const N = Number(a.clients), M = Number(a.messages), RATE = Number(a.rate);
const hardStop = setTimeout(() => { console.error("ws_load: time limit hit"); process.exit(3); },
                            Number(a["time-limit-s"]) * 1000);
hardStop.unref();

function connect(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 30000 });
    ws.once("open", () => resolve(ws));
    ws.once("error", (e) => resolve({ error: String(e.message || e) }));
  });
}

async function connectMany(n, onSocket) {
  const socks = [];
  let failed = 0, next = 0;
  const firstErr = [];
  async function lane() {
    while (next < n) {
      const i = next++;
      const ws = await connect(a.url);
      if (ws.error) { failed++; if (firstErr.length < 3) firstErr.push(ws.error); continue; }
      ws.on("error", () => {});
      if (onSocket) onSocket(ws, i);
      socks.push(ws);
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, Number(a["connect-concurrency"])) }, lane));
  return { socks, failed, firstErr };
}

async function chat() {
  const sendT = new Float64Array(M).fill(NaN);
  const lat = new Float64Array(N * M);
  let got = 0, firstSend = 0, lastRecv = 0, dup = 0, bad = 0;
  const seen = new Uint8Array(N * M);
  const t0c = performance.now();
  const { socks, failed, firstErr } = await connectMany(N, (ws, i) => {
    ws.on("message", (data) => {
      const t = performance.now();
      let seq;
      try { seq = Number(JSON.parse(data).message); } catch { bad++; return; }
      if (!(seq >= 0 && seq < M)) { bad++; return; }
      const k = i * M + seq;
      if (seen[k]) { dup++; return; }
      seen[k] = 1;
      lat[got++] = t - sendT[seq];
      lastRecv = t;
    });
  });
  const connectS = (performance.now() - t0c) / 1000;
  const sender = await connect(a.url);
  if (sender.error) throw new Error("sender could not connect: " + sender.error);
  await sleep(Number(a.settle) * 1000);

  const cpu0 = process.cpuUsage(); const w0 = performance.now();
  firstSend = performance.now();
  for (let s = 0; s < M; s++) {
    const target = firstSend + (s * 1000) / RATE;
    const wait = target - performance.now();
    if (wait > 0) await sleep(wait);
    sendT[s] = performance.now();
    sender.send(JSON.stringify({ message: String(s) }));
  }
  const expected = socks.length * M;
  const drainUntil = performance.now() + Number(a["drain-s"]) * 1000;
  while (got < expected && performance.now() < drainUntil) await sleep(20);
  const cpu = process.cpuUsage(cpu0); const wall = performance.now() - w0;
  const l = Array.from(lat.subarray(0, got)).sort((x, y) => x - y);
  const res = {
    workload: "ws_chat", clients: N, connected: socks.length, connect_failed: failed, connect_errors: firstErr,
    connect_s: +connectS.toFixed(2), messages: M, rate: RATE, expected, delivered: got, lost: expected - got,
    duplicates: dup, malformed: bad,
    deliveries_per_s: got ? +(got / ((lastRecv - firstSend) / 1000)).toFixed(1) : 0,
    offered_per_s: socks.length * RATE,
    p50_ms: got ? +pct(l, 50).toFixed(2) : null, p99_ms: got ? +pct(l, 99).toFixed(2) : null,
    max_ms: got ? +l[l.length - 1].toFixed(2) : null,
    client_cpu_pct: +(((cpu.user + cpu.system) / 1000 / wall) * 100).toFixed(1),
  };
  for (const ws of socks) ws.terminate();
  sender.terminate();
  console.log(JSON.stringify(res));
}

async function idle() {
  const pid = Number(a["rss-pid"]);
  const before = pid ? rssTreeKB(pid) : null;
  const t0 = performance.now();
  const { socks, failed, firstErr } = await connectMany(N);
  const connectS = (performance.now() - t0) / 1000;
  await sleep(Number(a.settle) * 1000);
  const after = pid ? rssTreeKB(pid) : null;
  console.log(JSON.stringify({
    workload: "ws_idle", clients: N, connected: socks.length, connect_failed: failed, connect_errors: firstErr,
    connect_s: +connectS.toFixed(2), server_rss_before_mb: before && +(before / 1024).toFixed(1),
    server_rss_mb: after && +(after / 1024).toFixed(1),
    kb_per_conn: after && socks.length ? +((after - before) / socks.length).toFixed(1) : null,
  }));
  for (const ws of socks) ws.terminate();
}

(a.mode === "idle" ? idle() : chat()).then(() => setTimeout(() => process.exit(0), 200),
  (e) => { console.error(e); process.exit(1); });
