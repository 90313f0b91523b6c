#!/usr/bin/env python3
"""bench/clients/h2load_json.py -- runs h2load (Debian's nghttp2-client) and prints one JSON line with
the figures wrk_json.lua gives for wrk: requests/s, latency percentiles, errors.

    h2load_json.py [h2load options...] URL

h2load itself prints only the mean and deviation of its latencies, so this runs it with --log-file
(one line per request: start time, status, microseconds until the end of the response) and takes
the percentiles (nearest-rank) from that file, which is deleted afterwards. Requests/s, the counts of
failed, errored and timed-out requests and the status classes come from h2load's summary, and so
does the protocol it negotiated ("Application protocol: h2"), so a run that fell back to another
protocol shows it.

Stdlib only.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile


def pct(sorted_us, q):
    i = min(len(sorted_us) - 1, max(0, math.ceil(q / 100 * len(sorted_us)) - 1))
    return sorted_us[i] / 1000


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    fd, log = tempfile.mkstemp(prefix="h2load-", suffix=".tsv")
    os.close(fd)
    try:
        run = subprocess.run(["h2load", f"--log-file={log}", *args], capture_output=True, text=True)
        out = run.stdout
        if run.returncode != 0:
            sys.stderr.write(out + run.stderr)
            sys.exit(f"h2load exited with {run.returncode}")
        durations = []
        with open(log) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    durations.append(int(cols[2]))
    finally:
        os.unlink(log)
    durations.sort()

    def grab(pattern, cast=float, default=None):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else default

    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    total, started, done, ok, failed, errored, timeout = map(int, counts.groups()) if counts else (0,) * 7
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    c2, c3, c4, c5 = map(int, codes.groups()) if codes else (0,) * 4
    result = {
        "client": "h2load",
        "protocol": grab(r"Application protocol: (\S+)", str, "?"),
        "rps": grab(r"finished in [\d.]+\w*, ([\d.]+) req/s"),
        "requests": done,
        "succeeded": ok,
        "status": {"2xx": c2, "3xx": c3, "4xx": c4, "5xx": c5},
        # The keys report.py sums as errors, as for wrk: non-2xx answers and requests that failed.
        "err_status": c3 + c4 + c5,
        "err_connect": errored,
        "err_timeout": timeout,
        "err_read": max(0, failed - errored - timeout),
        "logged": len(durations),
    }
    if durations:
        result.update({
            "p50_ms": round(pct(durations, 50), 3), "p90_ms": round(pct(durations, 90), 3),
            "p99_ms": round(pct(durations, 99), 3), "max_ms": round(durations[-1] / 1000, 3),
            "mean_ms": round(sum(durations) / len(durations) / 1000, 3),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
