"""``sentinel://`` against real Redis Sentinel: a primary, a replica and a
sentinel the test starts itself (own ports and directories).

Tasks run through the Sentinel-discovered primary, and after the primary is
killed and Sentinel promotes the replica, the producer and the worker find
the new primary by themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celeriac import App
from celeriac.testing.worker import start_worker

MASTER = "celeriac-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not start on port {port}")


class SentinelSetup:
    """redis-server primary + replica and one redis-sentinel, all on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary_port = _free_port()
        self.replica_port = _free_port()
        self.sentinel_port = _free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _server(self, name: str, *args: str) -> None:
        data = self.root / name
        data.mkdir(exist_ok=True)
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            ["redis-server", *args, "--dir", str(data), "--save", "", "--bind", "127.0.0.1",
             "--protected-mode", "no"], stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self._server("primary", "--port", str(self.primary_port), "--appendonly", "yes")
        _wait_port(self.primary_port, "the primary")
        self._server("replica", "--port", str(self.replica_port), "--appendonly", "yes",
                     "--replicaof", "127.0.0.1", str(self.primary_port))
        _wait_port(self.replica_port, "the replica")
        conf = self.root / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n")
        self._server("sentinel", str(conf), "--sentinel")
        _wait_port(self.sentinel_port, "the sentinel")

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def primary(self) -> tuple[str, int] | None:
        import redis

        client = redis.Redis(port=self.sentinel_port, socket_timeout=2)
        try:
            found = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER)
        finally:
            client.close()
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return (host, int(found[1]))

    def knows_replica(self) -> bool:
        import redis

        client = redis.Redis(port=self.sentinel_port, socket_timeout=2)
        try:
            replicas = client.sentinel_slaves(MASTER)
        finally:
            client.close()
        return any(int(r.get("port", 0)) == self.replica_port and "s_down" not in r.get("flags", "")
                   for r in replicas)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    setup = SentinelSetup(tmp_path)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


def _app(setup: SentinelSetup) -> App:
    options = {"master_name": MASTER}
    return App("sentinel-test", broker=setup.url, backend=setup.url,
               broker_transport_options=options,
               result_backend_transport_options=options,
               broker_connection_max_retries=1000)


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_tasks_run_through_the_primary_sentinel_names(sentinel):
    app = _app(sentinel)

    @app.task
    def add(x, y):
        return x + y

    try:
        with start_worker(app, concurrency=2):
            results = [add.delay(i, i) for i in range(10)]
            assert [r.get(timeout=30) for r in results] == [2 * i for i in range(10)]
        import redis

        primary = redis.Redis(port=sentinel.primary_port)
        try:
            # The results went to the primary Sentinel named, not elsewhere.
            assert all(primary.exists(f"celery-task-meta-{r.id}") for r in results)
        finally:
            primary.close()
    finally:
        app.close()


def test_worker_and_producer_follow_a_failover(sentinel):
    app = _app(sentinel)

    @app.task
    def add(x, y):
        return x + y

    try:
        with start_worker(app, concurrency=2):
            assert add.delay(1, 2).get(timeout=30) == 3
            # Let the replica catch up so the promoted one has the queues' state.
            import redis

            replica = redis.Redis(port=sentinel.replica_port)
            _wait(lambda: replica.info("replication").get("master_link_status") == "up",
                  "the replica to sync")
            # Sentinel learns of replicas from the primary (every 10 s): only
            # then can it promote one.
            _wait(sentinel.knows_replica, "Sentinel to learn of the replica")
            sentinel.kill("primary")
            _wait(lambda: sentinel.primary() == ("127.0.0.1", sentinel.replica_port),
                  "Sentinel to promote the replica")
            replica.close()
            results = [add.delay(i, 1) for i in range(10)]
            assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(10)]
    finally:
        app.close()
