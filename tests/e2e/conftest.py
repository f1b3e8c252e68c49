"""Real worker processes (``python -m celeriac worker``) against a SQLite
broker and result store in a temporary directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest


def interop_harness():
    """``interop_harness``, imported so that pytest rewrites its asserts
    (``tests/e2e`` is not a package, nor on ``sys.path``)."""
    if "interop_harness" not in sys.modules:
        import importlib

        pytest.register_assert_rewrite("interop_harness")
        here = str(Path(__file__).parent)
        sys.path.insert(0, here)
        try:
            importlib.import_module("interop_harness")
        finally:
            sys.path.remove(here)
    return sys.modules["interop_harness"]


def redis_or_skip(url: str) -> str:
    """``url`` when a Redis server answers there; else skip (fail under ``CI=true``)."""
    import redis

    def ping() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()

    interop_harness().require_server(url, "Redis", ping)
    return url

TASKS = textwrap.dedent('''
    import os, time
    from celeriac import App

    app = App("e2e")
    LOG = os.environ["E2E_LOG"]

    def record(kind, value):
        # O_APPEND writes of one short line are atomic: several processes share the file.
        with open(LOG, "a") as f:
            f.write(f"{kind} {value} {os.getpid()}\\n")

    @app.task
    def work(i, delay=0.0):
        record("start", i)
        time.sleep(delay)
        record("done", i)
        return i

    @app.task
    def add(x, y):
        return x + y
''')


class Cluster:
    """Worker processes sharing one SQLite broker in ``root``."""

    def __init__(self, root: Path, visibility_timeout: float = 60.0) -> None:
        self.root = root
        self.log = root / "tasks.log"
        self.log.touch()
        (root / "e2e_tasks.py").write_text(TASKS)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "E2E_LOG": str(self.log),
            "CELERIAC_BROKER_URL": f"sqlite:///{root}/broker.sqlite3",
            "CELERIAC_RESULT_BACKEND": f"sqlite:///{root}/results.sqlite3",
            "CELERIAC_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": visibility_timeout}),
            "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "30",
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self._app = None

    @property
    def app(self):
        if self._app is None:
            for key, value in self.env.items():
                if key.startswith("CELERIAC_"):
                    os.environ[key] = value
            os.environ["E2E_LOG"] = str(self.log)
            sys.path.insert(0, str(self.root))
            import importlib

            sys.modules.pop("e2e_tasks", None)
            module = importlib.import_module("e2e_tasks")
            self._app = module.app
        return self._app

    def start_worker(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "e2e_tasks", "worker", "-n", f"{name}@e2e",
             "-l", "INFO", *args],
            cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        self.wait_for(lambda: b"queues:" in (self.root / f"{name}.out").read_bytes() or
                      proc.poll() is not None, 60, f"worker {name} to start")
        assert proc.poll() is None, self.output(name)
        return proc

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def events(self) -> list[tuple[str, int, int]]:
        rows = []
        for line in self.log.read_text().splitlines():
            kind, value, pid = line.split()
            rows.append((kind, int(value), int(pid)))
        return rows

    def done_counts(self) -> Counter[int]:
        return Counter(value for kind, value, _ in self.events() if kind == "done")

    @staticmethod
    def wait_for(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _running_cluster(root: Path, **options: float) -> Iterator[Cluster]:
    c = Cluster(root, **options)
    saved = dict(os.environ)
    try:
        yield c
    finally:
        c.stop_all()
        if c._app is not None:
            c._app.close()
        os.environ.clear()
        os.environ.update(saved)
        sys.modules.pop("e2e_tasks", None)
        if str(root) in sys.path:
            sys.path.remove(str(root))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with _running_cluster(tmp_path) as c:
        yield c


@pytest.fixture
def short_lease_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with _running_cluster(tmp_path, visibility_timeout=2.0) as c:
        yield c


def stream_through_a_broker_restart(cluster: Cluster, crash, start, wait: float) -> None:
    """Two workers and a producer sending 300 tasks; the broker is crashed
    (``crash()``) after the first 80 and started again (``start()``). Every
    accepted task must complete, the producer and the workers must carry on
    by themselves (``wait``: the bound, in seconds, on each of those)."""
    import threading

    cluster.env["CELERIAC_BROKER_CONNECTION_MAX_RETRIES"] = "1000"
    os.environ["CELERIAC_BROKER_CONNECTION_MAX_RETRIES"] = "1000"
    work = cluster.app.tasks["e2e_tasks.work"]
    workers = [cluster.start_worker("w1", "-P", "threads", "-c", "2"),
               cluster.start_worker("w2", "-P", "solo")]
    sent: list[int] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        for i in range(300):
            if stop.is_set():
                return
            try:
                work.delay(i, 0.01)
            except BaseException as exc:  # reported by the assertion below
                failed.append(exc)
                return
            sent.append(i)
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        cluster.wait_for(lambda: len(sent) >= 80, 60, "the first tasks to be sent")
        crash()
        time.sleep(1.5)
        start()
        producer.join(wait)
        assert not producer.is_alive(), "the producer did not finish"
        assert not failed, f"publishing failed after the restart: {failed[0]!r}"
        assert sent == list(range(300))
        cluster.wait_for(lambda: set(cluster.done_counts()) >= set(sent), wait,
                         "every accepted task to complete")
    finally:
        stop.set()
    for proc in workers:
        assert proc.poll() is None, "a worker died with the broker instead of reconnecting"
    after = {pid for kind, value, pid in cluster.events() if kind == "done" and value >= 250}
    assert after, "no worker ran tasks sent after the restart"
