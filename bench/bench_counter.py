"""Completion counter shared by the task modules of ``redis_bench.py``.

Every counted task does ``HINCRBY bench:done <pid> 1`` in Redis (db 12 unless
``BENCH_COUNTER_URL`` says otherwise), whatever the framework and the broker,
so the harness sees when all tasks ran and in which worker processes. It is
one extra Redis command per task, the same in every framework; the harness
takes it out of the commands-per-task figures.
"""

from __future__ import annotations

import os

import redis

URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6379/12")
KEY = "bench:done"

_client: redis.Redis | None = None


def count_done() -> None:
    global _client
    client = _client
    if client is None:
        client = _client = redis.Redis.from_url(URL)
    client.hincrby(KEY, str(os.getpid()), 1)
