#!/usr/bin/env python3
"""A large group and a large chord on SQLite and on Redis: time and memory.

For each result store (the embedded SQLite broker and results, and Redis),
each scenario runs ``--runs`` times with a fresh worker process each time:

* **group**: ``group(add.s(i, i) for i in range(N)).delay().get()``;
* **chord**: ``chord((add.s(i, i) for i in range(N)), tsum.s()).delay().get()``.

Figures, each the median over the runs:

* **send**: seconds the client took to publish the canvas (``delay()``);
* **total**: seconds from the start of ``delay()`` to the value in hand;
* **client MiB**: the client process's peak resident memory (it runs in a
  process of its own, so nothing else is counted);
* **worker MiB**: the worker process's peak resident memory, sampled every
  50 ms while the canvas runs.

This is a program, not a test: nothing asserts on timings.

    python bench/canvas_bench.py                    # 10,000 tasks, 3 runs
    python bench/canvas_bench.py --quick            # 1,000 tasks, 1 run
    python bench/canvas_bench.py --stores sqlite --scenarios chord --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

TASKS = textwrap.dedent('''
    import os
    from celeriac import App

    app = App("canvas_bench")

    @app.task(name="canvas_bench.add")
    def add(x, y):
        return x + y

    @app.task(name="canvas_bench.tsum")
    def tsum(values):
        return sum(values)
''')


def client_main(scenario: str, tasks: int, timeout: float) -> None:
    """Run one canvas in this process and print its figures as JSON."""
    sys.path.insert(0, os.getcwd())
    from canvas_bench_tasks import add, tsum  # type: ignore[import-not-found]
    from celeriac import chord, group

    start = time.perf_counter()
    if scenario == "group":
        result = group(add.s(i, i) for i in range(tasks)).delay()
    else:
        result = chord((add.s(i, i) for i in range(tasks)), tsum.s()).delay()
    sent = time.perf_counter()
    value = result.get(timeout=timeout)
    done = time.perf_counter()
    expected = [i + i for i in range(tasks)] if scenario == "group" else tasks * (tasks - 1)
    if value != expected:
        raise SystemExit(f"{scenario}: wrong result")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"send": sent - start, "total": done - start, "client_mib": peak_kib / 1024}))


class PeakMemory(threading.Thread):
    """Samples a process's resident memory (with its children) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stopped.wait(0.05):
            try:
                rss = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True))
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)


def run_once(store: str, scenario: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="canvas-bench-") as root:
        with open(os.path.join(root, "canvas_bench_tasks.py"), "w") as f:
            f.write(TASKS)
        queue = f"canvas-bench-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env.update(PYTHONPATH=root, CELERIAC_TASK_DEFAULT_QUEUE=queue,
                   CELERIAC_RESULT_EXPIRES="600")
        if store == "sqlite":
            env.update(CELERIAC_BROKER_URL=f"sqlite:///{root}/broker.sqlite3",
                       CELERIAC_RESULT_BACKEND=f"sqlite:///{root}/results.sqlite3")
        else:
            env.update(CELERIAC_BROKER_URL=args.redis_url, CELERIAC_RESULT_BACKEND=args.redis_url)
        log_path = os.path.join(root, "worker.log")
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "canvas_bench_tasks", "worker",
                 "-P", args.pool, "-c", str(args.concurrency), "-Q", queue, "-l", "INFO",
                 "-n", f"{queue}@bench"], cwd=root, env=env, stdout=log,
                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "queues:" not in _read(log_path):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not start:\n{_read(log_path)}")
                time.sleep(0.1)
            memory = PeakMemory(worker.pid)
            memory.start()
            client = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--client", scenario,
                 "--tasks", str(args.tasks), "--timeout", str(args.timeout)],
                cwd=root, env=env, capture_output=True, text=True, check=False)
            memory.stopped.set()
            memory.join()
            if client.returncode != 0:
                raise SystemExit(f"{store} {scenario} failed:\n{client.stderr}\n"
                                 f"{_read(log_path)[-3000:]}")
            figures = json.loads(client.stdout.strip().splitlines()[-1])
            figures["worker_mib"] = memory.peak / 2**20
            return figures
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
            if store == "redis":
                _clean_redis(args.redis_url, queue)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _clean_redis(url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{queue}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=("group", "chord"), help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--scenarios", default="group,chord")
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--redis-url", default=os.environ.get(
        "CELERIAC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, one run")
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.tasks, args.timeout)
        return
    if args.quick:
        args.tasks, args.runs = 1000, 1
    stores = [s for s in args.stores.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for store in stores:  # interleaved, so a noisy spell does not hit one store only
            for scenario in scenarios:
                figures = run_once(store, scenario, args)
                results.setdefault((store, scenario), []).append(figures)
                print(f"run {run + 1}/{args.runs} {store:6} {scenario:5} "
                      + " ".join(f"{k}={v:.2f}" for k, v in figures.items()), flush=True)
    print(f"\n{args.tasks} tasks, {args.pool} pool x{args.concurrency}, median of {args.runs} "
          f"run(s)")
    print(f"{'store':8}{'canvas':8}{'send s':>9}{'total s':>9}{'tasks/s':>10}"
          f"{'client MiB':>12}{'worker MiB':>12}")
    for (store, scenario), runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"{store:8}{scenario:8}{med['send']:9.2f}{med['total']:9.2f}"
              f"{args.tasks / med['total']:10.0f}{med['client_mib']:12.1f}"
              f"{med['worker_mib']:12.1f}")


if __name__ == "__main__":
    main()
