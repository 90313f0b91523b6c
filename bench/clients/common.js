// Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
"use strict";
// Small helpers shared by the Node load clients.
const fs = require("node:fs");

// Sum of VmRSS (kB) of pid and all its descendants, read from /proc.
function rssTreeKB(root) {
  const children = new Map();
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(d));
    } catch { /* process went away */ }
  }
  let total = 0;
  const stack = [Number(root)];
  while (stack.length) {
    const p = stack.pop();
    try {
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/status`, "utf8"));
      if (m) total += Number(m[1]);
    } catch { /* gone */ }
    for (const c of children.get(p) || []) stack.push(c);
  }
  return total;
}

// Nearest-rank percentile of an ascending-sorted array.
function pct(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([\w-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error("bad argument " + argv[i]);
    out[m[1]] = m[2] !== undefined ? m[2] : argv[++i];
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { rssTreeKB, pct, parseArgs, sleep };
