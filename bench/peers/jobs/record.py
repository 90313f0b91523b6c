"""The W4 job body shared by every peer queue: append one fixed-width 36-byte line
"%017.6f %017.6f\n" % (t_start, t_enqueued) to $BENCH_RECORD (O_APPEND)."""
import os
import time

RECORD_BYTES = 36
_fd = None


def record(t_enq: float) -> None:
    global _fd
    t = time.time()
    if _fd is None:
        _fd = os.open(os.environ["BENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b"%017.6f %017.6f\n" % (t, t_enq))
