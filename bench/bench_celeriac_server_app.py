"""The celeriac app of ``redis_bench.py`` (Redis and RabbitMQ brokers).

Settings come from ``CELERIAC_*`` variables set by the harness (broker,
result backend, default queue, prefetch).
"""

from bench_counter import count_done
from celeriac import App

app = App("bench")


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
