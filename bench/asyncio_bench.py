#!/usr/bin/env python3
"""Many ``async def`` tasks at once in one ``-P asyncio`` worker process.

One worker process (``celeriac worker -P asyncio -c N``) and ``N`` tasks that
each ``await asyncio.sleep(1)`` and return their argument. A run times, in the
client process, from the first enqueue to the last result read. The tasks are
sent in one ``app.bulk_publish()`` block; the results are read in one of two
ways, each measured in its own runs:

* ``get``: ``AsyncResult.get`` on each result in turn, as most programs do;
* ``poll``: ``app.backend.get_many`` on the results not yet ready, every
  50 ms, until all are (what collecting a group's results costs).

With all ``N`` tasks sleeping at once the floor is 1 s; what is above it is
the cost of receiving, running, storing and reading ``N`` tasks. The worker is
started once per broker and warmed up with one task.

Brokers (each also the result store):

* Redis, database 8 of ``--redis-url`` (``FLUSHDB`` before the worker starts);
  skipped with a note when no server answers;
* SQLite, files in a temporary directory.

Prints the median and every run per broker. This is a program, not a test:
nothing asserts on timings.

    python bench/asyncio_bench.py                 # 2,000 tasks, 3 runs per broker
    python bench/asyncio_bench.py --tasks 500 --runs 1 --only sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TASKS = textwrap.dedent('''
    import asyncio
    from celeriac import App

    app = App("abench")

    @app.task
    async def nap(i, seconds=1.0):
        await asyncio.sleep(seconds)
        return i
''')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run (and concurrency)")
    parser.add_argument("--runs", type=int, default=3, help="runs per broker; the median is shown")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--only", default="redis,sqlite", help="comma-separated brokers to run")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up a run after this")
    return parser.parse_args()


def redis_available(url: str) -> str | None:
    """None when a Redis server answers at ``url``, else why not."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        return f"no Redis server at {url}: {exc}"
    return None


@contextlib.contextmanager
def worker(root: Path, env: dict[str, str], concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
    """A ``-P asyncio`` worker process, ready when its banner is out."""
    log = root / "worker.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "abench_tasks", "worker", "-P", "asyncio",
             "-c", str(concurrency), "-l", "INFO", "-n", "abench@bench"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"queues:" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


READY = {"SUCCESS", "FAILURE", "REVOKED"}


def one_run(app: Any, nap: Any, tasks: int, timeout: float, read: str) -> float:
    start = time.perf_counter()
    with app.bulk_publish():
        results = [nap.delay(i) for i in range(tasks)]
    values: dict[str, Any] = {}
    if read == "get":
        for result in results:
            left = timeout - (time.perf_counter() - start)
            values[result.id] = result.get(timeout=max(0.1, left))
    else:
        pending = [result.id for result in results]
        while pending:
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"{len(pending)} results not ready after {timeout} s")
            docs = app.backend.get_many(pending)
            for task_id, doc in docs.items():
                if doc.get("status") in READY:
                    values[task_id] = doc.get("result")
            pending = [task_id for task_id in pending if task_id not in values]
            if pending:
                time.sleep(0.05)
    took = time.perf_counter() - start
    if [values[result.id] for result in results] != list(range(tasks)):
        raise SystemExit("some task returned the wrong value")
    return took


def bench(name: str, broker: str, backend: str, args: argparse.Namespace,
          root: Path) -> dict[str, list[float]]:
    (root / "abench_tasks.py").write_text(TASKS)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")},
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "CELERIAC_BROKER_URL": broker, "CELERIAC_RESULT_BACKEND": backend}
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("CELERIAC_")})
    sys.path.insert(0, str(root))
    sys.modules.pop("abench_tasks", None)
    try:
        import abench_tasks

        app, nap = abench_tasks.app, abench_tasks.nap
        with worker(root, env, args.tasks):
            nap.delay(-1, 0).get(timeout=60)  # warm up: connections, imports
            times: dict[str, list[float]] = {"get": [], "poll": []}
            for run in range(1, args.runs + 1):
                for read, found in times.items():
                    took = one_run(app, nap, args.tasks, args.timeout, read)
                    print(f"  {name} run {run} ({read}): {took:.2f} s", flush=True)
                    found.append(took)
        app.close()
        return times
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("abench_tasks", None)
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    args = parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    print(f"{args.tasks} async def tasks that each await asyncio.sleep(1), one worker process "
          f"(-P asyncio -c {args.tasks}), {args.runs} runs per broker; first enqueue to last "
          f"result", flush=True)
    table = []
    if "redis" in only:
        why = redis_available(args.redis_url)
        if why:
            print(f"  redis: skipped ({why})")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                times = bench("redis", args.redis_url, args.redis_url, args, Path(tmp))
            table.append(("redis", times))
    if "sqlite" in only:
        with tempfile.TemporaryDirectory() as tmp:
            times = bench("sqlite", f"sqlite:///{tmp}/broker.sqlite3",
                          f"sqlite:///{tmp}/results.sqlite3", args, Path(tmp))
        table.append(("sqlite", times))
    print()
    print(f"{'broker':<8} {'read':<5} {'median':>8}   runs")
    for name, times in table:
        for read, found in times.items():
            runs = ", ".join(f"{t:.2f}" for t in found)
            print(f"{name:<8} {read:<5} {statistics.median(found):>7.2f}s   {runs}")


if __name__ == "__main__":
    main()
