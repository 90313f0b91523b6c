#!/usr/bin/env python
# Copied unchanged from the reference peer (../shared/peers, benchmark protocol v1) so bench/ is self-contained.
"""Process helpers for run.sh (stdlib only).

  procutil.py rss PID            -> RSS (MiB) of PID + descendants
  procutil.py wait-idle PID MAXS -> wait until PID's tree uses < 10% CPU over 1 s (bounded by MAXS)
  procutil.py cpu-seconds PID    -> user+sys CPU seconds of PID's tree so far
"""
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            pass
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def rss_kb(root):
    tot = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        tot += int(line.split()[1])
        except OSError:
            pass
    return tot


def cpu_s(root):
    tot = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            tot += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            pass
    return tot / HZ


if __name__ == "__main__":
    cmd, pid = sys.argv[1], int(sys.argv[2])
    if cmd == "rss":
        print(f"{rss_kb(pid) / 1024:.1f}")
    elif cmd == "cpu-seconds":
        print(f"{cpu_s(pid):.2f}")
    elif cmd == "wait-idle":
        deadline = time.time() + float(sys.argv[3])
        prev = cpu_s(pid)
        while time.time() < deadline:
            time.sleep(1.0)
            cur = cpu_s(pid)
            if cur - prev < 0.10:
                break
            prev = cur
