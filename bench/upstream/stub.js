// Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
// W3 upstream stub: GET /upstream/<n> answers after DELAY ms with a small JSON body.
// Plain node:http, keep-alive, no dependencies. One event loop handles tens of
// thousands of pending timers, so it is never the bottleneck at c=256 x 3.
// Env: UPSTREAM_HOST (127.0.0.1), UPSTREAM_PORT (8081), UPSTREAM_DELAY_MS (50)
"use strict";
const http = require("node:http");
const host = process.env.UPSTREAM_HOST || "127.0.0.1";
const port = Number(process.env.UPSTREAM_PORT || 8081);
const delay = Number(process.env.UPSTREAM_DELAY_MS || 50);
let served = 0;

const server = http.createServer((req, res) => {
  const m = /^\/upstream\/(\w+)/.exec(req.url);
  if (!m) {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
    return;
  }
  const body = JSON.stringify({ source: m[1], value: m[1].length * 42, delay_ms: delay });
  setTimeout(() => {
    served++;
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  }, delay);
});
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
server.maxRequestsPerSocket = 0;
server.listen(port, host, () => console.log(`upstream stub on http://${host}:${port} delay=${delay}ms`));
const stop = () => { console.log(`upstream stub served ${served}`); server.close(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
