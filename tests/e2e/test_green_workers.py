"""``celeriac worker -P gevent`` / ``-P eventlet`` as real processes.

Each worker must be monkey-patched before the app module, kombu and the
broker client are imported (checked from inside a task, and from the order
``python -X importtime`` prints), run many tasks at once in green threads,
enforce time limits, stay idle without spinning, and stop on SIGTERM. On
Redis (``CELERIAC_TEST_GREEN_REDIS_URL``, default ``redis://127.0.0.1:6379/9``;
each test has its own queue) and on the embedded SQLite broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_GREEN_REDIS_URL", "redis://127.0.0.1:6379/9")
BOUND = 60.0  # seconds: an upper bound on waiting, never a timing assertion

TASKS = textwrap.dedent('''
    import os, socket, sys, threading, time
    from celeriac import App

    POOL = os.environ["GREEN_POOL"]

    def patched():
        if POOL == "gevent":
            from gevent import monkey
            return monkey.is_module_patched("socket") and monkey.is_module_patched("threading")
        from eventlet import patcher
        return patcher.is_monkey_patched("socket") and patcher.is_monkey_patched("thread")

    PATCHED_AT_IMPORT = patched()
    app = App("green", **({"worker_pool": os.environ["APP_POOL"]} if "APP_POOL" in os.environ else {}))
    ARRIVED = []

    @app.task
    def where():
        return {"patched_at_import": PATCHED_AT_IMPORT, "patched": patched(),
                "socket": socket.socket.__module__}

    @app.task
    def rendezvous(n):
        # True only when n of these ran at once: each waits for the others.
        ARRIVED.append(1)
        deadline = time.monotonic() + 30
        while len(ARRIVED) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(ARRIVED) >= n

    @app.task(soft_time_limit=0.2)
    def soft_limited():
        time.sleep(60)

    @app.task(time_limit=0.2)
    def hard_limited():
        time.sleep(60)
''')

MARKER = {"gevent": "gevent.monkey", "eventlet": "eventlet"}


def _redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"no Redis server at {REDIS_URL} ({exc}); start one or set " \
                  f"CELERIAC_TEST_GREEN_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


class GreenWorker:
    """One worker process and a client app on the same broker."""

    def __init__(self, root: Path, pool: str, broker: str) -> None:
        self.root = root
        self.pool = pool
        self.queue = f"green-{uuid.uuid4().hex[:12]}"
        (root / "green_tasks.py").write_text(TASKS)
        if broker == "redis":
            url = backend = _redis_url()
        else:
            url, backend = f"sqlite:///{root}/broker.sqlite3", f"sqlite:///{root}/results.sqlite3"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")},
                    "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                    "GREEN_POOL": pool, "CELERIAC_BROKER_URL": url,
                    "CELERIAC_RESULT_BACKEND": backend, "CELERIAC_TASK_DEFAULT_QUEUE": self.queue,
                    "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "10", "PYTHONWARNINGS": "ignore"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.app = None

    @property
    def log(self) -> str:
        return (self.root / "worker.log").read_text(errors="replace")

    def start(self, *command: str, importtime: bool = False) -> None:
        args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "celeriac",
                *command] if command[0] != "script" else \
            [str(Path(sys.executable).parent / "celeriac"), *command[1:]]
        with open(self.root / "worker.log", "wb") as out:
            self.proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.wait_for(lambda: "queues:" in self.log or self.proc.poll() is not None, "start")
        assert self.proc.poll() is None, self.log

    def client(self):
        if self.app is None:
            from celeriac import App

            self.app = App("green-client", broker_url=self.env["CELERIAC_BROKER_URL"],
                           result_backend=self.env["CELERIAC_RESULT_BACKEND"],
                           task_default_queue=self.queue)
        return self.app

    def call(self, name: str, *args: object):
        return self.client().send_task(f"green_tasks.{name}", args)

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for the worker to {what}:\n{self.log}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(BOUND)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self.app is not None:
            self.app.close()


@pytest.fixture
def green_worker(tmp_path: Path) -> Iterator[type[GreenWorker]]:
    made: list[GreenWorker] = []

    def make(pool: str, broker: str) -> GreenWorker:
        worker = GreenWorker(tmp_path, pool, broker)
        made.append(worker)
        return worker

    yield make  # type: ignore[misc]
    for worker in made:
        worker.close()


def _import_order(log: str) -> list[str]:
    return [line.rsplit("|", 1)[1].strip() for line in log.splitlines()
            if line.startswith("import time:") and "|" in line]


@pytest.mark.parametrize(("pool", "broker"), [
    ("gevent", "redis"), ("gevent", "sqlite"), ("eventlet", "redis"), ("eventlet", "sqlite"),
])
def test_a_green_worker_end_to_end(green_worker, pool: str, broker: str) -> None:
    from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    worker = green_worker(pool, broker)
    worker.start("-A", "green_tasks", "worker", "-P", pool, "-l", "INFO", importtime=True)

    # Patched before kombu and the broker client were imported (-X importtime
    # lists import statements in order), and before the app module (which
    # importlib imports, unlisted: it looked for itself).
    order = _import_order(worker.log)
    first = order.index(MARKER[pool])
    for module in ("kombu", *(["redis"] if broker == "redis" else [])):
        assert first < order.index(module), f"{module} was imported before the patch"
    found = worker.call("where").get(timeout=BOUND)
    assert found["patched_at_import"] and found["patched"]
    assert found["socket"].startswith(pool)

    # Many tasks at once, in one process: each waits until all have arrived.
    results = [worker.call("rendezvous", 20) for _ in range(20)]
    assert [r.get(timeout=BOUND) for r in results] == [True] * 20

    with pytest.raises(SoftTimeLimitExceeded):
        worker.call("soft_limited").get(timeout=BOUND)
    with pytest.raises(TimeLimitExceeded):
        worker.call("hard_limited").get(timeout=BOUND)

    # Idle, it sleeps: a loop that spins would use about a second of CPU per second.
    before, began = worker.cpu_seconds(), time.monotonic()
    time.sleep(2.0)
    used, elapsed = worker.cpu_seconds() - before, time.monotonic() - began
    assert used < 0.5 * elapsed, f"an idle worker used {used:.2f} s of CPU in {elapsed:.2f} s"

    assert worker.stop() == 0, worker.log
    assert "stopped" in worker.log


def test_the_console_script_patches_too(green_worker) -> None:
    worker = green_worker("gevent", "sqlite")
    worker.start("script", "-A", "green_tasks", "worker", "--pool=gevent")
    found = worker.call("where").get(timeout=BOUND)
    assert found["patched_at_import"] and found["patched"]
    assert worker.stop() == 0, worker.log


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_the_pool_named_in_the_config_file_or_environment(green_worker, tmp_path: Path,
                                                          pool: str) -> None:
    worker = green_worker(pool, "sqlite")
    (tmp_path / "celeriac.toml").write_text(f'worker_pool = "{pool}"\nimports = ["green_tasks"]\n')
    worker.start("--config", "celeriac.toml", "worker")
    assert worker.call("where").get(timeout=BOUND)["patched_at_import"]
    assert worker.stop() == 0, worker.log

    (tmp_path / "celeriac.toml").unlink()
    worker.env["CELERIAC_WORKER_POOL"] = pool
    worker.start("-A", "green_tasks", "worker")
    assert worker.call("where").get(timeout=BOUND)["patched_at_import"]
    assert worker.stop() == 0, worker.log


def test_a_green_pool_chosen_only_in_the_app_is_refused(green_worker) -> None:
    worker = green_worker("gevent", "sqlite")
    worker.env["APP_POOL"] = "gevent"
    proc = subprocess.run([sys.executable, "-m", "celeriac", "-A", "green_tasks", "worker"],
                          cwd=worker.root, env=worker.env, capture_output=True, text=True,
                          timeout=BOUND)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "monkey-patched" in proc.stderr and "-P gevent" in proc.stderr


WAKE_UNDER_EVENTLET = textwrap.dedent('''
    import sys
    from celeriac.patching import patch_pool
    patch_pool("eventlet")
    from celeriac import App
    from celeriac_redis.transport import TransportMixin
    with App("wake", broker_url=sys.argv[1]).connection() as connection:
        connection.ensure_connection(max_retries=1)
        transport = connection.transport
        assert isinstance(transport, TransportMixin), transport
        for _ in range(2):
            transport.interrupt()
            try:
                connection.drain_events(timeout=1)
            except (TimeoutError, OSError):  # socket.timeout: the interrupt was seen
                pass
    print("woke")
''')


def test_the_redis_transport_wakes_up_under_eventlet(tmp_path: Path) -> None:
    url = _redis_url()
    try:
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", WAKE_UNDER_EVENTLET, url],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("drain_events did not return after interrupt()") from None
    assert proc.stdout.strip() == "woke", proc.stderr
