"""Leases and broker restarts with real worker processes, on SQLite and on a
Redis server the test starts itself (its own port and data directory).

* A task that runs several times longer than ``visibility_timeout`` runs
  once: its worker keeps renewing the lease.
* The tasks of a worker killed with ``kill -9`` come back once their lease
  runs out, and run on another worker.
* Redis killed (``kill -9``) and restarted while tasks stream: the producer
  and the workers reconnect by themselves, and every task that was accepted
  completes.
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

from .conftest import _running_cluster, stream_through_a_broker_restart

pytestmark = pytest.mark.slow

LEASE = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, persisting every write (AOF,
    ``appendfsync always``) so that a crash loses nothing it acknowledged."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    data = tmp_path / "redis-data"
    data.mkdir()
    server = RedisServer(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _use(cluster, url: str) -> None:
    cluster.env["CELERIAC_BROKER_URL"] = url
    cluster.env["CELERIAC_RESULT_BACKEND"] = url


@pytest.fixture(params=["sqlite", "redis"])
def lease_cluster(request, tmp_path: Path):
    (tmp_path / "cluster").mkdir()
    with _running_cluster(tmp_path / "cluster", visibility_timeout=LEASE) as cluster:
        if request.param == "redis":
            server = request.getfixturevalue("redis_server")
            _use(cluster, server.url)
        yield cluster


def test_a_task_longer_than_three_leases_runs_once(lease_cluster):
    cluster = lease_cluster
    work = cluster.app.tasks["e2e_tasks.work"]
    result = work.delay(7, LEASE * 3.5)
    cluster.start_worker("w1", "-P", "threads", "-c", "2")
    cluster.start_worker("w2", "-P", "threads", "-c", "2")
    assert result.get(timeout=60) == 7
    time.sleep(LEASE)  # a wrongly expired lease would show as a second start now
    starts = [pid for kind, value, pid in cluster.events() if kind == "start" and value == 7]
    assert len(starts) == 1, f"the task started {len(starts)} times: {cluster.events()}"


def test_a_killed_workers_tasks_come_back_after_the_lease(lease_cluster):
    cluster = lease_cluster
    work = cluster.app.tasks["e2e_tasks.work"]
    results = [work.delay(i, 0.3) for i in range(30)]
    victim = cluster.start_worker("victim", "-P", "threads", "-c", "4")

    def holding() -> bool:
        started = {v for kind, v, pid in cluster.events() if kind == "start"}
        done = set(cluster.done_counts())
        return len(done) >= 4 and bool(started - done)

    cluster.wait_for(holding, 60, "the victim to finish some tasks and hold others")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    started = {v for kind, v, pid in cluster.events() if kind == "start"}
    unfinished = started - set(cluster.done_counts())
    assert unfinished, "the victim was killed while holding unfinished tasks"
    cluster.start_worker("rescuer", "-P", "threads", "-c", "4")
    cluster.wait_for(lambda: unfinished <= set(cluster.done_counts()), 120,
                     "the killed worker's tasks to run again")
    took = time.monotonic() - killed_at
    assert [r.get(timeout=120) for r in results] == list(range(30))
    counts = cluster.done_counts()
    assert set(counts) == set(range(30))
    assert {i for i, n in counts.items() if n > 1} <= started
    print(f"the killed worker's tasks were done again {took:.1f} s after the kill "
          f"(lease {LEASE} s, worker start-up included)")


def test_redis_killed_and_restarted_while_tasks_stream(tmp_path, redis_server):
    (tmp_path / "cluster").mkdir()
    with _running_cluster(tmp_path / "cluster", visibility_timeout=LEASE) as cluster:
        _use(cluster, redis_server.url)
        stream_through_a_broker_restart(cluster, redis_server.crash, redis_server.start, 180)
