#!/usr/bin/env python3
"""bench/clients/latency.py -- what one request costs on an idle server: sequential requests, each
kind on one kept-alive connection of its own, one request in flight at a time.

    latency.py --base http://127.0.0.1:8100 --n 20000 --warmup 2000

Probes (issue #34's "sub-millisecond cached response"):
  healthz    GET /healthz                                   the cheapest answer the server has
  cached     GET /bench/cached                              W2's page, a page-cache hit (200, the whole page)
  cached304  GET /bench/cached, If-None-Match: its ETag     the same page revalidated (304, no body)
  page       GET /bench/page                                W1's page, not cached (a query, a template)

The probes take turns, one request each, so that whatever the machine does meanwhile falls on all
of them alike. Each request is timed from the first byte written to the last byte of the answer
read (time.perf_counter_ns), on a raw socket with TCP_NODELAY, so the client adds little: no
http.client, a prebuilt request, a minimal parser (Content-Length or chunked). The garbage
collector is off while measuring. Percentiles are nearest-rank. Prints one JSON line.

Stdlib only.
"""
import argparse
import gc
import json
import math
import platform
import socket
import sys
import time
from urllib.parse import urlsplit


class Connection:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def request(self, raw):
        """Sends `raw`; returns (status, headers, body)."""
        self.sock.sendall(raw)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status in (204, 304) or status < 200:
            return status, headers, b""
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    self._fill()
                size = int(self.buf[:eol].split(b";")[0], 16)
                while len(self.buf) < eol + 2 + size + 2:
                    self._fill()
                body += self.buf[eol + 2:eol + 2 + size]
                self.buf = self.buf[eol + 2 + size + 2:]
                if size == 0:
                    return status, headers, body
        raise ValueError("an answer without Content-Length or chunked body on a kept-alive connection")


def raw_get(host, path, extra=()):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: hearth-bench-latency", "Accept: */*"]
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pct(sorted_ns, q):
    """Nearest-rank percentile, in ms."""
    i = min(len(sorted_ns) - 1, max(0, math.ceil(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8100")
    ap.add_argument("--n", type=int, default=20000, help="measured requests per probe")
    ap.add_argument("--warmup", type=int, default=2000, help="requests per probe before measuring")
    a = ap.parse_args()
    url = urlsplit(a.base)
    host, port = url.hostname, url.port or 80
    hosthdr = f"{host}:{port}"

    # The page's validator, from one plain GET (which also puts it in the page cache).
    first = Connection(host, port)
    status, headers, _ = first.request(raw_get(hosthdr, "/bench/cached"))
    etag = headers.get(b"etag", b"").decode()
    if status != 200 or not etag:
        sys.exit(f"GET /bench/cached answered {status} with ETag {etag!r}: no page to revalidate")
    first.sock.close()

    probes = [  # name, request, expected status
        ("healthz", raw_get(hosthdr, "/healthz"), 200),
        ("cached", raw_get(hosthdr, "/bench/cached"), 200),
        ("cached304", raw_get(hosthdr, "/bench/cached", [f"If-None-Match: {etag}"]), 304),
        ("page", raw_get(hosthdr, "/bench/page"), 200),
    ]
    conns = {name: Connection(host, port) for name, _, _ in probes}
    times = {name: [] for name, _, _ in probes}
    errors = {name: 0 for name, _, _ in probes}
    sizes = {name: 0 for name, _, _ in probes}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    for i in range(a.warmup + a.n):
        for name, raw, expect in probes:
            conn = conns[name]
            t0 = clock()
            status, _, body = conn.request(raw)
            t1 = clock()
            if status != expect:
                errors[name] += 1
            if i >= a.warmup:
                times[name].append(t1 - t0)
                sizes[name] = len(body)
    gc.enable()

    out = {"client": "bench/clients/latency.py (Python raw socket, one kept-alive connection per probe)",
           "python": platform.python_version(), "n": a.n, "warmup": a.warmup, "probes": {}}
    for name, raw, expect in probes:
        ts = sorted(times[name])
        out["probes"][name] = {
            "request": raw.split(b"\r\n")[0].decode() + (" + If-None-Match" if name == "cached304" else ""),
            "status": expect, "body_bytes": sizes[name], "errors": errors[name],
            "p50_ms": round(pct(ts, 50), 4), "p90_ms": round(pct(ts, 90), 4),
            "p99_ms": round(pct(ts, 99), 4), "p999_ms": round(pct(ts, 99.9), 4),
            "mean_ms": round(sum(ts) / len(ts) / 1e6, 4), "max_ms": round(ts[-1] / 1e6, 4),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
