"""A worker of this process with the prefork pool, on SQLite and on Redis.

The children inherit the app over the fork: they run the task through the
worker's tracer (``TaskJob.portable``), store the result themselves with a
backend connection of their own (``App.after_fork``), and send tasks with a
broker connection of their own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from celeriac import App, chain, group
from celeriac.testing.worker import start_worker

WAIT = 60.0


@pytest.fixture(params=["sqlite", "redis"])
def app(request, tmp_path: Path):
    if request.param == "sqlite":
        settings: dict[str, Any] = {"broker_url": f"sqlite:///{tmp_path}/broker.sqlite3",
                                    "result_backend": f"sqlite:///{tmp_path}/results.sqlite3"}
    else:
        url = request.getfixturevalue("redis_url")
        settings = {"broker_url": url, "result_backend": url}
    queue = f"prefork-{uuid.uuid4().hex}"
    app = App("pfw", task_default_queue=queue, **settings)

    class Folded(dict):
        """JSON stores it as a dict; pickle cannot find a class defined here."""

    @app.task(name="pfw.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="pfw.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="pfw.folded")
    def folded() -> dict[str, int]:
        return Folded(a=1)

    @app.task(name="pfw.fan_out")
    def fan_out(n: int) -> list[str]:
        # Sent from the child, through the child's own broker connection.
        return [add.delay(i, i).id for i in range(n)]

    yield app
    app.close()
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(settings["broker_url"])
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        client.close()


def test_tasks_run_and_store_their_results_in_children(app):
    with start_worker(app, pool="prefork", concurrency=2) as worker:
        assert app.tasks["pfw.add"].delay(2, 3).get(timeout=WAIT) == 5
        pids = {app.tasks["pfw.pid"].delay().get(timeout=WAIT) for _ in range(4)}
        assert os.getpid() not in pids
        assert pids <= set(worker.pool.info()["processes"])
        ids = app.tasks["pfw.fan_out"].delay(3).get(timeout=WAIT)
        assert [app.AsyncResult(i).get(timeout=WAIT) for i in ids] == [0, 2, 4]
        add = app.tasks["pfw.add"]
        assert chain(add.s(1, 2), add.s(3)).delay().get(timeout=WAIT) == 6
        assert group(add.s(i, i) for i in range(4)).delay().get(timeout=WAIT) == [0, 2, 4, 6]


def test_a_result_the_parent_cannot_unpickle_is_still_stored(app):
    with start_worker(app, pool="prefork", concurrency=1):
        assert app.tasks["pfw.folded"].delay().get(timeout=WAIT) == {"a": 1}
        assert app.tasks["pfw.add"].delay(1, 1).get(timeout=WAIT) == 2


def test_the_worker_grows_and_shrinks_its_pool(app, procs):
    with start_worker(app, pool="prefork", concurrency=1) as worker:
        worker.grow_pool(2)
        procs.wait_until(lambda: worker.concurrency == 3, "the worker to grow")
        procs.wait_until(lambda: len(worker.pool.info()["processes"]) == 3, "three children")
        assert worker.prefetch_limit == 3 * worker.prefetch_multiplier
        worker.shrink_pool(5)
        procs.wait_until(lambda: worker.concurrency == 1, "the worker to shrink")
        procs.wait_until(lambda: len(worker.pool.info()["processes"]) == 1, "one child")
        with pytest.raises(ValueError):
            worker.grow_pool(0)
        worker.set_autoscale(4, 2)
        procs.wait_until(lambda: worker.concurrency == 2, "autoscale's minimum")
        assert worker.autoscaler is not None and worker.autoscaler.max_concurrency == 4
        assert worker.prefetch_limit == 4 * worker.prefetch_multiplier
        assert app.tasks["pfw.add"].delay(2, 2).get(timeout=WAIT) == 4


def test_inspect_names_the_child_running_each_task_and_the_autoscaler(app, procs, tmp_path):
    gate = tmp_path / "gate"

    @app.task(name="pfw.hold")
    def hold(path: str) -> int:
        import pathlib
        import time as _time

        while not pathlib.Path(path).exists():
            _time.sleep(0.02)
        return os.getpid()

    with start_worker(app, pool="prefork", concurrency=2, hostname="pfw@inspect",
                      autoscale="3,2") as worker:
        result = hold.delay(str(gate))
        inspect = app.control.inspect(destination=["pfw@inspect"], timeout=10)
        found: list[dict[str, Any]] = []

        def running() -> bool:
            found[:] = (inspect.active() or {}).get("pfw@inspect", [])
            return bool(found)

        procs.wait_until(running, "the task to show in inspect active")
        assert found[0]["id"] == result.id
        assert found[0]["worker_pid"] in worker.pool.info()["processes"]
        assert found[0]["worker_pid"] != os.getpid()
        stats = inspect.stats()["pfw@inspect"]
        assert stats["autoscaler"]["max"] == 3 and stats["autoscaler"]["min"] == 2
        gate.touch()
        assert result.get(timeout=WAIT) == found[0]["worker_pid"]
