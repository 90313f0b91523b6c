"""procrastinate peer: psycopg 3 connector, one async no-op task on queue "bench"."""
import os

from procrastinate import App, PsycopgConnector

from record import record

app = App(connector=PsycopgConnector(
    conninfo=os.environ.get("BENCH_PEER_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bench_peer")))


@app.task(name="noop", queue="bench")
async def noop(t_enq: float) -> None:
    record(t_enq)
