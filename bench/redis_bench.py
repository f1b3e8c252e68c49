#!/usr/bin/env python3
"""celeriac, Celery 5.7 and Dramatiq 2.x side by side on the same Redis (and RabbitMQ).

Every framework runs at its best single-process setting (see ``--celery-pool``,
``--dramatiq-threads``, ... and docs/benchmarks-redis.md for how those were
picked) against the same Redis server, database 12 (``FLUSHDB`` before every
run of every framework). Workers and clients are separate processes, started
the same way for every framework (``celeriac worker``, ``celery worker``,
``dramatiq``), one command per worker process. Each run of each framework
measures:

* **enqueue**: one client process sends ``N`` x ``add(i, i)`` one at a time,
  no worker running (the first call, which imports lazily and connects, is
  timed apart and left out);
* **drain, 1 process**: one worker starts on that backlog; the rate runs from
  the first task done to the last;
* **round trip**: with that worker idle, one client calls ``add_rt`` and waits
  for its result, ``--roundtrips`` times in sequence (Redis result backends:
  celeriac's ``redis://``, Celery's ``redis://``, Dramatiq's ``Results`` with
  ``RedisBackend``); p50 and p99;
* **Redis commands per task**: with that worker idle, ``INFO commandstats`` is
  read, one client sends ``--cmd-tasks`` x ``add_result`` one at a time (result
  stored) while the worker runs them, the harness waits until all ran (plus
  0.3 s for the last acknowledgements), and reads ``INFO commandstats`` again.
  The delta, less the harness's own commands and the completion counter,
  divided by the task count. A ``MONITOR`` connection runs during the window:
  it splits the commands into those clients sent and those Lua scripts ran
  (``INFO commandstats`` counts both), and sees the commands other programs
  send to other databases of the server, which are taken out of the delta;
* **bulk enqueue**, no worker running: celeriac ``N`` tasks through
  ``app.bulk_publish()`` and, separately, through ``task.apply_bulk()``, in
  blocks of ``--bulk-batch``; Celery through kombu 5.7's ``Producer.batch()``
  with ``apply_async(producer=...)`` (Celery has no bulk API of its own);
  Dramatiq has none;
* **drain, 2 processes**: on that refilled queue of ``N`` tasks, two worker
  processes start; the rate runs from the moment *both* have finished a task
  to the last task.

Once per framework, after the runs (``--skip-rss`` leaves it out): **worker
RSS** (the worker's whole process tree, via psutil) of one idle worker before
and after ``--rss-tasks`` countdown tasks (``countdown=3600``) were sent. The
"after" figure is taken once the client is done and, for 3 s, the RSS moved by
less than 1 MB and the worker took no more messages off the queue's list (at
most ``--rss-max-settle`` s). celeriac sends them with ``app.bulk_publish()``;
for Celery and Dramatiq the first one goes through their API and the others
are copies of its wire form with fresh ids, pipelined straight into Redis (the
worker cannot tell, and it takes seconds instead of minutes).

Completions are counted the same way in all frameworks: every counted task
does ``HINCRBY bench:done <pid> 1`` in Redis db 12 (``bench_counter.py``);
the harness polls ``HVALS`` every few milliseconds.

``--rabbitmq`` adds enqueue, one-process drain and (celeriac) bulk enqueue on
RabbitMQ (``amqp://guest:guest@127.0.0.1:5672//``, queues ``bench_<framework>``,
deleted before every run and at the end; the completion counter still lives in
Redis db 12).

Figures are medians over ``--runs`` runs; the frameworks' runs are
interleaved. This is a program, not a test: nothing asserts on timings.

    python bench/redis_bench.py                    # 3 runs, 10,000 tasks (8-9 minutes)
    python bench/redis_bench.py --rabbitmq         # and RabbitMQ (about 12 minutes)
    python bench/redis_bench.py --quick            # smoke run
    python bench/redis_bench.py --rabbitmq --skip-rss --only celeriac,celery
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REDIS_URL = "redis://127.0.0.1:6379/12"
REDIS_DB = 12
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
COUNTER_KEY = "bench:done"
FRAMEWORKS = ("celeriac", "celery", "dramatiq")
NAMES = {"celeriac": "celeriac", "celery": "Celery 5.7", "dramatiq": "Dramatiq 2.x"}
APP_MODULES = {"celeriac": "bench_celeriac_server_app", "celery": "bench_celery_server_app",
               "dramatiq": "bench_dramatiq_app"}
POLL_INTERVAL = 0.003
"""Seconds between two looks at the completion counter."""
RESULT_MARK = "BENCH_RESULT "
MONITOR_SENTINEL = "celeriac-bench-monitor-stop"
CELERY_WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")

# Targets (ratios are taken within the same run of this program).
T_DRAIN1_VS_CELERY = 5.0
T_DRAIN1_VS_DRAMATIQ = 2.0
T_DRAIN2_VS_DRAMATIQ = 2.0
T_ENQUEUE_VS_CELERY = 4.0
T_BULK = 50_000.0
T_AMQP_DRAIN_VS_CELERY = 2.0
T_AMQP_ENQUEUE_VS_DRAMATIQ = 1.0
T_RT_P50_MS = 0.8
T_RT_P99_MS = 2.0
T_CMDS_PER_TASK = 4.0
T_RSS_MB = 50.0


class BenchError(RuntimeError):
    """A run could not be measured (a worker died, a wait ran out, ...)."""



# -- the client side (run in a child process) ----------------------------------------------


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="redis_bench.py --client")
    parser.add_argument("role", choices=("enqueue", "roundtrip"))
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--task", default="add", choices=("add", "add_result"))
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=0,
                        help="send through app.bulk_publish() in blocks of this size (celeriac)")
    parser.add_argument("--countdown", type=float, default=0.0)
    parser.add_argument("--bulk-api", default="bulk_publish", choices=("bulk_publish", "apply_bulk"),
                        help="celeriac: `with app.bulk_publish(): task.delay(...)` per block, or "
                        "`task.apply_bulk(args_list)` per block")
    parser.add_argument("--clone", action="store_true",
                        help="send the first task normally, then copies of its wire form "
                        "(Celery, Dramatiq; for the memory run)")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, BENCH_DIR)
    module = importlib.import_module(APP_MODULES[args.framework])
    dramatiq = args.framework == "dramatiq"
    task = getattr(module, args.task)
    send: Callable[[int], Any]
    if dramatiq:
        if args.countdown:
            delay_ms = int(args.countdown * 1000)

            def send(i: int) -> Any:
                return task.send_with_options(args=(i, i), delay=delay_ms)
        else:
            def send(i: int) -> Any:
                return task.send(i, i)
    elif args.countdown:
        countdown = args.countdown

        def send(i: int) -> Any:
            return task.apply_async((i, i), countdown=countdown)
    else:
        send = lambda i: task.delay(i, i)  # noqa: E731

    if args.role == "enqueue" and args.clone:
        t0 = time.perf_counter()
        send(0)
        t1 = time.perf_counter()
        _send_clones(args.framework, module, task, args.count - 1, args.countdown)
        t2 = time.perf_counter()
        result: dict[str, Any] = {"first": t1 - t0, "rate": (args.count - 1) / (t2 - t1)}
    elif args.role == "enqueue":
        # The first call imports lazily, connects and declares the queue: timed apart.
        t0 = time.perf_counter()
        send(0)
        t1 = time.perf_counter()
        if args.batch and args.framework == "celeriac" and args.bulk_api == "apply_bulk":
            options = {"countdown": args.countdown} if args.countdown else {}
            for i in range(1, args.count, args.batch):
                task.apply_bulk([(j, j) for j in range(i, min(args.count, i + args.batch))],
                                **options)
        elif args.batch and args.framework == "celeriac":
            bulk = module.app.bulk_publish
            i = 1
            while i < args.count:
                end = min(args.count, i + args.batch)
                with bulk():
                    for j in range(i, end):
                        send(j)
                i = end
        elif args.batch and args.framework == "celery":
            # kombu 5.7's Producer.batch(): Celery 5.7 has no bulk API of its own, but
            # apply_async(producer=...) inside the batch pipelines the LPUSHes.
            with module.app.producer_or_acquire() as producer, \
                    producer.batch(max_size=args.batch):
                for i in range(1, args.count):
                    task.apply_async((i, i), producer=producer, countdown=args.countdown or None)
        else:
            for i in range(1, args.count):
                send(i)
        t2 = time.perf_counter()
        result = {"first": t1 - t0, "rate": (args.count - 1) / (t2 - t1)}
    else:
        rt = module.add_rt
        if dramatiq:
            timeout_ms = int(args.timeout * 1000)

            def call(i: int) -> Any:
                return rt.send(i, i).get_result(block=True, timeout=timeout_ms)
        else:
            timeout = args.timeout

            def call(i: int) -> Any:
                return rt.delay(i, i).get(timeout=timeout)
        for i in range(min(20, args.count)):  # warm-up: connections, subscriptions
            call(i)
        perf = time.perf_counter
        latencies = []
        for i in range(args.count):
            t0 = perf()
            value = call(i)
            latencies.append(perf() - t0)
            if value != 2 * i:
                raise SystemExit(f"add_rt({i}, {i}) returned {value!r}")
        result = {"latencies": latencies}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _send_clones(framework: str, module: Any, task: Any, count: int, countdown: float) -> None:
    """Write ``count`` copies of the message the framework builds for ``task(0, 0)``
    (with ``countdown``), each with fresh ids, straight to Redis in pipelines of 1,000.

    Only for the memory run: the worker cannot tell these from messages sent one by
    one through the framework's API, and 200,000 of them are written in seconds
    instead of minutes (Celery sends about 1,500 tasks/s on this machine).
    """
    import uuid

    if framework == "celery":
        from kombu.transport import redis as kombu_redis
        from kombu.utils.json import dumps

        captured: list[tuple[Any, str, dict[str, Any]]] = []
        put = kombu_redis.Channel._put

        def grab(self: Any, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
            captured.append((self, queue, message))

        kombu_redis.Channel._put = grab  # type: ignore[method-assign]
        try:
            task.apply_async((0, 0), countdown=countdown or None)
        finally:
            kombu_redis.Channel._put = put  # type: ignore[method-assign]
        channel, queue, message = captured[0]
        key = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
        with channel.conn_or_acquire() as client:
            for start in range(0, count, 1000):
                pipe = client.pipeline(transaction=False)
                for _ in range(min(1000, count - start)):
                    task_id = str(uuid.uuid4())
                    message["headers"]["id"] = message["headers"]["root_id"] = task_id
                    message["properties"]["correlation_id"] = task_id
                    message["properties"]["delivery_tag"] = str(uuid.uuid4())
                    pipe.lpush(key, dumps(message))
                pipe.execute()
        return
    if framework == "dramatiq":
        from dramatiq.common import current_millis, dq_name

        broker = module.broker
        delay_ms = int(countdown * 1000)
        template = task.message_with_options(args=(0, 0))
        queue = dq_name(template.queue_name) if delay_ms else template.queue_name
        script = broker.scripts["dispatch"]
        unpack = broker._max_unpack_size()
        for start in range(0, count, 1000):
            pipe = broker.client.pipeline(transaction=False)
            now = current_millis()
            for _ in range(min(1000, count - start)):
                redis_id = str(uuid.uuid4())
                options = {"redis_message_id": redis_id}
                if delay_ms:
                    options["eta"] = now + delay_ms
                message = template.copy(message_id=str(uuid.uuid4()), queue_name=queue,
                                        options=options)
                script(keys=[broker.namespace],
                       args=["enqueue", now, queue, broker.broker_id, broker.heartbeat_timeout,
                             broker.dead_message_ttl, 0, unpack, redis_id, message.encode()],
                       client=pipe)
            pipe.execute()
        return
    raise SystemExit(f"--clone is not available for {framework}")


# -- process handling ----------------------------------------------------------------------


_live: dict[int, subprocess.Popen] = {}


def _spawn(cmd: list[str], env: dict[str, str], cwd: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _live[proc.pid] = proc
    return proc


def _stop(proc: subprocess.Popen, grace: float = 10.0, signalled: bool = False) -> None:
    """SIGTERM the process (unless ``signalled`` already), SIGKILL its process group
    if it is not gone in ``grace`` s. Only processes this program started."""
    try:
        if proc.poll() is None:
            if not signalled:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # Dramatiq's worker processes share the session's process group.
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


def _tree_rss(pid: int) -> int:
    """Resident set size of a process and all its descendants, in bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


# -- frameworks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """How one framework runs: its worker command line and environment."""

    framework: str
    pool: str = "solo"
    concurrency: int = 1
    prefetch: int | None = None
    threads: int = 1
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        if self.framework == "dramatiq":
            text = f"-p 1 -t {self.threads}"
            if self.prefetch is not None:
                text += f", queue prefetch {self.prefetch}"
            return text
        text = f"-P {self.pool}"
        if self.pool != "solo":
            text += f" -c {self.concurrency}"
        text += f", prefetch x{self.prefetch if self.prefetch is not None else 4}"
        if self.framework == "celery":
            text += ", early acks (default)"
        else:
            text += ", late acks (default)"
        if self.extra_env:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.extra_env)
        return text

    def env(self, broker_url: str, result_url: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERIAC_", "BENCH_", "CELERY_", "dramatiq_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [BENCH_DIR, env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["BENCH_COUNTER_URL"] = REDIS_URL
        queue = f"bench_{self.framework}"
        if self.framework == "celeriac":
            env["CELERIAC_BROKER_URL"] = broker_url
            env["CELERIAC_RESULT_BACKEND"] = result_url or ""
            env["CELERIAC_TASK_DEFAULT_QUEUE"] = queue
            if self.prefetch is not None:
                env["CELERIAC_WORKER_PREFETCH_MULTIPLIER"] = str(self.prefetch)
        else:
            env["BENCH_BROKER_URL"] = broker_url
            env["BENCH_RESULT_BACKEND"] = result_url or ""
            env["BENCH_QUEUE"] = queue
            if self.framework == "celery" and self.prefetch is not None:
                env["BENCH_PREFETCH_MULTIPLIER"] = str(self.prefetch)
            if self.framework == "dramatiq" and self.prefetch is not None:
                env["dramatiq_queue_prefetch"] = str(self.prefetch)
        env.update(self.extra_env)
        return env

    def worker_cmd(self, index: int) -> list[str]:
        py = sys.executable
        module = APP_MODULES[self.framework]
        if self.framework == "dramatiq":
            return [py, "-m", "dramatiq", module, "-p", "1", "-t", str(self.threads)]
        pool = ["-P", self.pool] + (["-c", str(self.concurrency)] if self.pool != "solo" else [])
        prefetch = ["--prefetch-multiplier", str(self.prefetch)] if self.prefetch is not None else []
        name = ["-n", f"w{index}@bench-{self.framework}"]
        if self.framework == "celeriac":
            return [py, "-m", "celeriac", "worker", "-A", module, *pool, *name, "-l", "WARNING",
                    *prefetch]
        return [py, "-m", "celery", "-A", module, "worker", *pool, *name, "-l", "WARNING",
                *prefetch, *CELERY_WORKER_FLAGS]


def celeriac_transport_error(scheme: str) -> str | None:
    """None when celeriac's transport for ``scheme`` is installed and loads, else why not."""
    proc = subprocess.run([sys.executable, "-m", "celeriac", "plugins", "--json"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f"`celeriac plugins` failed: {proc.stderr.strip()[-300:]}"
    for entry in json.loads(proc.stdout):
        if entry.get("role") == "transport" and entry.get("name") == scheme:
            return entry.get("error")
    return "transport not installed"


# -- measuring -----------------------------------------------------------------------------


@dataclass
class RunResult:
    enqueue: float | None = None
    bulk: float | None = None
    """celeriac: ``app.bulk_publish()``; Celery: kombu's ``Producer.batch()``."""
    apply_bulk: float | None = None
    """celeriac: ``task.apply_bulk(args_list)``."""
    drain1: float | None = None
    drain2: float | None = None
    rt_p50: float | None = None
    rt_p99: float | None = None
    commands: Commands | None = None
    """Redis commands per task, tasks sent one at a time to an idle worker."""
    commands_backlog: Commands | None = None
    """Redis commands per task, a backlog drained by a worker started on it."""
    first_call_ms: float | None = None
    drain2_note: str | None = None

    @property
    def cmds(self) -> float | None:
        return None if self.commands is None else self.commands.total

    @property
    def cmds_client(self) -> float | None:
        return None if self.commands is None else self.commands.client

    @property
    def cmds_lua(self) -> float | None:
        return None if self.commands is None else self.commands.lua

    @property
    def cmds_backlog(self) -> float | None:
        return None if self.commands_backlog is None else self.commands_backlog.total

    @property
    def cmds_backlog_client(self) -> float | None:
        return None if self.commands_backlog is None else self.commands_backlog.client

    @property
    def cmds_backlog_lua(self) -> float | None:
        return None if self.commands_backlog is None else self.commands_backlog.lua
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class Commands:
    total: float
    """INFO commandstats delta per task, less the harness's own commands and other
    programs' commands on other databases."""
    client: float
    """Commands sent by clients on db 12 per task (MONITOR; a script call is one)."""
    lua: float
    """Commands run inside Lua scripts on db 12 per task (MONITOR)."""
    background: int
    """Commands on other databases seen during the window (taken out of ``total``)."""
    breakdown: dict[str, float] = field(default_factory=dict)


@dataclass
class RssResult:
    before_mb: float
    after_mb: float
    peak_mb: float
    publish_rate: float
    settle_s: float
    left_ready: int | None = None
    parked: int | None = None
    """celeriac: countdown messages its workers moved to the delayed set on the broker."""

    @property
    def growth(self) -> float:
        return self.after_mb - self.before_mb


@dataclass
class Outcome:
    setup: Setup
    runs: list[RunResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss: RssResult | None = None
    rss_error: str | None = None
    unavailable: str | None = None

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None


def _redis(url: str = REDIS_URL) -> Any:
    import redis

    return redis.Redis.from_url(url, single_connection_client=True)


class Monitor:
    """A MONITOR connection counting the commands on db 12 (client-sent and inside
    Lua scripts) and on other databases, until the harness echoes the sentinel."""

    def __init__(self, exclude_port: str) -> None:
        self.exclude_port = exclude_port
        self.client: Counter[str] = Counter()
        self.lua: Counter[str] = Counter()
        self.other: Counter[str] = Counter()
        self.error: str | None = None
        self._ready = threading.Event()
        self._conn = _redis()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchError("MONITOR did not start")
        return self

    def _run(self) -> None:
        try:
            with self._conn.monitor() as mon:
                self._ready.set()
                for item in mon.listen():
                    command = item["command"]
                    if MONITOR_SENTINEL in command:
                        break
                    if item["db"] != REDIS_DB:
                        self.other[command.partition(" ")[0].lower()] += 1
                        continue
                    if item["client_port"] == self.exclude_port:
                        continue
                    name, _, rest = command.partition(" ")
                    name = name.lower()
                    if name == "hincrby" and rest.startswith(COUNTER_KEY + " "):
                        continue  # the completion counter: instrumentation, not the framework
                    if item["client_type"] == "lua":
                        self.lua[name] += 1
                    else:
                        self.client[name] += 1
        except Exception as exc:  # reported, not raised: it runs in a thread
            self.error = f"{type(exc).__name__}: {exc}"
            self._ready.set()

    def finish(self, harness: Any) -> None:
        harness.echo(MONITOR_SENTINEL)
        self._thread.join(30)
        with contextlib.suppress(Exception):
            self._conn.close()
        if self._thread.is_alive():
            raise BenchError("MONITOR did not see the end of the window")
        if self.error:
            raise BenchError(f"MONITOR failed: {self.error}")

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def _commandstats(r: Any) -> Counter[str]:
    stats = r.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


class Bench:
    """Runs of the frameworks against one broker, in a temporary directory of logs."""

    def __init__(self, args: argparse.Namespace, broker: str) -> None:
        self.args = args
        self.broker = broker  # "redis" or "amqp"
        self.broker_url = REDIS_URL if broker == "redis" else AMQP_URL
        self.result_url = REDIS_URL if broker == "redis" else None
        self.dir = tempfile.mkdtemp(prefix=f"celeriac-{broker}-bench-")
        self.r = _redis()
        self.r_port = self.r.client_info()["addr"].rpartition(":")[2]
        self.polls = 0
        self.workers: list[tuple[subprocess.Popen, str]] = []
        self.log_no = 0

    def close(self) -> None:
        self.stop_workers()
        with contextlib.suppress(Exception):
            self.r.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- processes --

    def _log(self, what: str) -> str:
        self.log_no += 1
        return os.path.join(self.dir, f"{self.log_no:03d}-{what}.log")

    def client(self, setup: Setup, role: str, count: int, *, task: str = "add", batch: int = 0,
               countdown: float = 0.0, clone: bool = False, bulk_api: str = "bulk_publish",
               wait: bool = True) -> Any:
        cmd = [sys.executable, os.path.abspath(__file__), "--client", role, "--framework",
               setup.framework, "--task", task, "--count", str(count), "--batch", str(batch),
               "--countdown", str(countdown), "--bulk-api", bulk_api] + \
            (["--clone"] if clone else [])
        log = self._log(f"{setup.framework}-client-{role}")
        proc = _spawn(cmd, setup.env(self.broker_url, self.result_url), self.dir, log)
        if not wait:
            return proc, log
        try:
            proc.wait(self.args.timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{role} client did not finish in {self.args.timeout:.0f} s:\n"
                             f"{_tail(log)}") from None
        finally:
            _stop(proc)
        return self.client_result(proc, role, log)

    def client_result(self, proc: subprocess.Popen, role: str, log: str) -> dict[str, Any]:
        if proc.returncode != 0:
            raise BenchError(f"{role} client exited with {proc.returncode}:\n{_tail(log)}")
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in reversed(f.read().splitlines()):
                if line.startswith(RESULT_MARK):
                    return json.loads(line[len(RESULT_MARK):])
        raise BenchError(f"{role} client printed no result:\n{_tail(log)}")

    def start_workers(self, setup: Setup, count: int) -> None:
        env = setup.env(self.broker_url, self.result_url)
        for i in range(count):
            log = self._log(f"{setup.framework}-worker{i + 1}")
            self.workers.append((_spawn(setup.worker_cmd(i + 1), env, self.dir, log), log))

    def stop_workers(self) -> None:
        # All at once, so that they shut down in parallel.
        for proc, _ in self.workers:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            # Every task has run by now: no need to wait long for a clean exit (a Celery
            # solo worker on RabbitMQ takes about 10 s to notice SIGTERM).
            _stop(proc, grace=3.0, signalled=True)
        self.workers.clear()

    def check_workers(self) -> None:
        for proc, log in self.workers:
            if proc.poll() is not None:
                raise BenchError(f"worker exited with {proc.returncode}:\n{_tail(log)}")

    def worker_logs(self) -> str:
        return "\n".join(f"  {os.path.basename(log)}:\n{_tail(log, 12)}" for _, log in self.workers)

    # -- Redis --

    def reset(self) -> None:
        """Empty Redis db 12 (no worker may run), and the RabbitMQ queues on amqp."""
        if self.workers:
            raise BenchError("reset with workers running")
        self.r.flushdb()
        if self.broker == "amqp":
            delete_amqp_queues()

    def counts(self) -> list[int]:
        self.polls += 1
        return [int(v) for v in self.r.hvals(COUNTER_KEY)]

    def wait_done(self, total: int, processes: int = 1,
                  timeout: float | None = None) -> tuple[float, int, float, bool]:
        """Poll the counter until ``total`` tasks ran. Returns the time at which all
        ``processes`` had done a task, the tasks done then, the time at which all were
        done, and whether all processes did take part."""
        deadline = time.monotonic() + (timeout or self.args.timeout)
        perf = time.perf_counter
        start: tuple[float, int] | None = None
        first: tuple[float, int] | None = None
        checks = 0
        while True:
            values = self.counts()
            now = perf()
            done = sum(values)
            if done and first is None:
                first = (now, done)
            if start is None and len(values) >= processes and all(values):
                start = (now, done)
            if done >= total:
                if done > total:
                    raise BenchError(f"{done} tasks ran, {total} were sent (redeliveries?)")
                if start is None:  # a process never got a task: count from the first
                    assert first is not None
                    return first[0], first[1], now, False
                return start[0], start[1], now, True
            checks += 1
            if checks % 50 == 0:
                self.check_workers()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {total} tasks ({done} ran, per "
                                 f"process {values})\n{self.worker_logs()}")
            time.sleep(POLL_INTERVAL)

    def drain(self, setup: Setup, n: int, processes: int) -> tuple[float, bool]:
        self.r.delete(COUNTER_KEY)
        self.start_workers(setup, processes)
        t0, done0, t1, all_took_part = self.wait_done(n, processes)
        if n - done0 <= 0 or t1 <= t0:
            raise BenchError(f"the backlog drained before the rate could be taken "
                             f"({done0} of {n} done at the first look)")
        return (n - done0) / (t1 - t0), all_took_part

    # -- one run --

    def measure(self, setup: Setup) -> RunResult:
        args = self.args
        n = args.tasks
        result = RunResult()
        t_phase = time.monotonic()

        def phase(name: str) -> None:
            nonlocal t_phase
            now = time.monotonic()
            result.phases[name] = round(now - t_phase, 1)
            t_phase = now

        self.reset()
        # 1. enqueue, one at a time, no worker.
        got = self.client(setup, "enqueue", n)
        result.enqueue = got["rate"]
        result.first_call_ms = got["first"] * 1000
        phase("enqueue")
        # 2. drain with one worker process.
        result.drain1, _ = self.drain(setup, n, 1)
        phase("drain1")
        if self.broker == "redis" and not args.drain_only:
            # 3. round trips, the worker idle.
            self.check_workers()
            got = self.client(setup, "roundtrip", args.roundtrips)
            lat = sorted(got["latencies"])
            result.rt_p50 = _percentile(lat, 0.50) * 1000
            result.rt_p99 = _percentile(lat, 0.99) * 1000
            phase("roundtrip")
            # 4. Redis commands per task, with results stored: tasks sent one at a time
            # to the idle worker, then a backlog drained by a fresh worker.
            result.commands = self.commands(setup, backlog=False)
            phase("commands")
            result.commands_backlog = self.commands(setup, backlog=True)
            phase("commands-backlog")
            # 5. refill (bulk for celeriac and Celery), then drain with two worker processes.
            if setup.framework == "celeriac":
                # celeriac's other bulk API, timed on its own and thrown away.
                got = self.client(setup, "enqueue", n, batch=args.bulk_batch,
                                  bulk_api="apply_bulk")
                result.apply_bulk = got["rate"]
                self.reset()
            self.r.delete(COUNTER_KEY)
            if setup.framework in ("celeriac", "celery"):
                got = self.client(setup, "enqueue", n, batch=args.bulk_batch)
                result.bulk = got["rate"]
            else:
                self.client(setup, "enqueue", n)
            phase("refill")
            result.drain2, all_took_part = self.drain(setup, n, 2)
            if not all_took_part:
                result.drain2_note = "one process got no task"
            phase("drain2")
        elif self.broker == "amqp" and setup.framework == "celeriac" and not args.drain_only:
            # Bulk enqueue on RabbitMQ too (the queue is emptied in between).
            self.stop_workers()
            got = self.client(setup, "enqueue", n, batch=args.bulk_batch)
            result.bulk = got["rate"]
            self.reset()
            got = self.client(setup, "enqueue", n, batch=args.bulk_batch, bulk_api="apply_bulk")
            result.apply_bulk = got["rate"]
            phase("bulk")
        self.stop_workers()
        phase("stop")
        return result

    def commands(self, setup: Setup, backlog: bool) -> Commands:
        """Redis commands per task for ``--cmd-tasks`` tasks with results stored.

        ``backlog=False`` (trickle): the worker runs and is idle; one client sends
        the tasks one at a time while the worker runs them. ``backlog=True``: no
        worker runs; the client sends them all, then one worker starts (its start-up
        commands are in the window) and drains them; it is stopped after the window.
        """
        m = self.args.cmd_tasks
        self.r.delete(COUNTER_KEY)
        if backlog:
            self.stop_workers()
        else:
            self.check_workers()
        self.r.client_info()  # (counted before the window)
        with Monitor(self.r_port) as monitor:
            polls0 = self.polls
            before = _commandstats(self.r)
            self.client(setup, "enqueue", m, task="add_result")
            if backlog:
                self.start_workers(setup, 1)
            self.wait_done(m)
            time.sleep(0.3)  # the last acknowledgements and result stores
            after = _commandstats(self.r)
            polls = self.polls - polls0
            monitor.finish(self.r)
        if backlog:
            self.stop_workers()
        delta = after - before
        # The harness's own commands (the INFO that opened the window, the counter polls,
        # MONITOR itself), the tasks' completion counter, and whatever other programs ran
        # on other databases of the server meanwhile (seen by MONITOR) are not the
        # framework's.
        for name, calls in (("info", 1), ("hvals", polls), ("monitor", 1), ("hincrby", m)):
            delta[name] -= calls
        delta.subtract(monitor.other)
        delta = +delta  # drops zero and negative entries
        return Commands(total=sum(delta.values()) / m,
                        client=sum(monitor.client.values()) / m,
                        lua=sum(monitor.lua.values()) / m,
                        background=sum(monitor.other.values()),
                        breakdown={name: calls / m for name, calls in delta.most_common()})

    # -- memory --

    def rss(self, setup: Setup) -> RssResult:
        args = self.args
        self.reset()
        self.r.delete(COUNTER_KEY)
        self.start_workers(setup, 1)
        proc = self.workers[0][0]
        warm = 100
        self.client(setup, "enqueue", warm)
        self.wait_done(warm)
        time.sleep(1.0)
        before = statistics.median(self._rss_samples(proc.pid, 5, 0.2))
        celeriac = setup.framework == "celeriac"
        client, log = self.client(setup, "enqueue", args.rss_tasks,
                                  batch=args.bulk_batch if celeriac else 0, countdown=3600.0,
                                  clone=not celeriac, wait=False)
        peak = before
        samples: list[tuple[float, int, int | None]] = []
        try:
            deadline = time.monotonic() + args.timeout + args.rss_tasks / 500
            while client.poll() is None:
                value = _tree_rss(proc.pid)
                peak = max(peak, value)
                self.check_workers()
                if time.monotonic() > deadline:
                    raise BenchError(f"the countdown client did not finish:\n{_tail(log)}")
                time.sleep(0.25)
        finally:
            _stop(client)
        got = self.client_result(client, "countdown", log)
        # Settle: at least --rss-settle s, then until, over the last 3 s, the RSS moved
        # by less than 1 MB and the worker took no more messages off the queue's list
        # (Celery takes them all into memory, celeriac parks them all on the broker,
        # Dramatiq holds a fixed number); at most --rss-max-settle s.
        t_done = time.monotonic()
        while True:
            now = time.monotonic()
            value = _tree_rss(proc.pid)
            peak = max(peak, value)
            samples.append((now, value, self._ready_left(setup)[0]))
            self.check_workers()
            window = [(v, n) for t, v, n in samples if t >= now - 3.0]
            rss_values = [v for v, _ in window]
            if (now - t_done >= args.rss_settle and samples[0][0] <= now - 3.0
                    and max(rss_values) - min(rss_values) < 1 << 20
                    and len({n for _, n in window}) == 1):
                break
            if now - t_done > args.rss_max_settle:
                break
            time.sleep(0.25)
        after = statistics.median(self._rss_samples(proc.pid, 5, 0.2))
        settle = time.monotonic() - t_done
        left, parked = self._ready_left(setup)  # before stopping: a stopping worker gives them back
        done = sum(self.counts())
        if done != warm:
            raise BenchError(f"{done - warm} countdown tasks ran early")
        self.stop_workers()
        mb = 1 << 20
        return RssResult(before / mb, after / mb, peak / mb, got["rate"], settle, left, parked)

    def _rss_samples(self, pid: int, count: int, interval: float) -> list[int]:
        values = []
        for _ in range(count):
            values.append(_tree_rss(pid))
            time.sleep(interval)
        return values

    def _ready_left(self, setup: Setup) -> tuple[int | None, int | None]:
        """Countdown messages still in the broker's ready list after the settle, and
        (celeriac) those parked in the queue's delayed sorted set on the broker."""
        queue = f"bench_{setup.framework}"
        if setup.framework == "dramatiq":
            return int(self.r.llen(f"dramatiq:{queue}.DQ")), None
        left = int(self.r.llen(queue))
        if setup.framework == "celeriac":
            return left, int(self.r.zcard(f"{queue}\x06\x16delayed"))
        return left, None


def delete_amqp_queues() -> None:
    import kombu

    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        for fw in FRAMEWORKS:
            for name in (f"bench_{fw}", f"bench_{fw}.DQ", f"bench_{fw}.XQ"):
                channel.queue_delete(name)
        channel.close()


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    index = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[index]


# -- reporting -----------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio_value(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ratio(a: float | None, b: float | None) -> str:
    value = _ratio_value(a, b)
    return "n/a" if value is None else f"{value:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for name in ("celeriac", "celery", "dramatiq", "kombu", "redis"):
        try:
            module = importlib.import_module(name)
            parts.append(f"{name if name != 'redis' else 'redis-py'} "
                         f"{getattr(module, '__version__', '?')}")
        except Exception:
            parts.append(f"{name} (not importable)")
    try:
        r = _redis()
        parts.append(f"Redis server {r.info('server')['redis_version']}")
        r.close()
    except Exception:
        pass
    return ", ".join(parts)



def _source_state() -> str:
    """The checkout's commit and a digest of celeriac's Python sources (kernel and
    plugins), to tell whether they changed while the program ran."""
    import hashlib

    root = os.path.dirname(BENCH_DIR)
    digest = hashlib.sha256()
    for top in ("core", "plugins"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if d not in ("tests", "__pycache__"))
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    digest.update(path.encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    try:
        head = subprocess.run(["git", "--no-optional-locks", "rev-parse", "--short", "HEAD"],
                              cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return f"commit {head or '?'}, sources {digest.hexdigest()[:12]}"


def _celeriac_bulk(o: Outcome) -> str:
    return f"{_rate(o.median('bulk'))} (bulk_publish), {_rate(o.median('apply_bulk'))} (apply_bulk)"


def report_redis(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    out: list[str] = []
    w = out.append
    by = {o.setup.framework: o for o in outcomes}
    w(f"## Redis ({REDIS_URL}), {args.tasks:,} tasks per rate, {args.roundtrips:,} round trips, "
      f"{args.cmd_tasks:,} tasks for commands per task, median of {args.runs} run(s)")
    w("")
    w("| framework | worker setting | enqueue/s (one at a time) | enqueue/s (bulk) "
      "| drain/s, 1 process | drain/s, 2 processes | round trip p50 ms | round trip p99 ms "
      "| Redis commands/task, one at a time | Redis commands/task, backlog "
      f"| worker RSS growth MB, {args.rss_tasks:,} countdown tasks |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        fw = o.setup.framework
        name = NAMES[fw]
        if o.unavailable:
            na = f"n/a ({o.unavailable})"
            w(f"| {name} | {o.setup.label} | {na} | n/a | n/a | n/a | n/a | n/a | n/a | n/a "
              "| n/a |")
            continue
        note = f" ({len(o.runs)}/{args.runs} runs)" if len(o.runs) != args.runs else ""
        bulk = {"celeriac": _celeriac_bulk(o),
                "celery": f"{_rate(o.median('bulk'))} (kombu Producer.batch)"}.get(
                    fw, "n/a (no bulk API)")
        if o.rss is not None:
            rss = f"{o.rss.growth:+.1f} ({o.rss.before_mb:.0f} → {o.rss.after_mb:.0f})"
        else:
            rss = "skipped" if args.skip_rss else f"n/a ({o.rss_error or 'failed'})".split("\n")[0]
        w(f"| {name} | {o.setup.label}{note} | {_rate(o.median('enqueue'))} | {bulk} "
          f"| {_rate(o.median('drain1'))} | {_rate(o.median('drain2'))} "
          f"| {_ms(o.median('rt_p50'))} | {_ms(o.median('rt_p99'))} "
          f"| {_num(o.median('cmds'))} | {_num(o.median('cmds_backlog'))} | {rss} |")
    w("")
    ours = by.get("celeriac")
    rows = []
    for other in ("celery", "dramatiq"):
        b = by.get(other)
        if ours is None or b is None:
            continue
        rows.append(
            f"| celeriac / {NAMES[other]} | {_ratio(ours.median('enqueue'), b.median('enqueue'))} "
            f"| {_ratio(ours.median('bulk'), b.median('bulk') or b.median('enqueue'))} "
            f"| {_ratio(ours.median('drain1'), b.median('drain1'))} "
            f"| {_ratio(ours.median('drain2'), b.median('drain2'))} "
            f"| {_ratio(ours.median('rt_p50'), b.median('rt_p50'))} "
            f"| {_ratio(ours.median('rt_p99'), b.median('rt_p99'))} "
            f"| {_ratio(ours.median('cmds'), b.median('cmds'))} "
            f"| {_ratio(ours.median('cmds_backlog'), b.median('cmds_backlog'))} |")
    if rows:
        w("Ratios (medians; above 1 is better for rates, below 1 for latency and commands):")
        w("")
        w("| comparison | enqueue | bulk enqueue (vs theirs, else their one at a time) | drain, 1 process "
          "| drain, 2 processes | round trip p50 | round trip p99 | commands/task, one at a time "
          "| commands/task, backlog |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        out.extend(rows)
        w("")
    w("Redis commands per task with results stored, by command (INFO commandstats delta / "
      "tasks, the run with the median total; commands run inside Lua scripts count, as INFO "
      "counts them; in brackets: sent by clients + run inside Lua, from MONITOR). "
      "*One at a time*: the tasks are sent one by one to an idle worker. *Backlog*: they are "
      "all sent, then a worker starts and drains them (its start-up is in the window):")
    w("")
    for o in outcomes:
        for label, attr in (("one at a time", "commands"), ("backlog", "commands_backlog")):
            found = [getattr(r, attr) for r in o.runs if getattr(r, attr) is not None]
            if o.unavailable or not found:
                continue
            mid = sorted(found, key=lambda c: c.total)[len(found) // 2]
            spread = ""
            if len(found) > 1:
                totals = [c.total for c in found]
                spread = f", runs {min(totals):.2f}–{max(totals):.2f}"
            top = ", ".join(f"{name} {value:.2f}" for name, value in list(mid.breakdown.items())[:10])
            w(f"- {NAMES[o.setup.framework]}, {label}: **{mid.total:.2f}** ({mid.client:.2f} + "
              f"{mid.lua:.2f}{spread}): {top}")
    background = [c.background for o in outcomes for r in o.runs
                  for c in (r.commands, r.commands_backlog) if c is not None and c.background]
    if background:
        w(f"- Other programs sent up to {max(background):,} commands to other databases of the "
          "server during a window; MONITOR saw them, and they are taken out of the figures.")
    w("")
    firsts = [f"{NAMES[o.setup.framework]} {o.median('first_call_ms'):.0f} ms" for o in outcomes
              if o.median("first_call_ms") is not None]
    if firsts:
        w("First send of a fresh client process (imports, connecting; left out of the rates), "
          "median: " + ", ".join(firsts) + ".")
    notes = [f"{NAMES[o.setup.framework]} run {i + 1}: {r.drain2_note}" for o in outcomes
             for i, r in enumerate(o.runs) if r.drain2_note]
    if notes:
        w("Two-process drains counted from the first task (one process started too late): "
          + "; ".join(notes) + ".")
    rss_notes = []
    for o in outcomes:
        if o.rss is not None:
            if o.rss.parked is not None:
                left = f", {o.rss.parked:,} parked by the worker in the broker's delayed set, " \
                    f"{o.rss.left_ready:,} still in the queue's list"
            elif o.rss.left_ready is not None:
                left = f", {args.rss_tasks - o.rss.left_ready:,} taken in by the worker, " \
                    f"{o.rss.left_ready:,} still in Redis's list"
            else:
                left = ""
            rss_notes.append(f"{NAMES[o.setup.framework]}: peak {o.rss.peak_mb:.0f} MB, countdown "
                             f"publish {o.rss.publish_rate:,.0f}/s, settled {o.rss.settle_s:.0f} s"
                             f"{left}")
    if rss_notes:
        w("RSS runs (once per framework): " + "; ".join(rss_notes) + ".")
    w("")
    w(_targets_redis(by, args))
    failures = [(o.setup.framework, e) for o in outcomes for e in o.errors]
    if failures:
        w("")
        w(f"{len(failures)} run(s) failed and are left out of the medians:")
        for fw, err in failures:
            w(f"- {fw}: {err.splitlines()[0]}")
    return "\n".join(out)


def _targets_redis(by: dict[str, Outcome], args: argparse.Namespace) -> str:
    ours = by.get("celeriac")
    celery = by.get("celery")
    dram = by.get("dramatiq")
    lines = ["Targets (celeriac; ratios within this run):", ""]
    if ours is None or ours.unavailable or not ours.runs:
        why = ours.unavailable if ours is not None and ours.unavailable else "not measured"
        lines.append(f"- all Redis targets: n/a (celeriac {why})")
        return "\n".join(lines)

    def ratio_line(label: str, metric: str, other: Outcome | None, target: float,
                   metric_other: str | None = None) -> None:
        value = None if other is None else _ratio_value(ours.median(metric),
                                                       other.median(metric_other or metric))
        ok = None if value is None else value >= target
        shown = "n/a" if value is None else f"{value:.2f}x"
        lines.append(f"- {label} ≥ {target:g}x: {shown} — {_verdict(ok)}")

    ratio_line("drain, 1 process vs Celery", "drain1", celery, T_DRAIN1_VS_CELERY)
    ratio_line("drain, 1 process vs Dramatiq", "drain1", dram, T_DRAIN1_VS_DRAMATIQ)
    ratio_line("drain, 2 processes vs Dramatiq", "drain2", dram, T_DRAIN2_VS_DRAMATIQ)
    ratio_line("enqueue one at a time vs Celery", "enqueue", celery, T_ENQUEUE_VS_CELERY)
    bulk, apply_bulk = ours.median("bulk"), ours.median("apply_bulk")
    lines.append(f"- bulk enqueue ≥ {T_BULK:,.0f}/s: {_rate(bulk)}/s with `app.bulk_publish()` — "
                 f"{_verdict(None if bulk is None else bulk >= T_BULK)}; {_rate(apply_bulk)}/s "
                 f"with `task.apply_bulk()` — "
                 f"{_verdict(None if apply_bulk is None else apply_bulk >= T_BULK)}")
    p50, p99 = ours.median("rt_p50"), ours.median("rt_p99")
    lines.append(f"- round trip p50 ≤ {T_RT_P50_MS} ms: {_ms(p50)} ms — "
                 f"{_verdict(None if p50 is None else p50 <= T_RT_P50_MS)}")
    lines.append(f"- round trip p99 ≤ {T_RT_P99_MS} ms: {_ms(p99)} ms — "
                 f"{_verdict(None if p99 is None else p99 <= T_RT_P99_MS)}")
    for label, key in (("one at a time", "cmds"), ("backlog", "cmds_backlog")):
        cmds, client = ours.median(key), ours.median(key + "_client")
        lines.append(f"- ≤ {T_CMDS_PER_TASK:g} Redis commands per task with the result stored, "
                     f"{label}: {_num(cmds)} as INFO commandstats counts them (Lua-internal "
                     f"commands included) — {_verdict(None if cmds is None else cmds <= T_CMDS_PER_TASK)}; "
                     f"{_num(client)} sent by clients — "
                     f"{_verdict(None if client is None else client <= T_CMDS_PER_TASK)}")
    if ours.rss is not None:
        g = ours.rss.growth
        lines.append(f"- worker RSS growth with {args.rss_tasks:,} countdown tasks < "
                     f"{T_RSS_MB:g} MB: {g:+.1f} MB — "
                     f"{_verdict(g < T_RSS_MB) if args.rss_tasks >= 200_000 else 'n/a (fewer tasks than the target names)'}")
    else:
        lines.append("- worker RSS growth: n/a (" + ("skipped" if args.skip_rss else "failed") + ")")
    return "\n".join(lines)


def report_amqp(outcomes: Sequence[Outcome], args: argparse.Namespace) -> str:
    out: list[str] = []
    w = out.append
    by = {o.setup.framework: o for o in outcomes}
    w(f"## RabbitMQ ({AMQP_URL.replace('guest:guest@', '')}), {args.tasks:,} tasks, "
      f"median of {args.runs} run(s)")
    w("")
    w("| framework | worker setting | enqueue/s (one at a time) | enqueue/s (bulk) "
      "| drain/s, 1 process |")
    w("|---|---|---:|---:|---:|")
    for o in outcomes:
        if o.unavailable:
            w(f"| {NAMES[o.setup.framework]} | {o.setup.label} | n/a ({o.unavailable}) | n/a "
              "| n/a |")
            continue
        note = f" ({len(o.runs)}/{args.runs} runs)" if len(o.runs) != args.runs else ""
        bulk = _celeriac_bulk(o) if o.setup.framework == "celeriac" else "n/a"
        w(f"| {NAMES[o.setup.framework]} | {o.setup.label}{note} | {_rate(o.median('enqueue'))} "
          f"| {bulk} | {_rate(o.median('drain1'))} |")
    w("")
    ours = by.get("celeriac")
    if ours is not None and not ours.unavailable and ours.runs:
        celery, dram = by.get("celery"), by.get("dramatiq")
        for other in (celery, dram):
            if other is not None:
                w(f"Ratio celeriac / {NAMES[other.setup.framework]}: enqueue "
                  f"{_ratio(ours.median('enqueue'), other.median('enqueue'))}, drain "
                  f"{_ratio(ours.median('drain1'), other.median('drain1'))}.")
        w("")
        d = None if celery is None else _ratio_value(ours.median("drain1"), celery.median("drain1"))
        e = None if dram is None else _ratio_value(ours.median("enqueue"), dram.median("enqueue"))
        w("Targets (celeriac; ratios within this run):")
        w("")
        w(f"- drain, 1 process vs Celery ≥ {T_AMQP_DRAIN_VS_CELERY:g}x: "
          f"{'n/a' if d is None else f'{d:.2f}x'} — {_verdict(None if d is None else d >= T_AMQP_DRAIN_VS_CELERY)}")
        w(f"- enqueue vs Dramatiq ≥ {T_AMQP_ENQUEUE_VS_DRAMATIQ:g}x: "
          f"{'n/a' if e is None else f'{e:.2f}x'} — {_verdict(None if e is None else e >= T_AMQP_ENQUEUE_VS_DRAMATIQ)}")
    else:
        why = ours.unavailable if ours is not None and ours.unavailable else "not measured"
        w(f"Targets: n/a (celeriac {why}).")
    failures = [(o.setup.framework, e) for o in outcomes for e in o.errors]
    if failures:
        w("")
        w(f"{len(failures)} run(s) failed and are left out of the medians:")
        for fw, err in failures:
            w(f"- {fw}: {err.splitlines()[0]}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks per enqueue/drain figure (default 10000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per framework (default 3)")
    parser.add_argument("--roundtrips", type=int, default=None,
                        help="sequential send-and-wait calls per run (default 2000)")
    parser.add_argument("--cmd-tasks", type=int, default=None,
                        help="tasks of the commands-per-task window (default 2000)")
    parser.add_argument("--rss-tasks", type=int, default=None,
                        help="countdown tasks of the memory run (default 200000)")
    parser.add_argument("--rss-settle", type=float, default=5.0,
                        help="least seconds to wait after the countdown tasks were sent")
    parser.add_argument("--rss-max-settle", type=float, default=60.0,
                        help="most seconds to wait for the worker's RSS to settle")
    parser.add_argument("--bulk-batch", type=int, default=1000,
                        help="tasks per bulk block: app.bulk_publish() or task.apply_bulk() "
                        "(celeriac), kombu's Producer.batch() (Celery); default 1000")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 tasks, 1 run, 200 round trips, 20,000 "
                        "countdown tasks")
    parser.add_argument("--only", default=None,
                        help="comma-separated frameworks: " + ", ".join(FRAMEWORKS))
    parser.add_argument("--skip-rss", action="store_true", help="leave out the memory run")
    parser.add_argument("--drain-only", action="store_true",
                        help="enqueue and 1-process drain only (for tuning a framework's "
                        "setting); implies --skip-rss")
    parser.add_argument("--rabbitmq", action="store_true",
                        help="also run the RabbitMQ part (enqueue and 1-process drain)")
    parser.add_argument("--skip-redis", action="store_true",
                        help="leave out the Redis part (with --rabbitmq)")
    parser.add_argument("--celeriac-pool", default="solo")
    parser.add_argument("--celeriac-concurrency", type=int, default=1)
    parser.add_argument("--celeriac-prefetch", type=int, default=None,
                        help="celeriac's worker prefetch multiplier (default: the tuned value)")
    parser.add_argument("--celeriac-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable for celeriac's processes (repeatable), "
                        "e.g. CELERIAC_AMQP__CONFIRM_PUBLISH=false")
    parser.add_argument("--celery-pool", default="solo")
    parser.add_argument("--celery-concurrency", type=int, default=1)
    parser.add_argument("--celery-prefetch", type=int, default=None,
                        help="Celery's worker_prefetch_multiplier (default: the tuned value)")
    parser.add_argument("--dramatiq-threads", type=int, default=None,
                        help="Dramatiq worker threads (default: the tuned value)")
    parser.add_argument("--dramatiq-prefetch", type=int, default=None,
                        help="Dramatiq queue prefetch (default: the tuned value; its own default "
                        "is threads x 2)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds any one wait may take before the run fails")
    parser.add_argument("--json", default=None, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the worker and client logs")
    parser.add_argument("--transport-wait", type=float, default=0.0,
                        help="seconds to wait for celeriac's transports to appear (polled)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.tasks = args.tasks or (2000 if quick else 10000)
    args.runs = args.runs or (1 if quick else 3)
    args.roundtrips = args.roundtrips or (200 if quick else 2000)
    args.cmd_tasks = args.cmd_tasks or min(args.tasks, 1000 if quick else 2000)
    args.rss_tasks = args.rss_tasks or (20000 if quick else 200_000)
    args.timeout = args.timeout or max(60.0, args.tasks / 200.0)
    if args.tasks < 10 or args.runs < 1 or args.roundtrips < 1 or args.cmd_tasks < 10:
        parser.error("--tasks and --cmd-tasks must be >= 10, --runs and --roundtrips >= 1")
    only = [f for f in (args.only or ",".join(FRAMEWORKS)).split(",") if f]
    unknown = set(only) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown framework(s): {', '.join(sorted(unknown))}")
    args.frameworks = [f for f in FRAMEWORKS if f in only]
    args.skip_rss = args.skip_rss or args.drain_only
    for item in args.celeriac_env:
        if "=" not in item:
            parser.error(f"--celeriac-env wants NAME=VALUE, not {item!r}")
    if args.skip_redis and not args.rabbitmq:
        parser.error("--skip-redis leaves nothing to run without --rabbitmq")
    return args


# Best single-process settings, picked with the exploration runs described in
# docs/benchmarks-redis.md (drain rate with one process on Redis).
CELERIAC_BEST_PREFETCH = 64
CELERY_BEST_PREFETCH = 64
DRAMATIQ_BEST_THREADS = 2
DRAMATIQ_BEST_PREFETCH = 256


def setups(args: argparse.Namespace) -> dict[str, Setup]:
    return {
        "celeriac": Setup("celeriac", pool=args.celeriac_pool,
                          concurrency=args.celeriac_concurrency,
                          prefetch=args.celeriac_prefetch if args.celeriac_prefetch is not None
                          else CELERIAC_BEST_PREFETCH,
                          extra_env=tuple(tuple(item.split("=", 1)) for item in args.celeriac_env)),  # type: ignore[misc]
        "celery": Setup("celery", pool=args.celery_pool, concurrency=args.celery_concurrency,
                        prefetch=args.celery_prefetch if args.celery_prefetch is not None
                        else CELERY_BEST_PREFETCH),
        "dramatiq": Setup("dramatiq", threads=args.dramatiq_threads or DRAMATIQ_BEST_THREADS,
                          prefetch=args.dramatiq_prefetch if args.dramatiq_prefetch is not None
                          else DRAMATIQ_BEST_PREFETCH),
    }


def _celeriac_availability(scheme: str, wait: float, log: Any) -> str | None:
    deadline = time.monotonic() + wait
    while True:
        error = celeriac_transport_error(scheme)
        if error is None:
            return None
        if time.monotonic() >= deadline:
            print(f"celeriac's {scheme!r} transport: {error}", file=log, flush=True)
            return "transport not installed" if "not installed" in error else \
                f"transport does not load: {error.split(': ', 1)[-1][:120]}"
        time.sleep(min(60.0, max(1.0, deadline - time.monotonic())))


def _run_part(broker: str, args: argparse.Namespace, log: Any) -> list[Outcome]:
    table = setups(args)
    outcomes = [Outcome(table[f]) for f in args.frameworks]
    if broker == "amqp":
        try:
            delete_amqp_queues()
        except Exception as exc:
            for o in outcomes:
                o.unavailable = f"RabbitMQ not reachable: {type(exc).__name__}"
            print(f"RabbitMQ not reachable at {AMQP_URL}: {exc}", file=log, flush=True)
            return outcomes
    for o in outcomes:
        if o.setup.framework == "celeriac":
            o.unavailable = _celeriac_availability(broker, args.transport_wait, log)
    bench = Bench(args, broker)
    try:
        for run_no in range(1, args.runs + 1):
            for o in outcomes:
                if o.unavailable:
                    continue
                t0 = time.monotonic()
                try:
                    r = bench.measure(o.setup)
                except Exception as exc:
                    text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                    o.errors.append(text)
                    print(f"[{broker} run {run_no}] {o.setup.framework}: FAILED: {text}",
                          file=log, flush=True)
                    continue
                finally:
                    bench.stop_workers()
                o.runs.append(r)
                print(f"[{broker} run {run_no}] {o.setup.framework:9s} enqueue {_rate(r.enqueue)}/s"
                      f"  bulk {_rate(r.bulk)}/s apply_bulk {_rate(r.apply_bulk)}/s"
                      f"  drain1 {_rate(r.drain1)}/s"
                      f"  drain2 {_rate(r.drain2)}/s  rt p50 {_ms(r.rt_p50)} p99 {_ms(r.rt_p99)} ms"
                      f"  cmds/task {_num(r.cmds)} (clients {_num(r.cmds_client)}, lua "
                      f"{_num(r.cmds_lua)}), backlog {_num(r.cmds_backlog)} (clients "
                      f"{_num(r.cmds_backlog_client)}, lua {_num(r.cmds_backlog_lua)})"
                      f"  ({time.monotonic() - t0:.0f} s: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in r.phases.items()) + ")",
                      file=log, flush=True)
        if broker == "redis" and not args.skip_rss:
            for o in outcomes:
                if o.unavailable:
                    continue
                t0 = time.monotonic()
                try:
                    o.rss = bench.rss(o.setup)
                except Exception as exc:
                    o.rss_error = str(exc) if isinstance(exc, BenchError) else \
                        f"{type(exc).__name__}: {exc}"
                    print(f"[rss] {o.setup.framework}: FAILED: {o.rss_error}", file=log, flush=True)
                    continue
                finally:
                    bench.stop_workers()
                rss = o.rss
                print(f"[rss] {o.setup.framework:9s} {rss.before_mb:.1f} MB -> {rss.after_mb:.1f} MB"
                      f" ({rss.growth:+.1f} MB, peak {rss.peak_mb:.1f} MB), countdown publish "
                      f"{rss.publish_rate:,.0f}/s, settled {rss.settle_s:.0f} s, ready left "
                      f"{rss.left_ready}, parked {rss.parked}  ({time.monotonic() - t0:.0f} s)", file=log, flush=True)
        with contextlib.suppress(Exception):
            bench.reset()
    finally:
        bench.close()
    return outcomes


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
    log = sys.stderr
    try:
        r = _redis()
        r.ping()
        r.close()
    except Exception as exc:
        print(f"Redis is not reachable at {REDIS_URL}: {exc}", file=log)
        return 1
    load_start = _load()
    source_start = _source_state()
    atexit.register(_stop_all)
    started = time.monotonic()
    parts: dict[str, list[Outcome]] = {}
    with _signals_stop_everything():
        try:
            if not args.skip_redis:
                parts["redis"] = _run_part("redis", args, log)
            if args.rabbitmq:
                parts["amqp"] = _run_part("amqp", args, log)
        except KeyboardInterrupt:
            print("interrupted: stopping workers", file=log, flush=True)
            _stop_all()
            return 130
        finally:
            _stop_all()
    total = time.monotonic() - started
    print(f"total {total:.0f} s", file=log, flush=True)
    print(f"Versions: {_versions()}. {os.cpu_count()} CPU(s); load average (1 min) at start "
          f"{load_start:.2f}, at end {_load():.2f}; the program ran {total / 60:.1f} min. "
          "Completions counted with HINCRBY in the task (all frameworks).")
    source_end = _source_state()
    if source_end == source_start:
        print(f"celeriac: {source_start}.")
    else:
        print(f"**celeriac's sources changed while the program ran** ({source_start} at the "
              f"start, {source_end} at the end): its figures mix versions.")
    print("")
    if "redis" in parts:
        print(report_redis(parts["redis"], args))
        print("")
    if "amqp" in parts:
        print(report_amqp(parts["amqp"], args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({part: {o.setup.framework: {
                "setting": o.setup.label, "unavailable": o.unavailable,
                "runs": [dataclasses.asdict(r) for r in o.runs], "errors": o.errors,
                "rss": None if o.rss is None else dataclasses.asdict(o.rss),
                "rss_error": o.rss_error}
                for o in outcomes} for part, outcomes in parts.items()}, f, indent=2)
    ok = all(o.runs or o.unavailable for outcomes in parts.values() for o in outcomes)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
