"""Remote control across real processes.

* Celery 5.7's own command line (``celery inspect``/``control``) gets replies
  from a celeriac worker, and ``celeriac inspect``/``control`` from a Celery
  worker, on a real Redis server (db 7 of ``$CELERIAC_TEST_CONTROL_REDIS_URL``;
  each test has its own queue and control exchange). Without a Redis server
  those tests skip, except under ``CI=true``, where they fail.
* On the SQLite broker: a revoke made with ``celeriac control revoke`` while
  no worker runs is honoured by the worker started afterwards, and a prefork
  worker ends a running task on ``revoke --terminate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import interop_harness, redis_or_skip

pytest.importorskip("celery")
pytest.importorskip("celeriac_redis")
pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_CONTROL_REDIS_URL", "redis://127.0.0.1:6379/7")
TIMEOUT = 45.0




H = interop_harness()


class ControlRedisBroker(H.RedisBroker):
    """Redis with a control exchange of the test's own, and remote control on
    in Celery workers (the interop tests turn it off)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, url)
        self.exchange = f"e2e-ctl-{uuid.uuid4().hex[:12]}"

    def celeriac_settings(self, queue: str, dead_letters: str) -> dict[str, Any]:
        return {**super().celeriac_settings(queue, dead_letters), "control_exchange": self.exchange}

    def celery_settings(self, queue: str) -> dict[str, Any]:
        return {**super().celery_settings(queue), "control_exchange": self.exchange,
                "worker_enable_remote_control": True}

    def cleanup(self, queues: Iterable[str]) -> None:
        super().cleanup([*queues, self.exchange])


@pytest.fixture(scope="session")
def redis_url() -> str:
    return redis_or_skip(REDIS_URL)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in list(os.environ):
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    f = H.Fleet(tmp_path, ControlRedisBroker(redis_url))
    try:
        yield f
    finally:
        f.close()


def run(fleet: Any, *command: str) -> subprocess.CompletedProcess[str]:
    """A command line run in the fleet's directory and environment."""
    return subprocess.run([sys.executable, "-m", *command], cwd=fleet.root, env=fleet.env,
                          capture_output=True, text=True, timeout=120)


def test_celerys_command_line_controls_a_celeriac_worker(fleet: Any) -> None:
    """``celery inspect ping``/``active`` and ``celery control revoke`` (Celery
    5.7, unmodified) get their replies from a celeriac worker, and so does a
    Celery client's ``terminate``."""
    fleet.start_worker("celeriac", "w1")
    node = "w1@e2e"
    ping = run(fleet, "celery", "-A", "capp", "inspect", "ping", "-d", node, "-t", "30")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert node in ping.stdout and "pong" in ping.stdout

    running = fleet.celery.send("interop.sleep", (120,))
    fleet.wait_for(lambda: fleet.records("sleep-start"), TIMEOUT, "the task to start")
    active = run(fleet, "celery", "-A", "capp", "inspect", "active", "-d", node, "-t", "30",
                 "--json")
    assert active.returncode == 0, active.stdout + active.stderr
    [task] = json.loads(active.stdout)[node]
    assert (task["id"], task["name"], task["args"]) == (running, "interop.sleep", [120])

    later = str(uuid.uuid4())  # revoked before it is sent
    revoke = run(fleet, "celery", "-A", "capp", "control", "revoke", later, "-d", node,
                 "-t", "30")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert f"tasks {{'{later}'}} flagged as revoked" in revoke.stdout
    fleet.celery.send("interop.add", (1, 2), task_id=later)
    # Celery's command name for a revoke that ends a running task, sent as Celery sends it.
    terminate = fleet.celery.app.control.broadcast(
        "terminate", arguments={"signal": "SIGTERM", "task_id": [running]}, destination=[node],
        reply=True, timeout=30)
    assert terminate == [{node: {"ok": f"terminate: {running}"}}]

    after = fleet.celery.send("interop.add", (3, 4))
    for reader in fleet.readers():
        assert reader.get(after) == 7
        assert reader.state(later) == "REVOKED"
        assert reader.state(running) == "REVOKED"
    assert [r["value"] for r in fleet.records("add")] == [7], "the revoked task never ran"
    assert fleet.records("sleep-done") == [], "the terminated task did not run to its end"


def test_celeriacs_command_line_controls_a_celery_worker(fleet: Any) -> None:
    """``celeriac inspect ping``/``stats`` and ``celeriac control revoke`` get
    their replies from a Celery 5.7 worker."""
    fleet.start_worker("celery", "c1", "threads", 2)
    node = "c1@e2e"
    ping = run(fleet, "celeriac", "-A", "ctasks", "inspect", "ping", "-d", node, "-t", "30")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.splitlines() == [f"-> {node}: OK", "    pong", "", "1 node online."]

    stats = run(fleet, "celeriac", "-A", "ctasks", "inspect", "stats", "-d", node, "-t", "30",
                "--json")
    assert stats.returncode == 0, stats.stdout + stats.stderr
    assert json.loads(stats.stdout)[node]["pool"]["max-concurrency"] == 2

    later = str(uuid.uuid4())  # revoked before it is sent
    revoke = run(fleet, "celeriac", "-A", "ctasks", "control", "revoke", later, "-d", node,
                 "-t", "30")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert f"tasks {{'{later}'}} flagged as revoked" in revoke.stdout
    fleet.celeriac.send("interop.add", (5, 6), task_id=later)
    after = fleet.celeriac.send("interop.add", (7, 8))
    for reader in fleet.readers():
        assert reader.get(after) == 15
        assert reader.state(later) == "REVOKED"
    assert [r["value"] for r in fleet.records("add")] == [15], "the revoked task never ran"


# -- SQLite -------------------------------------------------------------------------------


def celeriac(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celeriac", "-A", "e2e_tasks", *args],
                          cwd=cluster.root, env=cluster.env, capture_output=True, text=True,
                          timeout=120)


def test_a_revoke_made_while_no_worker_runs_is_honoured(cluster: Any) -> None:
    app = cluster.app
    queued = app.tasks["e2e_tasks.work"].delay(1)
    later = app.tasks["e2e_tasks.work"].apply_async((2,), countdown=2)
    status = celeriac(cluster, "status", "-t", "0.5")
    assert status.returncode == 69, status.stdout + status.stderr
    revoke = celeriac(cluster, "control", "revoke", queued.id, later.id, "-t", "0.5")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert "the revoke of 2 task(s) is stored" in revoke.stdout

    after = app.tasks["e2e_tasks.work"].apply_async((3,), countdown=3)
    cluster.start_worker("w1")
    assert after.get(timeout=TIMEOUT) == 3
    status = celeriac(cluster, "status", "-d", "w1@e2e", "-t", "30")
    assert status.returncode == 0 and "w1@e2e: OK" in status.stdout
    assert app.AsyncResult(queued.id).state == app.AsyncResult(later.id).state == "REVOKED"
    assert [value for kind, value, _ in cluster.events() if kind == "start"] == [3]


def test_a_prefork_worker_terminates_a_running_task(cluster: Any) -> None:
    pytest.importorskip("celeriac_prefork")
    app = cluster.app
    cluster.start_worker("w1", "-P", "prefork", "-c", "1")
    running = app.tasks["e2e_tasks.work"].delay(1, 120.0)
    cluster.wait_for(lambda: any(kind == "start" for kind, _, _ in cluster.events()), TIMEOUT,
                     "the task to start")
    revoke = celeriac(cluster, "control", "revoke", running.id, "--terminate", "-d", "w1@e2e",
                      "-t", "30")
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert f"terminate: {running.id}" in revoke.stdout
    result = json.loads(celeriac(cluster, "result", running.id, "--wait", "--timeout",
                                 str(TIMEOUT)).stdout)
    assert (result["state"], result["result"]) == ("REVOKED", "TaskRevokedError: terminated "
                                                              "(SIGTERM)")
    assert app.tasks["e2e_tasks.add"].delay(2, 3).get(timeout=TIMEOUT) == 5, "the pool goes on"
    assert [kind for kind, _, _ in cluster.events()] == ["start"]
