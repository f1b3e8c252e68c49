"""A real ``celeriac worker -P asyncio`` process on SQLite and on Redis.

The worker runs the tasks module written below; the test process is the
client. Redis lives in database 7 of ``$CELERIAC_TEST_ASYNCIO_REDIS_URL``
(default ``redis://127.0.0.1:6379/7``), each test with its own queue, so
nothing is flushed; without a Redis server those tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celeriac import states
from celeriac.exceptions import TimeLimitExceeded

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("CELERIAC_TEST_ASYNCIO_REDIS_URL", "redis://127.0.0.1:6379/7")
WAIT = 60.0

TASKS = textwrap.dedent('''
    import asyncio, os
    from celeriac import App, SoftTimeLimitExceeded

    app = App("aioe2e")
    _meeting = {"arrived": 0, "all_here": None}

    @app.task
    async def meet(count):
        """Returns once `count` calls are running at once in this process."""
        if _meeting["all_here"] is None:
            _meeting["all_here"] = asyncio.Event()
        _meeting["arrived"] += 1
        if _meeting["arrived"] >= count:
            _meeting["all_here"].set()
        await asyncio.wait_for(_meeting["all_here"].wait(), 60)
        return os.getpid()

    @app.task
    def double(x):
        return 2 * x

    @app.task(soft_time_limit=0.2)
    async def tidy():
        try:
            await asyncio.sleep(60)
        except SoftTimeLimitExceeded:
            return "tidied up"

    @app.task(time_limit=0.2)
    async def endless():
        await asyncio.sleep(60)
''')


def redis_url() -> str:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        message = f"no Redis server at {REDIS_URL} ({exc}); start one or set " \
                  f"CELERIAC_TEST_ASYNCIO_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "redis"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "redis":
        url = redis_url()
        return url, url
    return f"sqlite:///{tmp_path}/broker.sqlite3", f"sqlite:///{tmp_path}/results.sqlite3"


@pytest.fixture
def env(urls: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in list(os.environ):
        if key.startswith("CELERIAC_") and not key.startswith("CELERIAC_TEST"):
            monkeypatch.delenv(key)
    settings = {"CELERIAC_BROKER_URL": urls[0], "CELERIAC_RESULT_BACKEND": urls[1],
                "CELERIAC_TASK_DEFAULT_QUEUE": f"aioe2e-{uuid.uuid4().hex}",
                "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "30"}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "aioe2e_tasks.py").write_text(TASKS)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                         os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def tasks(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("aioe2e_tasks", None)
    module = importlib.import_module("aioe2e_tasks")
    yield module
    module.app.close()
    sys.modules.pop("aioe2e_tasks", None)


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "worker.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "aioe2e_tasks", "worker", "-P", "asyncio",
             "-c", "50", "-n", "aioe2e@test", "-l", "INFO"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        while b"queues:" not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_an_asyncio_worker_process_runs_async_and_def_tasks(tasks, worker, tmp_path):
    count = 20
    meetings = [tasks.meet.delay(count) for _ in range(count)]
    # Each call waits until all of them run: they ran at once, in one process.
    assert {r.get(timeout=WAIT) for r in meetings} == {worker.pid}
    assert tasks.double.delay(21).get(timeout=WAIT) == 42
    assert tasks.tidy.delay().get(timeout=WAIT) == "tidied up"
    ended = tasks.endless.delay()
    with pytest.raises(TimeLimitExceeded):
        ended.get(timeout=WAIT)
    assert ended.state == states.FAILURE
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(WAIT) == 0
    output = (tmp_path / "worker.out").read_text(errors="replace")
    assert "pool:        asyncio (concurrency 50)" in output
    assert "Traceback" not in output
