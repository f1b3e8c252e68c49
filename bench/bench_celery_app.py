"""The Celery app the SQLite benchmark runs, on celeriac's SQLite kombu transport.

``BENCH_BROKER_URL`` names the broker file; ``BENCH_RESULT_BACKEND`` (optional)
the result backend; ``BENCH_ACKS_LATE`` is ``1`` or ``0``.
"""

import json
import os

import kombu.transport

# Register the transport before the app is created, so ``sqlite://`` resolves to it.
kombu.transport.TRANSPORT_ALIASES["sqlite"] = "celeriac_sqlite.transport:Transport"

from celery import Celery  # noqa: E402

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "sqlite:////tmp/bench.db"),
             backend=os.environ.get("BENCH_RESULT_BACKEND") or None)
app.conf.update(
    task_acks_late=os.environ.get("BENCH_ACKS_LATE", "1") == "1",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    broker_transport_options=json.loads(os.environ.get("BENCH_TRANSPORT_OPTIONS") or "{}"),
    task_serializer="json",
    accept_content=["json"],
)


@app.task(ignore_result=True)
def noop() -> None:
    """Throughput runs: no work, no result."""


@app.task
def echo(x: int) -> int:
    """Round trips: the result is stored and read back."""
    return x
