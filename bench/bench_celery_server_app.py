"""The Celery app of ``redis_bench.py`` (Redis and RabbitMQ brokers).

``BENCH_BROKER_URL``, ``BENCH_RESULT_BACKEND`` (optional), ``BENCH_QUEUE``
(the default queue), ``BENCH_PREFETCH_MULTIPLIER`` (default Celery's 4) and
``BENCH_ACKS_LATE`` (``1``/``0``; unset keeps Celery's default, early acks).
"""

import os

from bench_counter import count_done
from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12"),
             backend=os.environ.get("BENCH_RESULT_BACKEND") or None)
app.conf.update(
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench_celery"),
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
if os.environ.get("BENCH_ACKS_LATE"):
    app.conf.task_acks_late = os.environ["BENCH_ACKS_LATE"] == "1"


@app.task(ignore_result=True)
def add(x: int, y: int) -> int:
    """Throughput and memory runs: counted, no result stored."""
    count_done()
    return x + y


@app.task
def add_result(x: int, y: int) -> int:
    """Commands-per-task runs: counted, result stored."""
    count_done()
    return x + y


@app.task
def add_rt(x: int, y: int) -> int:
    """Round trips: result stored and read back, not counted."""
    return x + y
