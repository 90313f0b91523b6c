#!/usr/bin/env python3
"""Login flood (issue #30): many concurrent wrong logins against a running `hearth serve`,
reporting the answers, the hashes the server computed and its peak memory. Stdlib only.

Usage:
  login_flood.py --url http://127.0.0.1:8000 --pid $(pgrep -f 'hearth serve') \
      --metrics-token TOKEN --concurrency 500 --duration 10 \
      --accounts flood0            # one account
      --accounts flood0-999        # a random one of flood0..flood999 per attempt
      [--addresses 256]            # spread clients over 127.0.1.0.. (loopback) addresses

Each of --concurrency threads sends wrong logins back to back (a fresh connection each, as a
botnet would) until --duration seconds have passed. The CSRF cookie and token are taken once
from GET /login, as a browser does (the token is in the page's <meta name="csrf-token">).
Before and after, it reads VmHWM/VmRSS from /proc/PID/status and hearth_password_* from
/metrics (HEARTH_METRICS_TOKEN), and prints one JSON object. VmHWM is the process's peak
resident memory since start: start a fresh server for each run.
"""
import argparse
import http.client
import json
import random
import re
import threading
import time
import urllib.parse
from collections import Counter


def proc_status(pid):
    """VmHWM and VmRSS of PID, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def metrics(host, port, token):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    text = conn.getresponse().read().decode()
    conn.close()
    found = {}
    for line in text.splitlines():
        if line.startswith("hearth_password_"):
            name, _, value = line.partition(" ")
            found[name] = float(value)
    return found


def csrf(host, port):
    """The CSRF cookie and the page's token, as a browser gets them from the login page."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/login")
    response = conn.getresponse()
    page = response.read().decode()
    cookie = next(
        v.split(";")[0]
        for k, v in response.getheaders()
        if k.lower() == "set-cookie" and v.startswith("hearth_csrf=")
    )
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page).group(1)
    conn.close()
    return cookie, token


def accounts(spec):
    """`name` or `prefixA-B` (prefixA .. prefixB)."""
    m = re.fullmatch(r"(.*?)(\d+)-(\d+)", spec)
    if not m:
        return [spec]
    prefix, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
    return [f"{prefix}{i}" for i in range(lo, hi + 1)]


def worker(host, port, cookie, token, names, addresses, deadline, results, lock):
    statuses, latencies = Counter(), []
    while time.monotonic() < deadline:
        body = urllib.parse.urlencode(
            {"username": random.choice(names), "password": "wrong password!",
             "csrf_token": token})
        source = (random.choice(addresses), 0) if addresses else None
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=60, source_address=source)
            conn.request("POST", "/login", body, {
                "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
            status = conn.getresponse().status
            conn.close()
        except OSError as e:
            status = type(e).__name__
        latencies.append(time.monotonic() - started)
        statuses[status] += 1
    with lock:
        results["statuses"].update(statuses)
        results["latencies"].extend(latencies)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--pid", type=int, required=True, help="the hearth serve process")
    p.add_argument("--metrics-token", required=True)
    p.add_argument("--accounts", default="flood0")
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--addresses", type=int, default=0,
                   help="spread over this many source addresses 127.0.1.0.. (0: the default)")
    args = p.parse_args()
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    names = accounts(args.accounts)
    addresses = [f"127.0.{1 + i // 256}.{i % 256}" for i in range(args.addresses)]
    cookie, token = csrf(host, port)
    before = {"memory": proc_status(args.pid), "metrics": metrics(host, port, args.metrics_token)}

    results, lock = {"statuses": Counter(), "latencies": []}, threading.Lock()
    deadline = time.monotonic() + args.duration
    threads = [threading.Thread(target=worker, args=(
        host, port, cookie, token, names, addresses, deadline, results, lock))
        for _ in range(args.concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    after = {"memory": proc_status(args.pid), "metrics": metrics(host, port, args.metrics_token)}
    lat = sorted(results["latencies"])
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None
    hashes = {k: after["metrics"].get(k, 0) - before["metrics"].get(k, 0)
              for k in ("hearth_password_hashes_total", "hearth_password_hash_refused_total")}
    print(json.dumps({
        "accounts": args.accounts, "concurrency": args.concurrency, "addresses": args.addresses,
        "seconds": round(elapsed, 1), "requests": sum(results["statuses"].values()),
        "statuses": {str(k): v for k, v in sorted(results["statuses"].items(), key=str)},
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "hashes_computed": hashes["hearth_password_hashes_total"],
        "refused_busy": hashes["hearth_password_hash_refused_total"],
        "hashes_running_peak": after["metrics"].get("hearth_password_hashes_running_peak"),
        "memory_mib_before": before["memory"], "memory_mib_after": after["memory"],
    }, indent=1))


if __name__ == "__main__":
    main()
