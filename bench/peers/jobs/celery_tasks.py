"""Celery 5 peer: Redis broker (db 2), no result backend, JSON, one no-op task on queue "bench"."""
import os

from celery import Celery

from record import record

app = Celery("bench_peer", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379") + "/2")
app.conf.update(
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(t_enq: float) -> None:
    record(t_enq)
