"""``async def`` tasks through a real worker (in a thread, in-memory broker and
results) with the asyncio pool: the tracer's async path end to end."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import App, states
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.plugin import hookimpl
from celeriac.testing.worker import start_worker

WAIT = 30.0


@pytest.fixture
def app() -> Iterator[App]:
    url = f"memory://{uuid.uuid4().hex}"
    app = App("t", broker_url=url, result_backend=url)
    yield app
    app.close()


def wait_until(predicate: Any, what: str) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_async_tasks_run_concurrently_each_with_its_own_request(app):
    count = 50
    state: dict[str, Any] = {"arrived": 0, "all_here": None}

    @app.task(bind=True)
    async def meet(self):
        if state["all_here"] is None:
            state["all_here"] = asyncio.Event()
        state["arrived"] += 1
        if state["arrived"] == count:
            state["all_here"].set()
        # Only possible if every call runs at once; each then still sees its own request.
        await asyncio.wait_for(state["all_here"].wait(), WAIT)
        return self.request.id

    with start_worker(app, pool="asyncio", concurrency=count):
        results = [meet.delay() for _ in range(count)]
        assert [r.get(timeout=WAIT) for r in results] == [r.id for r in results]


def test_def_and_async_def_tasks_share_a_worker(app):
    go = threading.Event()

    @app.task
    def waits():
        # A def task blocks its thread, not the loop: the async task can still run.
        return go.wait(WAIT)

    @app.task
    async def releases():
        await asyncio.sleep(0)
        go.set()
        return "released"

    with start_worker(app, pool="asyncio", concurrency=4):
        blocked = waits.delay()
        assert releases.delay().get(timeout=WAIT) == "released"
        assert blocked.get(timeout=WAIT) is True


def test_callbacks_retries_and_failures_of_async_tasks(app):
    attempts: list[int] = []

    @app.task
    async def add(x, y):
        await asyncio.sleep(0)
        return x + y

    @app.task(bind=True, max_retries=3)
    async def flaky(self):
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return "third time"

    @app.task(autoretry_for=(ConnectionError,), max_retries=1, retry_backoff=False,
              default_retry_delay=0)
    async def broken():
        raise ConnectionError("down")

    with start_worker(app, pool="asyncio", concurrency=4):
        parent = add.apply_async((1, 2), link=add.s(10))
        assert parent.get(timeout=WAIT) == 3
        [[[child_id, _], _]] = app.backend.get(parent.id)["children"]
        assert app.AsyncResult(child_id).get(timeout=WAIT) == 13
        assert flaky.delay().get(timeout=WAIT) == "third time"
        assert attempts == [0, 1, 2]
        failed = broken.delay()
        with pytest.raises(ConnectionError, match="down"):
            failed.get(timeout=WAIT)
        assert failed.state == states.FAILURE


def test_storing_and_hooks_run_off_the_loop():
    release = threading.Event()
    threads: dict[str, str] = {}

    class SlowAfterwards:
        @hookimpl
        def celeriac_task_postrun(self, task, request, state):
            threads[request.id] = threading.current_thread().name
            if task.name.endswith("held"):
                release.wait(WAIT)  # holds its result's bookkeeping, not the loop

    url = f"memory://{uuid.uuid4().hex}"
    app = App("t", broker_url=url, result_backend=url, plugins=[SlowAfterwards()])

    @app.task(name="t.held")
    async def held():
        return "held"

    @app.task(name="t.quick")
    async def quick():
        await asyncio.sleep(0)
        return "quick"

    try:
        with start_worker(app, pool="asyncio", concurrency=4):
            slow = held.delay()
            wait_until(lambda: slow.id in threads, "the held task's postrun hook")
            try:
                fast = quick.delay()
                assert fast.get(timeout=WAIT) == "quick"
            finally:
                release.set()
            assert slow.get(timeout=WAIT) == "held"
    finally:
        app.close()
    assert all(name.startswith("celeriac-asyncio-io") for name in threads.values()), threads


def test_track_started_is_stored_for_async_tasks(app):
    release = threading.Event()

    @app.task(track_started=True)
    async def slow():
        await asyncio.to_thread(release.wait, WAIT)
        return "done"

    with start_worker(app, pool="asyncio", concurrency=2):
        result = slow.delay()
        try:
            wait_until(lambda: result.state == states.STARTED, "the STARTED state")
        finally:
            release.set()
        assert result.get(timeout=WAIT) == "done"


def test_soft_time_limit_is_seen_inside_the_task(app):
    @app.task(soft_time_limit=0.1)
    async def tidy():
        try:
            await asyncio.sleep(WAIT)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)
            return "tidied up"
        return "slept"

    @app.task(soft_time_limit=0.1)
    async def careless():
        await asyncio.sleep(WAIT)

    with start_worker(app, pool="asyncio", concurrency=2):
        assert tidy.delay().get(timeout=WAIT) == "tidied up"
        result = careless.delay()
        with pytest.raises(SoftTimeLimitExceeded):
            result.get(timeout=WAIT)
        assert result.state == states.FAILURE


def test_hard_time_limit_ends_the_task_as_a_failure(app):
    cancelled = threading.Event()

    @app.task(time_limit=0.1)
    async def endless():
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with start_worker(app, pool="asyncio", concurrency=2):
        result = endless.delay()
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=WAIT)
        assert result.state == states.FAILURE
        assert cancelled.wait(WAIT)


def test_terminate_job_ends_a_running_async_task(app):
    started = threading.Event()

    @app.task
    async def endless():
        started.set()
        await asyncio.sleep(WAIT)

    with start_worker(app, pool="asyncio", concurrency=2) as worker:
        result = endless.delay()
        assert started.wait(WAIT)
        assert worker.pool.terminate_job(result.id, signal.SIGTERM) is True
        wait_until(lambda: result.state in states.READY_STATES, "the terminated task's state")
        assert result.state in (states.FAILURE, states.REVOKED)


def test_a_task_blocking_the_loop_is_named_in_a_warning(app, caplog):
    app.conf.section("asyncio").block_warning = 0.1
    seen = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "stuck" in record.getMessage():
                seen.set()

    handler = Seen()
    logging.getLogger("celeriac_asyncio").addHandler(handler)

    @app.task
    async def hog():
        return seen.wait(WAIT)  # blocks the loop until the watchdog has said so

    try:
        with caplog.at_level(logging.WARNING, logger="celeriac_asyncio"), \
                start_worker(app, pool="asyncio", concurrency=2):
            result = hog.delay()
            assert result.get(timeout=WAIT) is True
    finally:
        logging.getLogger("celeriac_asyncio").removeHandler(handler)
    [warning] = [r.getMessage() for r in caplog.records if "stuck" in r.getMessage()]
    assert f"{hog.name}[{result.id}]" in warning
    assert "seen.wait(WAIT)" in warning
