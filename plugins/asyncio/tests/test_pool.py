"""The asyncio pool with ``async def`` jobs: concurrency, limits, terminate, the watchdog.

Jobs here are small stand-ins for the worker's jobs (``is_async`` and
``run_async(guard)``), so each behaviour of the pool is seen alone; the real
tracer and worker are in test_worker.py. Nothing waits on timings: every
"must happen" is an event with a generous bound, and limits are short so that
the bound is never near.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import types
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from celeriac import App
from celeriac._plugins import load_driver
from celeriac.exceptions import (
    ConfigurationError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from celeriac.plugin import resolve
from celeriac.pool import JobFailed, PoolOptions
from celeriac.testing.contracts.pool import BlockingJob, Reports, ValueJob
from celeriac_asyncio import AsyncioSettings
from celeriac_asyncio.eventloop import AsyncioPool

WAIT = 30.0


@attrs.define
class CoroutineJob:
    """An ``async def`` job: awaits ``body()`` through the pool's guard, as the tracer does."""

    id: str
    body: Callable[[], Awaitable[Any]]
    soft_time_limit: float | None = None
    time_limit: float | None = None
    name: str = "tests.coroutine"
    is_async: bool = True

    def run(self) -> Any:
        raise AssertionError("an async job must be awaited on the loop, not run()")

    async def run_async(self, guard: Any = None) -> Any:
        coroutine = self.body()
        return await (coroutine if guard is None else guard(coroutine))


@attrs.define
class NamedValueJob(ValueJob):
    """A ``def`` job of the task ``tests.limited``."""

    name: str = "tests.limited"


def settings(**values: Any) -> PoolOptions:
    return PoolOptions(settings=types.SimpleNamespace(sections={"asyncio": AsyncioSettings(**values)}))


@pytest.fixture
def make_pool():
    made: list[AsyncioPool] = []

    def make(concurrency: int = 10, **values: Any) -> AsyncioPool:
        pool = AsyncioPool(concurrency, settings(**values))
        pool.start()
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.terminate()


def until_set(event: threading.Event) -> Awaitable[bool]:
    """Await a threading event without blocking the loop (at most WAIT seconds)."""
    return asyncio.to_thread(event.wait, WAIT)


# -- declarations and settings ---------------------------------------------------


def test_record_points_at_the_pool():
    assert resolve(load_driver("pool", "asyncio").pool_class) is AsyncioPool


def test_declares_limits_runs_many_and_says_what_def_tasks_lack():
    assert AsyncioPool.soft_time_limits and AsyncioPool.hard_time_limits
    assert AsyncioPool.default_concurrency >= 1000
    assert "def tasks" in AsyncioPool.limitation and "cannot be interrupted" in AsyncioPool.limitation
    assert not AsyncioPool.inline and AsyncioPool.resizable


def test_the_asyncio_section_reaches_the_pool_through_the_worker():
    app = App("t", broker_url="memory://section", result_backend="memory://section",
              asyncio={"threads": 3, "io_threads": 2, "block_warning": 0.5})
    try:
        assert app.conf.section("asyncio") == AsyncioSettings(threads=3, io_threads=2,
                                                                block_warning=0.5)
        worker = app.Worker(pool="asyncio", install_signal_handlers=False)
        assert worker.pool.settings.threads == 3
        assert worker.concurrency == AsyncioPool.default_concurrency
        assert worker.pool.info()["io-threads"] == 2
    finally:
        app.close()


@pytest.mark.parametrize("values", [{"threads": 0}, {"io_threads": 0}, {"block_warning": -1}])
def test_bad_settings_are_errors_naming_them(values):
    app = App("t", broker_url="memory://bad", result_backend="memory://bad", asyncio=values)
    try:
        with pytest.raises(ConfigurationError) as info:
            app.conf  # noqa: B018 - settings are loaded on first use
        assert f"[asyncio] {next(iter(values))} must be at least" in str(info.value)
    finally:
        app.close()


def test_without_settings_the_defaults_apply():
    pool = AsyncioPool(5)
    assert pool.settings == AsyncioSettings()
    pool.terminate()


# -- running -------------------------------------------------------------------


def test_many_coroutines_run_at_once_on_one_loop(make_pool):
    count = 200
    pool = make_pool(count)
    reports = Reports()
    state: dict[str, Any] = {"arrived": 0, "all_here": None, "threads": set()}

    async def body() -> int:
        # Each waits until every one has arrived: only possible if all run at once.
        if state["all_here"] is None:
            state["all_here"] = asyncio.Event()
        state["arrived"] += 1
        state["threads"].add(threading.get_ident())
        if state["arrived"] == count:
            state["all_here"].set()
        await asyncio.wait_for(state["all_here"].wait(), WAIT)
        return state["arrived"]

    for i in range(count):
        pool.submit(CoroutineJob(f"c{i}", body), reports.callback(f"c{i}"))
    assert reports.wait_for(count, WAIT)
    assert all(calls == [count] for calls in reports.calls.values())
    assert len(state["threads"]) == 1, "the coroutines did not share one loop thread"


def test_jobs_over_the_concurrency_wait_for_a_free_slot(make_pool):
    pool = make_pool(2)
    reports = Reports()
    release = threading.Event()
    started = {i: threading.Event() for i in range(3)}

    def body_for(i: int) -> Callable[[], Awaitable[int]]:
        async def body() -> int:
            started[i].set()
            await until_set(release)
            return i
        return body

    for i in range(3):
        pool.submit(CoroutineJob(f"j{i}", body_for(i)), reports.callback(f"j{i}"))
    try:
        assert started[0].wait(WAIT) and started[1].wait(WAIT)
        assert pool.active == 2
        assert not started[2].wait(0.2), "ran more jobs than its concurrency"
    finally:
        release.set()
    assert reports.wait_for(3, WAIT)
    assert reports.calls == {"j0": [0], "j1": [1], "j2": [2]}


def test_def_jobs_run_in_threads_beside_the_loop(make_pool):
    pool = make_pool(4, threads=2)
    reports = Reports()
    release = threading.Event()
    blocked = BlockingJob("def", release, WAIT)
    pool.submit(blocked, reports.callback("def"))
    assert blocked.started.wait(WAIT)

    async def body() -> str:
        await asyncio.sleep(0)
        return "async done"

    # The def job holds a thread; coroutines go on on the loop meanwhile.
    pool.submit(CoroutineJob("async", body), reports.callback("async"))
    pool.submit(ValueJob("def-2", 2), reports.callback("def-2"))
    assert reports.wait_for(2, WAIT)
    assert reports.calls == {"async": ["async done"], "def-2": [2]}
    release.set()
    assert reports.wait_for(3, WAIT)
    assert reports.calls["def"] == ["def"]
    assert {t.name.rsplit("_", 1)[0] for t in threading.enumerate()} >= {
        "celeriac-asyncio-loop", "celeriac-asyncio-def"}


def test_jobs_submitted_before_start_run_after_it():
    pool = AsyncioPool(2)
    reports = Reports()

    async def body() -> int:
        return 7

    try:
        pool.submit(CoroutineJob("early", body), reports.callback("early"))
        pool.submit(ValueJob("early-def", 8), reports.callback("early-def"))
        pool.start()
        assert reports.wait_for(2, WAIT)
        assert reports.calls == {"early": [7], "early-def": [8]}
    finally:
        pool.terminate()


def test_a_coroutine_raising_cancelled_error_itself_is_reported_as_an_error(make_pool):
    pool = make_pool()
    reports = Reports()

    async def body() -> None:
        raise asyncio.CancelledError

    pool.submit(CoroutineJob("self-cancelled", body), reports.callback("self-cancelled"))
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["self-cancelled"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "error"
    assert isinstance(outcome.exception, asyncio.CancelledError)


def test_grow_and_shrink_change_how_many_run_at_once(make_pool):
    pool = make_pool(1)
    release = threading.Event()
    started = {i: threading.Event() for i in range(2)}
    reports = Reports()

    def body_for(i: int) -> Callable[[], Awaitable[int]]:
        async def body() -> int:
            started[i].set()
            await until_set(release)
            return i
        return body

    try:
        for i in range(2):
            pool.submit(CoroutineJob(f"g{i}", body_for(i)), reports.callback(f"g{i}"))
        assert started[0].wait(WAIT)
        assert not started[1].wait(0.2)
        pool.grow(1)
        assert started[1].wait(WAIT), "grow did not let the waiting job start"
        assert pool.concurrency == 2
        pool.shrink(5)
        assert pool.concurrency == 1
    finally:
        release.set()
    assert reports.wait_for(2, WAIT)


# -- time limits ---------------------------------------------------------------


def test_soft_limit_raises_inside_the_coroutine_where_it_awaits(make_pool):
    pool = make_pool()
    reports = Reports()
    seen: dict[str, Any] = {}

    async def body() -> str:
        try:
            await asyncio.sleep(WAIT)
        except SoftTimeLimitExceeded as exc:
            seen["exc"] = exc
            task = asyncio.current_task()
            seen["cancelling"] = task.cancelling() if hasattr(task, "cancelling") else 0
            await asyncio.sleep(0)  # the task goes on: it was not left cancelled
            return "cleaned up"
        return "slept"

    pool.submit(CoroutineJob("soft", body, soft_time_limit=0.05), reports.callback("soft"))
    assert reports.wait_for(1, WAIT)
    assert reports.calls == {"soft": ["cleaned up"]}
    assert "soft time limit" in str(seen["exc"])
    assert seen["cancelling"] == 0


def test_an_uncaught_soft_limit_propagates_from_the_coroutine(make_pool):
    pool = make_pool()
    raised: list[BaseException] = []

    async def body() -> None:
        try:
            await asyncio.sleep(WAIT)
        except BaseException as exc:
            raised.append(exc)
            raise

    class CatchingJob(CoroutineJob):
        async def run_async(self, guard: Any = None) -> Any:
            try:  # what the tracer does with the task's exception
                return await guard(self.body())
            except Exception as exc:
                return type(exc).__name__

    job = CatchingJob("soft-uncaught", body, soft_time_limit=0.05)
    reports = Reports()
    pool.submit(job, reports.callback(job.id))
    assert reports.wait_for(1, WAIT)
    assert reports.calls == {job.id: ["SoftTimeLimitExceeded"]}
    assert [type(e) for e in raised] == [SoftTimeLimitExceeded]


def test_hard_limit_cancels_the_coroutine_and_reports_time_limit(make_pool):
    pool = make_pool()
    reports = Reports()
    cancelled = threading.Event()

    async def body() -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pool.submit(CoroutineJob("hard", body, time_limit=0.05), reports.callback("hard"))
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["hard"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "time-limit"
    assert isinstance(outcome.exception, TimeLimitExceeded)
    assert cancelled.wait(WAIT)
    assert pool.active == 0


def test_hard_limit_after_the_soft_one_ends_a_task_that_caught_it(make_pool):
    pool = make_pool()
    reports = Reports()
    seen: list[str] = []
    unwound = threading.Event()

    async def body() -> str:
        try:
            await asyncio.sleep(WAIT)
        except SoftTimeLimitExceeded:
            seen.append("soft")
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            seen.append("cancelled")
            unwound.set()
            raise
        return "never"

    pool.submit(CoroutineJob("both", body, soft_time_limit=0.05, time_limit=0.3),
                reports.callback("both"))
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["both"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "time-limit"
    assert unwound.wait(WAIT)
    assert seen == ["soft", "cancelled"]


def test_a_coroutine_ignoring_cancellation_is_still_reported_once(make_pool):
    pool = make_pool()
    reports = Reports()
    release = threading.Event()
    finished = threading.Event()

    async def body() -> str:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            pass  # swallowed: the pool must not wait for it, nor store what it returns
        await until_set(release)
        finished.set()
        return "too late"

    pool.submit(CoroutineJob("stubborn", body, time_limit=0.05), reports.callback("stubborn"))
    assert reports.wait_for(1, WAIT)
    assert pool.active == 0
    release.set()
    assert finished.wait(WAIT)
    pool.stop(WAIT)
    [outcome] = reports.calls["stubborn"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "time-limit"


def test_def_jobs_with_limits_get_a_warning_once_per_task(make_pool, caplog):
    pool = make_pool()
    reports = Reports()
    with caplog.at_level(logging.WARNING, logger="celeriac_asyncio.eventloop"):
        for i in range(2):
            job = NamedValueJob(f"limited-{i}", i, soft_time_limit=1.0, time_limit=2.0)
            pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(2, WAIT)
    warnings = [r for r in caplog.records if "cannot interrupt" in r.getMessage()]
    assert len(warnings) == 1


# -- terminate_job ---------------------------------------------------------------


def test_terminate_job_cancels_the_coroutine(make_pool):
    pool = make_pool()
    reports = Reports()
    started, cancelled = threading.Event(), threading.Event()

    async def body() -> None:
        started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pool.submit(CoroutineJob("victim", body), reports.callback("victim"))
    assert started.wait(WAIT)
    assert pool.terminate_job("victim", signal.SIGTERM) is True
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["victim"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "terminated"
    assert isinstance(outcome.exception, TaskRevokedError)
    assert cancelled.wait(WAIT)
    assert pool.terminate_job("victim", signal.SIGTERM) is False


def test_terminate_job_cannot_end_def_jobs_or_unknown_ones(make_pool):
    pool = make_pool()
    release = threading.Event()
    job = BlockingJob("def", release, WAIT)
    reports = Reports()
    pool.submit(job, reports.callback("def"))
    try:
        assert job.started.wait(WAIT)
        assert pool.terminate_job("def", signal.SIGTERM) is False
        assert pool.terminate_job("nobody", signal.SIGTERM) is False
    finally:
        release.set()
    assert reports.wait_for(1, WAIT)
    assert reports.calls == {"def": ["def"]}


# -- stopping ------------------------------------------------------------------


def test_stop_cancels_unfinished_coroutines_and_hands_them_back(make_pool):
    pool = make_pool()
    reports = Reports()
    started, cancelled = threading.Event(), threading.Event()

    async def body() -> None:
        started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = CoroutineJob("long", body)
    pool.submit(job, reports.callback("long"))
    assert started.wait(WAIT)
    assert pool.stop(0.05) == [job]
    assert cancelled.wait(WAIT)
    assert reports.calls == {}
    assert pool.stop(0) == []
    with pytest.raises(RuntimeError, match="stopped"):
        pool.submit(CoroutineJob("late", body), reports.callback("late"))


def test_stop_waits_for_running_coroutines(make_pool):
    pool = make_pool()
    reports = Reports()
    release, started = threading.Event(), threading.Event()

    async def body() -> str:
        started.set()
        await until_set(release)
        return "finished"

    pool.submit(CoroutineJob("running", body), reports.callback("running"))
    assert started.wait(WAIT)
    unfinished: list[Any] = []
    stopper = threading.Thread(target=lambda: unfinished.extend(pool.stop(WAIT)))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while a coroutine was still running"
    release.set()
    stopper.join(WAIT)
    assert unfinished == []
    assert reports.calls == {"running": ["finished"]}


# -- the watchdog --------------------------------------------------------------


class _Seen(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.messages.append(record.getMessage())
            self.event.set()


def test_a_coroutine_blocking_the_loop_is_reported_with_its_stack(make_pool):
    pool = make_pool(block_warning=0.1)
    reports = Reports()
    seen = _Seen("stuck")
    logger = logging.getLogger("celeriac_asyncio.eventloop")
    logger.addHandler(seen)

    async def blocking_body() -> bool:
        # Blocks the loop (no await) until the watchdog has said so.
        return seen.event.wait(WAIT)

    try:
        pool.submit(CoroutineJob("sleeper", blocking_body, name="tests.sleepy"),
                    reports.callback("sleeper"))
        assert reports.wait_for(1, WAIT)
    finally:
        logger.removeHandler(seen)
    assert reports.calls == {"sleeper": [True]}
    # Read from our own handler: it saw the record before the task could
    # return (caplog's handler, higher up, may not have it yet).
    [warning] = seen.messages
    assert "tests.sleepy[sleeper]" in warning
    assert "blocking_body" in warning and "seen.event.wait(WAIT)" in warning


def test_block_warning_zero_turns_the_watchdog_off(make_pool):
    pool = make_pool(block_warning=0)
    assert pool._watchdog is None
