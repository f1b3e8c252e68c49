"""Real ``celeriac worker -P prefork`` processes, on SQLite and on Redis.

Tasks meet the test through files: a gated task writes ``<name>.started``
(its pid) and waits for ``<name>.release``. Pool children are found as the
worker's child processes. Nothing asserts on timings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import App, TimeLimitExceeded

pytestmark = pytest.mark.slow

WAIT = 60.0

TASKS = textwrap.dedent('''
    import os, time
    from pathlib import Path
    from celeriac import App, SoftTimeLimitExceeded

    app = App("pfe")
    FOLDER = Path(os.environ["PREFORK_E2E_FOLDER"])
    KEEP = []

    def gate(name):
        (FOLDER / f"{name}.started").write_text(str(os.getpid()))
        while not (FOLDER / f"{name}.release").exists():
            time.sleep(0.01)

    @app.task
    def held(name):
        gate(name)
        return name

    @app.task(time_limit=1)
    def runaway():
        gate("runaway")

    @app.task(soft_time_limit=0.5)
    def soft():
        try:
            gate("soft")
        except SoftTimeLimitExceeded:
            return "caught"
        return "not interrupted"

    @app.task
    def pid():
        return os.getpid()

    @app.task
    def hog(mib):
        KEEP.append(bytearray(b"x") * (mib << 20))
        return os.getpid()

    @app.task(acks_late=True, reject_on_worker_lost=True)
    def victim():
        with open(FOLDER / "victim.runs", "a") as f:
            f.write(f"{os.getpid()}\\n")
        runs = len((FOLDER / "victim.runs").read_text().split())
        if runs == 1:
            gate("victim")
        return runs
''')


class Cluster:
    """Workers of one broker and result store, and a client app."""

    def __init__(self, root: Path, url_of: dict[str, str], procs: Any) -> None:
        self.root = root
        self.procs = procs
        self.queue = f"prefork-{uuid.uuid4().hex}"
        (root / "pf_tasks.py").write_text(TASKS)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "PREFORK_E2E_FOLDER": str(root),
            "CELERIAC_BROKER_URL": url_of["broker"],
            "CELERIAC_RESULT_BACKEND": url_of["backend"],
            "CELERIAC_TASK_DEFAULT_QUEUE": self.queue,
            "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "60",
        }
        self.app = App("pfe", broker=url_of["broker"], backend=url_of["backend"],
                       task_default_queue=self.queue)
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        name = f"w{len(self.workers)}"
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "pf_tasks", "worker", "-P", "prefork",
             "-n", f"{name}@prefork", "-l", "INFO", *args],
            cwd=self.root, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        self.procs.wait_until(lambda: b"queues:" in (self.root / f"{name}.out").read_bytes()
                              or proc.poll() is not None, f"worker {name} to start")
        assert proc.poll() is None, self.output(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        name = f"w{self.workers.index(proc)}"
        return (self.root / f"{name}.out").read_text(errors="replace")

    def send(self, task: str, *args: Any) -> Any:
        return self.app.send_task(f"pf_tasks.{task}", args)

    def started(self, name: str) -> int:
        path = self.root / f"{name}.started"
        self.procs.wait_until(lambda: path.exists() and path.read_text(), f"{name} to start")
        return int(path.read_text())

    def release(self, name: str) -> None:
        (self.root / f"{name}.release").touch()

    def children(self, proc: subprocess.Popen[bytes]) -> set[int]:
        return self.procs.children_of(proc.pid)

    def wait_for_children(self, proc: subprocess.Popen[bytes], count: int,
                          without: int | None = None) -> set[int]:
        """Wait until the worker has ``count`` children, none of them ``without``."""
        def found() -> set[int] | None:
            children = self.children(proc)
            return children if len(children) == count and without not in children else None

        return self.procs.wait_until(found, f"{count} children")

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.app.close()


@pytest.fixture(params=["sqlite", "redis"])
def cluster(request, tmp_path: Path, procs) -> Iterator[Cluster]:
    if request.param == "sqlite":
        urls = {"broker": f"sqlite:///{tmp_path}/broker.sqlite3",
                "backend": f"sqlite:///{tmp_path}/results.sqlite3"}
    else:
        url = request.getfixturevalue("redis_url")
        urls = {"broker": url, "backend": url}
    c = Cluster(tmp_path, urls, procs)
    try:
        yield c
    finally:
        c.stop()
        if request.param == "redis":
            import redis

            client = redis.Redis.from_url(urls["broker"])
            for key in client.scan_iter(match=f"*{c.queue}*"):
                client.delete(key)
            client.close()


def test_a_runaway_task_is_killed_at_its_hard_limit_and_its_child_replaced(cluster):
    worker = cluster.start_worker("-c", "2")
    cluster.procs.wait_until(lambda: len(cluster.children(worker)) == 2, "two children")
    sibling = cluster.send("held", "sibling")
    sibling_pid = cluster.started("sibling")
    runaway = cluster.send("runaway")
    runaway_pid = cluster.started("runaway")
    runaway.get(timeout=WAIT, propagate=False)
    assert runaway.state == "FAILURE"
    assert isinstance(runaway.result, TimeLimitExceeded)
    cluster.procs.wait_until(lambda: cluster.procs.is_gone(runaway_pid), "the runaway's child")
    children = cluster.wait_for_children(worker, 2, without=runaway_pid)
    assert sibling_pid in children
    assert not sibling.ready()
    cluster.release("sibling")
    assert sibling.get(timeout=WAIT) == "sibling"
    assert f"child {runaway_pid} killed" in cluster.output(worker)


def test_a_soft_limit_is_caught_inside_the_task(cluster):
    cluster.start_worker("-c", "1")
    assert cluster.send("soft").get(timeout=WAIT) == "caught"


def test_max_tasks_per_child_recycles_children(cluster):
    cluster.start_worker("-c", "1", "--max-tasks-per-child", "2")
    pids = [cluster.send("pid").get(timeout=WAIT) for _ in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert sorted(Counter(pids).values()) == [2, 2, 2]


def test_max_memory_per_child_recycles_a_child_that_grew(cluster):
    cluster.start_worker("-c", "1", "--max-memory-per-child", "300000")
    first = cluster.send("pid").get(timeout=WAIT)
    assert cluster.send("pid").get(timeout=WAIT) == first, "recycled below the limit"
    assert cluster.send("hog", 400).get(timeout=WAIT) == first
    assert cluster.send("pid").get(timeout=WAIT) != first


def test_a_killed_child_s_task_goes_back_to_the_queue_and_completes(cluster):
    worker = cluster.start_worker("-c", "2")
    result = cluster.send("victim")
    victim = cluster.started("victim")
    os.kill(victim, signal.SIGKILL)
    assert result.get(timeout=WAIT) == 2
    assert f"child {victim} died (signal 9 (SIGKILL))" in cluster.output(worker)


def test_autoscale_grows_under_load_and_shrinks_when_calm(cluster):
    worker = cluster.start_worker("--autoscale", "3,1",
                                  env={"CELERIAC_WORKER_AUTOSCALE_KEEPALIVE": "0.5"})
    cluster.procs.wait_until(lambda: len(cluster.children(worker)) == 1, "one child")
    results = [cluster.send("held", f"a{i}") for i in range(3)]
    pids = {cluster.started(f"a{i}") for i in range(3)}  # three running at once
    assert len(pids) == 3
    for i in range(3):
        cluster.release(f"a{i}")
    assert [r.get(timeout=WAIT) for r in results] == ["a0", "a1", "a2"]
    cluster.procs.wait_until(lambda: len(cluster.children(worker)) == 1, "the pool to shrink")


def test_warm_shutdown_waits_and_leaves_no_child(cluster):
    worker = cluster.start_worker("-c", "2")
    result = cluster.send("held", "last")
    cluster.started("last")
    children = cluster.children(worker)
    worker.send_signal(signal.SIGTERM)
    cluster.release("last")
    assert worker.wait(WAIT) == 0
    assert result.get(timeout=WAIT) == "last"
    assert all(cluster.procs.is_gone(pid) for pid in children)


def test_children_die_with_a_killed_worker(cluster):
    worker = cluster.start_worker("-c", "2")
    children = cluster.wait_for_children(worker, 2)
    worker.kill()
    worker.wait()
    cluster.procs.wait_until(lambda: all(cluster.procs.is_gone(pid) for pid in children),
                             "the children to die with the worker")
