#!/usr/bin/env python3
"""celeriac and Celery side by side on the same SQLite broker transport.

Both frameworks use celeriac's kombu transport (``celeriac_sqlite.transport``);
Celery gets it by registering ``kombu.transport.TRANSPORT_ALIASES["sqlite"]``
(see ``bench_celery_app.py``). Each run of each configuration uses a fresh
broker file in a fresh temporary directory, and measures:

* **enqueue**: ``N`` x ``noop.delay()`` from one client process, no worker
  running (tasks ignore their results);
* **drain**: the workers start on that backlog of ``N``; the rate is counted
  from the first task done to the last (process start-up is left out);
* **end to end**: with the same workers running and idle, one client enqueues
  ``N`` tasks; the rate is counted from the moment the first ``delay()``
  returned to the moment the queue is empty;
* **round trip**: one client calls ``echo.delay(i).get()`` sequentially
  (results on); p50 and p99 in milliseconds.

"Done" means acknowledged: the harness polls the number of rows of the task
queue in the broker file (ready plus leased rows, both read through the
transport's partial indexes) every few milliseconds. The first ``delay()`` of
a client process imports lazily, connects and declares the queue; it is timed
on its own and left out of the rates. Tasks are acknowledged
after they run (``task_acks_late``) in both frameworks unless told otherwise.

Each figure is the median over ``--runs`` runs; the runs of the different
configurations are interleaved so that a noisy spell on a shared machine does
not land on one configuration only. This is a program, not a test: nothing
asserts on timings.

    python bench/sqlite_bench.py                 # 10,000 tasks, 3 runs (a few minutes)
    python bench/sqlite_bench.py --quick         # smoke run (under a minute)
    python bench/sqlite_bench.py --only celeriac-solo-x2,celery-solo-x2 --runs 5
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
QUEUE = "celery"
"""The default queue of both frameworks."""
POLL_INTERVAL = 0.005
"""Seconds between two looks at the queue size while measuring."""
RESULT_MARK = "BENCH_RESULT "
TARGET_E2E = 5000.0
BULK_BATCH = 100
"""Batch size of the bulk end-to-end client (``app.bulk_publish()``, one transaction each)."""
TARGET_RT_P50_MS = 2.0

CELERY_WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


class BenchError(RuntimeError):
    """A run could not be measured (a worker died, a wait ran out, ...)."""


# -- configurations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    framework: str  # "celeriac" or "celery"
    pool: str
    concurrency: int
    processes: int
    variant: str = ""
    """Name of a ``--variant`` (extra environment), empty for the plain configuration."""
    env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        pool = f"-P {self.pool}"
        if self.pool != "solo":
            pool += f" -c {self.concurrency}"
        text = f"{pool} x {self.processes} process{'es' if self.processes > 1 else ''}"
        return f"{text} [{self.variant}]" if self.variant else text

    def with_variant(self, name: str, env: tuple[tuple[str, str], ...]) -> Config:
        return dataclasses.replace(self, key=f"{self.key}+{name}", variant=name, env=env)


CONFIGS = (
    Config("celeriac-solo-x2", "celeriac", "solo", 1, 2),
    Config("celeriac-threads1-x2", "celeriac", "threads", 1, 2),
    Config("celeriac-solo-x1", "celeriac", "solo", 1, 1),
    Config("celery-solo-x2", "celery", "solo", 1, 2),
    Config("celery-prefork2-x1", "celery", "prefork", 2, 1),
    Config("celery-solo-x1", "celery", "solo", 1, 1),
)

QUICK_SKIPS = frozenset({"celery-solo-x1"})


@dataclass
class RunResult:
    enqueue: float | None = None
    drain: float | None = None
    e2e: float | None = None
    rt_p50: float | None = None
    rt_p99: float | None = None
    e2e_publish: float | None = None
    """The client's own publish rate during the end-to-end run (workers competing)."""
    e2e_bulk: float | None = None
    """End to end with the client sending through ``app.bulk_publish()`` in batches of
    ``BULK_BATCH`` (celeriac only: Celery has no bulk publish)."""
    first_call_ms: float | None = None
    """The first ``delay()`` of the enqueue client (lazy imports, connecting)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds of each phase, start-up and shutdown included."""


@dataclass
class Outcome:
    config: Config
    runs: list[RunResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None


# -- the client side (run in a child process) ----------------------------------------------


def _load_tasks(framework: str) -> Any:
    sys.path.insert(0, BENCH_DIR)
    if framework == "celeriac":
        import bench_celeriac_app as module
    else:
        import bench_celery_app as module
    return module


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sqlite_bench.py --client")
    parser.add_argument("role", choices=("enqueue", "roundtrip"))
    parser.add_argument("--framework", required=True, choices=("celeriac", "celery"))
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=0,
                        help="send through app.bulk_publish() in batches of this size (celeriac)")
    args = parser.parse_args(argv)
    module = _load_tasks(args.framework)
    if args.role == "enqueue":
        # The first delay() also imports lazily, connects, opens the file and
        # declares the queue: it is timed on its own, and the rates (enqueue
        # and end to end) are taken over the other N - 1 calls.
        delay = module.noop.delay
        t0 = time.perf_counter()
        delay()
        t1 = time.perf_counter()
        start = time.time()
        if args.batch:
            bulk = module.app.bulk_publish
            left = args.count - 1
            while left > 0:
                with bulk():
                    for _ in range(min(args.batch, left)):
                        delay()
                left -= args.batch
        else:
            for _ in range(args.count - 1):
                delay()
        t2 = time.perf_counter()
        result: dict[str, Any] = {"start": start, "end": start + (t2 - t1),
                                  "first": t1 - t0, "rate": (args.count - 1) / (t2 - t1)}
    else:
        echo = module.echo
        # Celery's result backends without push poll every ``interval`` (0.5 s by
        # default); poll as often as celeriac's SQLite store first does (0.5 ms).
        options = {"interval": 0.0005} if args.framework == "celery" else {}
        for i in range(min(20, args.count)):  # warm-up: connections, result tables
            echo.delay(i).get(timeout=args.timeout, **options)
        latencies = []
        perf = time.perf_counter
        for i in range(args.count):
            t0 = perf()
            value = echo.delay(i).get(timeout=args.timeout, **options)
            latencies.append(perf() - t0)
            if value != i:
                raise SystemExit(f"echo({i}) returned {value!r}")
        result = {"latencies": latencies}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# -- process handling ----------------------------------------------------------------------


_live: dict[int, subprocess.Popen] = {}


def _spawn(cmd: list[str], env: dict[str, str], cwd: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _live[proc.pid] = proc
    return proc


def _stop(proc: subprocess.Popen, grace: float = 10.0, signalled: bool = False) -> None:
    """SIGTERM the process (unless ``signalled`` already), SIGKILL its process group
    if it is not gone in ``grace`` s."""
    try:
        if proc.poll() is None:
            if not signalled:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (Celery's prefork pool) share the session's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    finally:
        _live.pop(proc.pid, None)


def _stop_all() -> None:
    for proc in list(_live.values()):
        _stop(proc, grace=3.0)


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in text) or "    | (empty log)"


# -- the harness ---------------------------------------------------------------------------


class QueueProbe:
    """Counts the task queue's rows (ready plus leased) in the broker file, read-only."""

    SQL = ("SELECT (SELECT count(*) FROM kombu_message WHERE queue = ? AND visible_at IS NULL)"
           " + (SELECT count(*) FROM kombu_message WHERE visible_at IS NOT NULL AND queue = ?)")

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                  timeout=10.0, check_same_thread=False)

    def count(self) -> int:
        return int(self.db.execute(self.SQL, (QUEUE, QUEUE)).fetchone()[0])

    def leftovers(self) -> list[tuple[str, int]]:
        return self.db.execute("SELECT queue, count(*) FROM kombu_message GROUP BY queue").fetchall()

    def close(self) -> None:
        self.db.close()


class Run:
    """One run of one configuration, in its own temporary directory."""

    def __init__(self, config: Config, args: argparse.Namespace, celery_backend: bool) -> None:
        self.config = config
        self.args = args
        self.dir = tempfile.mkdtemp(prefix=f"celeriac-bench-{config.key}-")
        self.broker = os.path.join(self.dir, "broker.sqlite3")
        self.results = os.path.join(self.dir, "results.sqlite3")
        self.celery_backend = celery_backend
        self.workers: list[tuple[subprocess.Popen, str]] = []
        self.result: RunResult | None = None
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERIAC_", "BENCH_", "CELERY_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [BENCH_DIR, env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        broker_url = f"sqlite:///{self.broker}"
        acks_late = "1" if self.args.acks_late else "0"
        if self.config.framework == "celeriac":
            env["CELERIAC_BROKER_URL"] = broker_url
            env["CELERIAC_RESULT_BACKEND"] = f"sqlite:///{self.results}"
            env["CELERIAC_TASK_ACKS_LATE"] = "true" if self.args.acks_late else "false"
            if self.args.prefetch_multiplier is not None:
                env["CELERIAC_WORKER_PREFETCH_MULTIPLIER"] = str(self.args.prefetch_multiplier)
        else:
            env["BENCH_BROKER_URL"] = broker_url
            env["BENCH_ACKS_LATE"] = acks_late
            if self.args.prefetch_multiplier is not None:
                env["BENCH_PREFETCH_MULTIPLIER"] = str(self.args.prefetch_multiplier)
            if self.celery_backend:
                env["BENCH_RESULT_BACKEND"] = f"db+sqlite:///{self.dir}/celery-results.sqlite3"
        for item in self.args.env:
            name, _, value = item.partition("=")
            env[name] = value
        env.update(self.config.env)
        return env

    def close(self) -> None:
        t0 = time.monotonic()
        # All at once, so that they shut down in parallel. (Celery's loop only sees
        # the signal when its 2-second drain_events() returns: it takes seconds.)
        for proc, _ in self.workers:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            _stop(proc, signalled=True)
        self.workers.clear()
        if self.result is not None:
            self.result.phases["stop"] = round(time.monotonic() - t0, 2)
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- processes --

    def client(self, role: str, count: int, timeout: float) -> dict[str, Any]:
        cmd = [sys.executable, os.path.abspath(__file__), "--client", role,
               "--framework", self.config.framework, "--count", str(count)]
        log = os.path.join(self.dir, f"client-{role}.log")
        proc = _spawn(cmd, self.env, self.dir, log)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{role} client did not finish in {timeout:.0f} s:\n{_tail(log)}") from None
        finally:
            _stop(proc)
        return self._client_result(proc, role, log)

    def _client_result(self, proc: subprocess.Popen, role: str, log: str) -> dict[str, Any]:
        if proc.returncode != 0:
            raise BenchError(f"{role} client exited with {proc.returncode}:\n{_tail(log)}")
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in reversed(f.read().splitlines()):
                if line.startswith(RESULT_MARK):
                    return json.loads(line[len(RESULT_MARK):])
        raise BenchError(f"{role} client printed no result:\n{_tail(log)}")

    def start_workers(self) -> None:
        c = self.config
        for i in range(c.processes):
            name = f"w{i + 1}@bench"
            if c.framework == "celeriac":
                cmd = [sys.executable, "-m", "celeriac", "-A", "bench_celeriac_app", "worker",
                       "-P", c.pool, "-c", str(c.concurrency), "-n", name, "-l", "WARNING"]
            else:
                cmd = [sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker",
                       "-P", c.pool, "-c", str(c.concurrency), "-n", name, "-l", "WARNING",
                       *CELERY_WORKER_FLAGS]
            log = os.path.join(self.dir, f"worker-{i + 1}.log")
            self.workers.append((_spawn(cmd, self.env, self.dir, log), log))

    def check_workers(self) -> None:
        for proc, log in self.workers:
            if proc.poll() is not None:
                raise BenchError(f"worker pid {proc.pid} exited with {proc.returncode}:\n{_tail(log)}")

    def worker_logs(self) -> str:
        return "\n".join(f"  worker log {os.path.basename(log)}:\n{_tail(log, 10)}"
                         for _, log in self.workers)

    # -- phases --

    def measure(self) -> RunResult:
        n = self.args.tasks
        result = self.result = RunResult()
        budget = self.args.timeout
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            result.phases[name] = round(now - mark, 2)
            mark = now

        # 1. enqueue N with no worker running.
        got = self.client("enqueue", n, budget)
        phase("enqueue")
        result.enqueue = got["rate"]
        result.first_call_ms = got["first"] * 1000
        probe = QueueProbe(self.broker)
        try:
            queued = probe.count()
            if queued != n:
                raise BenchError(f"expected {n} queued tasks after enqueueing, found {queued}")

            # 2. drain: start the workers on the backlog.
            self.start_workers()
            first = self._wait_until(probe, lambda c: c < n, budget, "the first task to finish")
            done = self._wait_until(probe, lambda c: c == 0, budget, "the backlog to drain")
            # Tasks done between the first look below N and the empty queue.
            remaining = first[1]
            if remaining > 0 and done[0] > first[0]:
                result.drain = remaining / (done[0] - first[0])
            phase("drain")

            # 3. end to end: same workers, now idle.
            result.e2e, result.e2e_publish = self._end_to_end(probe, n, budget)
            phase("e2e")
            if self.config.framework == "celeriac":
                result.e2e_bulk, _ = self._end_to_end(probe, n, budget, batch=BULK_BATCH)
                phase("e2e-bulk")
            left = [(q, c) for q, c in probe.leftovers() if c]
            if left:
                raise BenchError(f"rows left in the broker after the runs (dead letters?): {left}")
        finally:
            probe.close()

        # 4. round trips with results on.
        if self.config.framework == "celeriac" or self.celery_backend:
            self.check_workers()
            got = self.client("roundtrip", self.args.roundtrips, budget)
            lat = sorted(got["latencies"])
            result.rt_p50 = _percentile(lat, 0.50) * 1000
            result.rt_p99 = _percentile(lat, 0.99) * 1000
            phase("roundtrip")
        return result

    def _wait_until(self, probe: QueueProbe, predicate: Any, timeout: float,
                    what: str) -> tuple[float, int]:
        deadline = time.monotonic() + timeout
        checks = 0
        while True:
            count = probe.count()
            now = time.time()
            if predicate(count):
                return now, count
            checks += 1
            if checks % 20 == 0:
                self.check_workers()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} "
                                 f"({count} tasks still queued)\n{self.worker_logs()}")
            time.sleep(POLL_INTERVAL)

    def _end_to_end(self, probe: QueueProbe, n: int, timeout: float,
                    batch: int = 0) -> tuple[float, float]:
        self.check_workers()
        cmd = [sys.executable, os.path.abspath(__file__), "--client", "enqueue",
               "--framework", self.config.framework, "--count", str(n), "--batch", str(batch)]
        log = os.path.join(self.dir, "client-e2e.log")
        proc = _spawn(cmd, self.env, self.dir, log)
        try:
            deadline = time.monotonic() + timeout
            samples: list[tuple[float, int]] = []
            checks = 0
            while True:
                exited = proc.poll() is not None
                count = probe.count()
                now = time.time()
                samples.append((now, count))
                if exited and count == 0:
                    break
                checks += 1
                if checks % 20 == 0:
                    self.check_workers()
                if time.monotonic() > deadline:
                    raise BenchError(f"end-to-end run did not finish in {timeout:.0f} s "
                                     f"({count} tasks queued)\n{self.worker_logs()}")
                time.sleep(POLL_INTERVAL)
        finally:
            _stop(proc)
        got = self._client_result(proc, "end-to-end", log)
        # The first empty queue seen after the last delay() returned.
        finished = next(t for t, c in samples if c == 0 and t >= got["end"])
        return (n - 1) / (finished - got["start"]), got["rate"]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index]


# -- reporting -----------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _best(outcomes: Sequence[Outcome], framework: str, processes: int | None = None,
          min_processes: int = 1) -> Outcome | None:
    pool = [o for o in outcomes if o.config.framework == framework and o.median("e2e") is not None
            and not o.config.variant and (processes is None or o.config.processes == processes)
            and _parallelism(o.config) >= min_processes]
    return max(pool, key=lambda o: o.median("e2e") or 0.0, default=None)


def _parallelism(c: Config) -> int:
    return c.processes * (c.concurrency if c.pool == "prefork" else 1)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _versions() -> str:
    import kombu

    parts = [f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}",
             f"kombu {kombu.__version__}"]
    for name in ("celeriac", "celery"):
        try:
            module = __import__(name)
            parts.append(f"{name} {module.__version__}")
        except Exception:
            parts.append(f"{name} (not importable)")
    return ", ".join(parts)


def report(outcomes: Sequence[Outcome], args: argparse.Namespace, celery_backend: bool) -> str:
    out: list[str] = []
    w = out.append
    headline = _best(outcomes, "celeriac", min_processes=2)
    celery_best = _best(outcomes, "celery", min_processes=2)
    w(f"SQLite broker (celeriac_sqlite.transport for both), {args.tasks:,} tasks per figure, "
      f"median of {args.runs} run(s), {os.cpu_count()} CPU(s).")
    w(f"Versions: {_versions()}. Load average (1 min) at start {args.load_start:.2f}, "
      f"at end {_load():.2f}.")
    w(f"Targets: >= {TARGET_E2E:,.0f} tasks/s end to end with 2 worker processes; "
      f"round-trip p50 <= {TARGET_RT_P50_MS:g} ms.")
    w(f"Acknowledgement: task_acks_late={args.acks_late} for both frameworks; prefetch "
      f"multiplier {args.prefetch_multiplier if args.prefetch_multiplier is not None else 4}. "
      f"Celery workers run with {' '.join(CELERY_WORKER_FLAGS)}.")
    w("")
    w("| framework | workers | enqueue tasks/s | drain tasks/s | end-to-end tasks/s "
      "| round trip p50 ms | round trip p99 ms | client publish/s during end to end "
      f"| end-to-end tasks/s, bulk enqueue ({BULK_BATCH}/batch) |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        star = " **(headline)**" if o is headline else (" **(best)**" if o is celery_best else "")
        name = "celeriac" if o.config.framework == "celeriac" else "Celery 5.7"
        note = f" ({len(o.runs)}/{args.runs} runs)" if len(o.runs) != args.runs else ""
        w(f"| {name}{star} | {o.config.label}{note} | {_fmt_rate(o.median('enqueue'))} "
          f"| {_fmt_rate(o.median('drain'))} | {_fmt_rate(o.median('e2e'))} "
          f"| {_fmt_ms(o.median('rt_p50'))} | {_fmt_ms(o.median('rt_p99'))} "
          f"| {_fmt_rate(o.median('e2e_publish'))} "
          f"| {_fmt_rate(o.median('e2e_bulk')) if o.config.framework == 'celeriac' else 'n/a (no bulk publish)'} |")
    na = "n/a (no SQLite broker)"
    w(f"| Dramatiq | - | {na} | {na} | {na} | {na} | {na} | {na} | {na} |")
    w("")
    firsts = []
    for framework, name in (("celeriac", "celeriac"), ("celery", "Celery")):
        values = [r.first_call_ms for o in outcomes if o.config.framework == framework
                  for r in o.runs if r.first_call_ms is not None]
        if values:
            firsts.append(f"{name} {statistics.median(values):.0f} ms")
    if firsts:
        w("First `delay()` of a fresh client process (imports, connecting; left out of the "
          "rates), median: " + ", ".join(firsts) + ".")
        w("")
    if celery_backend:
        w("Celery round trip: its own `db+sqlite://` result backend (SQLAlchemy; configured "
          "for every Celery run, used only by the round trips), polled every 0.5 ms.")
        w("")
    else:
        w("Celery round trip: n/a. Celery cannot read celeriac's SQLite result store, and its own "
          "SQLite result backend (`db+sqlite://`) needs SQLAlchemy, which is not installed here.")
        w("")

    pairs = [("2 worker processes", headline, celery_best)]
    celeriac_one = _best(outcomes, "celeriac", processes=1)
    celery_one = next((o for o in outcomes if o.config.key == "celery-solo-x1"), None)
    if celeriac_one and celery_one:
        pairs.append(("1 worker process (solo)", celeriac_one, celery_one))
    w("Ratios celeriac / Celery (above 1 is better for rates; below 1 is better for latency):")
    w("")
    w("| comparison | enqueue | drain | end to end | round trip p50 | round trip p99 |")
    w("|---|---:|---:|---:|---:|---:|")
    for label, a, b in pairs:
        if a is None or b is None:
            w(f"| {label} | n/a | n/a | n/a | n/a | n/a |")
            continue
        w(f"| {label}: celeriac {a.config.label} vs Celery {b.config.label} "
          f"| {_ratio(a.median('enqueue'), b.median('enqueue'))} "
          f"| {_ratio(a.median('drain'), b.median('drain'))} "
          f"| {_ratio(a.median('e2e'), b.median('e2e'))} "
          f"| {_ratio(a.median('rt_p50'), b.median('rt_p50'))} "
          f"| {_ratio(a.median('rt_p99'), b.median('rt_p99'))} |")
    w("")
    if headline is not None:
        e2e, p50 = headline.median("e2e"), headline.median("rt_p50")
        bulk = headline.median("e2e_bulk")
        w(f"Targets for celeriac ({headline.config.label}): end to end {_fmt_rate(e2e)} tasks/s "
          f"({'met' if e2e and e2e >= TARGET_E2E else 'not met'}) with one-at-a-time publishing, "
          f"{_fmt_rate(bulk)} tasks/s ({'met' if bulk and bulk >= TARGET_E2E else 'not met'}) "
          f"with bulk publishing; round-trip p50 "
          f"{_fmt_ms(p50)} ms ({'met' if p50 is not None and p50 <= TARGET_RT_P50_MS else 'not met'}).")
    failures = [(o.config.key, e) for o in outcomes for e in o.errors]
    if failures:
        w("")
        w(f"{len(failures)} run(s) failed and are left out of the medians:")
        for key, err in failures:
            w(f"- {key}: {err.splitlines()[0]}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def _check_transport() -> None:
    try:
        spec = importlib.util.find_spec("celeriac_sqlite.transport")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise SystemExit("celeriac_sqlite.transport is not importable: run "
                         "`uv sync --all-packages` and use the workspace environment.")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=None, help="tasks per figure (default 10000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per configuration (default 3)")
    parser.add_argument("--roundtrips", type=int, default=None,
                        help="sequential delay().get() calls per run (default 1000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,000 tasks, 1 run, 200 round trips, without "
                        "Celery -P solo x 1")
    parser.add_argument("--only", default=None,
                        help="comma-separated configurations: " + ", ".join(c.key for c in CONFIGS))
    parser.add_argument("--prefetch-multiplier", type=int, default=None,
                        help="worker prefetch multiplier for both frameworks (default: theirs, 4)")
    parser.add_argument("--no-acks-late", dest="acks_late", action="store_false",
                        help="acknowledge before running (Celery's default) in both frameworks")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds any one wait may take before the run fails")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for every process (repeatable), e.g. "
                        "CELERIAC_SQLITE__ACK_MODE=batched; the Celery app reads "
                        "BENCH_TRANSPORT_OPTIONS (JSON)")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME[@CONFIG,...]:VAR=VALUE[,...]",
                        help="also run the selected configurations (or the ones named after @) "
                        "with these environment variables, interleaved with the plain runs "
                        "(repeatable; for A/B comparisons on a noisy machine), e.g. "
                        "batched@celeriac-solo-x2:CELERIAC_SQLITE__ACK_MODE=batched")
    parser.add_argument("--json", default=None, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args(argv)
    quick = args.quick
    args.tasks = args.tasks or (1000 if quick else 10000)
    args.runs = args.runs or (1 if quick else 3)
    args.roundtrips = args.roundtrips or (200 if quick else 1000)
    # Bounded waits: generous for a slow, shared machine (100 tasks/s at least).
    args.timeout = args.timeout or max(60.0, args.tasks / 100.0)
    if args.tasks < 2 or args.runs < 1 or args.roundtrips < 1:
        parser.error("--tasks must be >= 2, --runs and --roundtrips >= 1")
    keys = {c.key for c in CONFIGS}
    if args.only is None:
        # The smoke run leaves out the slowest configuration to stay under a minute.
        args.configs = [c for c in CONFIGS if not (quick and c.key in QUICK_SKIPS)]
    else:
        args.configs = [c for c in CONFIGS if c.key in args.only.split(",")]
    unknown = set((args.only or "").split(",")) - keys - {""}
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
    variants = []
    for item in args.variant:
        head, sep, assignments = item.partition(":")
        name, _, scope = head.partition("@")
        pairs = [a.partition("=") for a in assignments.split(",") if a]
        if not sep or not name or not pairs or any(not eq or not k for k, eq, _ in pairs):
            parser.error(f"--variant wants NAME[@config,...]:VAR=VALUE[,VAR=VALUE...], "
                         f"not {item!r}")
        only = set(scope.split(",")) if scope else None
        if only and only - keys:
            parser.error(f"unknown configuration(s) in --variant: {', '.join(sorted(only - keys))}")
        variants.append((name, only, tuple((k, v) for k, _, v in pairs)))
    args.configs = args.configs + [c.with_variant(name, env) for name, only, env in variants
                                   for c in args.configs if only is None or c.key in only]
    return args


@contextlib.contextmanager
def _signals_stop_everything() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--client":
        return client_main(argv[1:])
    args = parse_args(argv)
    args.load_start = _load()
    _check_transport()
    celery_backend = importlib.util.find_spec("sqlalchemy") is not None
    atexit.register(_stop_all)
    outcomes = [Outcome(c) for c in args.configs]
    started = time.monotonic()
    log = sys.stderr
    print(f"{len(outcomes)} configurations x {args.runs} run(s), {args.tasks:,} tasks, "
          f"{args.roundtrips:,} round trips", file=log, flush=True)
    with _signals_stop_everything():
        try:
            for run_no in range(1, args.runs + 1):
                for o in outcomes:
                    t0 = time.monotonic()
                    run = Run(o.config, args, celery_backend)
                    try:
                        r = run.measure()
                    except Exception as exc:
                        text = str(exc) if isinstance(exc, BenchError) else \
                            f"{type(exc).__name__}: {exc}"
                        o.errors.append(text)
                        print(f"[run {run_no}] {o.config.key}: FAILED: {text}", file=log, flush=True)
                        continue
                    finally:
                        run.close()
                    o.runs.append(r)
                    print(f"[run {run_no}] {o.config.key:22s} enqueue {_fmt_rate(r.enqueue):>7s}/s"
                          f"  drain {_fmt_rate(r.drain):>7s}/s  e2e {_fmt_rate(r.e2e):>7s}/s"
                          f" (publish {_fmt_rate(r.e2e_publish)}/s)"
                          f"  e2e bulk {_fmt_rate(r.e2e_bulk)}/s"
                          f"  rt p50 {_fmt_ms(r.rt_p50)} p99 {_fmt_ms(r.rt_p99)} ms"
                          f"  ({time.monotonic() - t0:.1f} s: "
                          + ", ".join(f"{k} {v:.1f}" for k, v in r.phases.items()) + ")",
                          file=log, flush=True)
        except KeyboardInterrupt:
            print("interrupted: stopping workers", file=log, flush=True)
            _stop_all()
            return 130
        finally:
            _stop_all()
    print(f"total {time.monotonic() - started:.0f} s", file=log, flush=True)
    print(report(outcomes, args, celery_backend))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({o.config.key: {"runs": [vars(r) for r in o.runs], "errors": o.errors}
                       for o in outcomes}, f, indent=2)
    return 0 if all(o.runs for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
