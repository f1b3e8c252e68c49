"""Flower 2.x, unmodified, shows a celeriac worker and its tasks.

Flower runs from a tiny Celery app module pointing at the same Redis broker
(db 14 of ``$CELERIAC_TEST_E2E_EVENTS_REDIS_URL``, its own event exchange)
and a celeriac worker runs with ``-E``. What Flower shows of tasks and of the
worker's liveness comes from events; its worker details (``/api/workers``
with ``refresh``) come from remote control (``inspect stats``,
``registered``...). Without a Redis server the test skips, except under
``CI=true``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")
pytest.importorskip("celeriac_redis")
pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_E2E_EVENTS_REDIS_URL", "redis://127.0.0.1:6379/14")
TIMEOUT = 90.0

CELERIAC_TASKS = textwrap.dedent('''
    from celeriac import App

    app = App("flowered", **SETTINGS)


    @app.task(name="flowered.add")
    def add(x, y):
        return x + y


    @app.task(name="flowered.boom")
    def boom():
        raise ValueError("boom")
''')

CELERY_APP = textwrap.dedent('''
    from celery import Celery

    app = Celery("flowerapp", broker=BROKER)
    app.conf.event_exchange = EXCHANGE
''')


def _require_redis() -> None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        message = f"no Redis server at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what}")
        time.sleep(0.5)


def test_flower_shows_a_celeriac_worker_and_its_tasks(tmp_path: Path) -> None:
    _require_redis()
    tag = uuid.uuid4().hex[:10]
    queue, exchange = f"flower-{tag}", f"celeryev-{tag}"
    settings = {"broker_url": REDIS_URL, "result_backend": REDIS_URL, "task_default_queue": queue,
                "worker_dead_letter_queue": f"{queue}-dead", "event_exchange": exchange,
                "result_expires": 600.0, "worker_shutdown_timeout": 10.0}
    (tmp_path / "flowered.py").write_text(f"SETTINGS = {settings!r}\n" + CELERIAC_TASKS)
    (tmp_path / "flowerapp.py").write_text(
        f"BROKER = {REDIS_URL!r}\nEXCHANGE = {exchange!r}\n" + CELERY_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    env["FLOWER_UNAUTHENTICATED_API"] = "true"  # Flower 2.x serves /api/* only with it
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, cmd: list[str]) -> None:
        out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        procs[name] = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def output(name: str) -> str:
        return (tmp_path / f"{name}.out").read_text(errors="replace")

    def get(path: str) -> Any:
        try:
            with urllib.request.urlopen(base + path, timeout=30) as response:
                body = response.read()
        except (urllib.error.URLError, OSError):
            return None
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    from celeriac import App

    client = App("flower-client", **settings)
    try:
        spawn("flower", [sys.executable, "-m", "celery", "-A", "flowerapp", "flower",
                         f"--port={port}", "--address=127.0.0.1"])
        _wait_for(lambda: get("/healthcheck") == "OK" or procs["flower"].poll() is not None,
                  "Flower to answer")
        assert procs["flower"].poll() is None, output("flower")
        spawn("worker", [sys.executable, "-m", "celeriac", "-A", "flowered", "worker", "-E",
                         "-n", "fl@e2e", "-Q", queue, "-P", "threads", "-c", "2"])
        _wait_for(lambda: b"queues:" in (tmp_path / "worker.out").read_bytes()
                  or procs["worker"].poll() is not None, "the worker to start")
        assert procs["worker"].poll() is None, output("worker")

        # From events: the worker is alive, its tasks are listed with their states.
        alive = _wait_for(lambda: (get("/api/workers?status=true") or {}).get("fl@e2e"),
                          "Flower to see the worker's heartbeats")
        assert alive is True
        ok = client.send_task("flowered.add", (2, 3))
        failing = client.send_task("flowered.boom")
        assert ok.get(timeout=TIMEOUT) == 5

        def tasks() -> dict[str, Any] | None:
            listed = get("/api/tasks?workername=fl@e2e") or {}
            states = {task_id: info.get("state") for task_id, info in listed.items()}
            wanted = {ok.id: "SUCCESS", failing.id: "FAILURE"}
            return listed if all(states.get(k) == v for k, v in wanted.items()) else None

        listed = _wait_for(tasks, "Flower to list the tasks as SUCCESS and FAILURE")
        assert listed[ok.id]["name"] == "flowered.add" and listed[ok.id]["worker"] == "fl@e2e"
        info = get(f"/api/task/info/{ok.id}")
        assert (info["state"], info["name"], info["args"], info["result"], info["worker"]) == (
            "SUCCESS", "flowered.add", "(2, 3)", "5", "fl@e2e")
        failed = get(f"/api/task/info/{failing.id}")
        assert failed["state"] == "FAILURE" and failed["exception"] == "ValueError('boom')"
        assert "flowered.add" in (get("/api/task/types") or {}).get("task-types", [])

        # From remote control: Flower's worker details (inspect stats, registered...).
        details = _wait_for(
            lambda: (get("/api/workers?refresh=true") or {}).get("fl@e2e", {}).get("registered"),
            "Flower's worker details (remote control)")
        assert "flowered.add" in details
        worker = get("/api/workers?workername=fl@e2e")["fl@e2e"]
        assert worker["stats"]["pid"] == procs["worker"].pid
    finally:
        client.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        try:
            keys = [*r.scan_iter(match=f"*{tag}*", count=1000)]
            if keys:
                r.delete(*keys)
        finally:
            r.close()
