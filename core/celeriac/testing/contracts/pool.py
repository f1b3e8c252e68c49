"""The pool contract: the rules in :mod:`celeriac.pool`.

Subclass :class:`PoolContract` in a test module of the plugin::

    from celeriac.testing.contracts import PoolContract

    class TestThreadPool(PoolContract):
        pool_name = "threads"
        concurrency = 3

The ``pool`` fixture builds ``pool_class(concurrency)``, starts it, and
terminates it at teardown. Concurrency and shutdown are checked with events
and barriers, never with timings. Jobs that only return or raise are plain
module-level classes, so pools running jobs elsewhere can pickle them; the
tests whose jobs block on events shared with the test need the jobs to run in
this process (declare ``lacks = {"in_process"}`` to skip them).

One rule goes beyond the kernel docstring, because the worker depends on it:
a job that :meth:`~celeriac.pool.Pool.stop` or ``terminate()`` handed back gets
no ``on_done`` call afterwards (its message is already going back to the
broker; a late ``on_done`` would acknowledge it too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import pytest

from celeriac._plugins import load_driver
from celeriac.plugin import resolve
from celeriac.pool import JobFailed, Pool

__all__ = ["POOL_CAPABILITIES", "BlockingJob", "FailingJob", "PoolContract", "Reports",
           "ValueJob"]

#: What a pool may declare it lacks, in ``lacks``.
POOL_CAPABILITIES: Mapping[str, str] = {
    "in_process": "jobs run in the test's process, so they can share threading events with it",
}


@attrs.define
class ValueJob:
    """Returns ``value``."""

    id: str
    value: Any = None
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> Any:
        return self.value


class JobError(Exception):
    """What :class:`FailingJob` raises."""


@attrs.define
class FailingJob:
    """Raises :class:`JobError` (a job should not raise; the pool must cope)."""

    id: str
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> Any:
        raise JobError(self.id)


@attrs.define
class BlockingJob:
    """Sets ``started``, blocks until ``release`` is set, sets ``finished``."""

    id: str
    release: threading.Event
    timeout: float
    started: threading.Event = attrs.field(factory=threading.Event)
    finished: threading.Event = attrs.field(factory=threading.Event)
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> Any:
        self.started.set()
        self.release.wait(self.timeout)
        self.finished.set()
        return self.id


class Reports:
    """Collects ``on_done`` calls, per job id; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: dict[str, list[Any]] = {}

    def callback(self, job_id: str) -> Any:
        def on_done(outcome: Any) -> None:
            with self._cond:
                self.calls.setdefault(job_id, []).append(outcome)
                self._cond.notify_all()
        return on_done

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct jobs reported."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= count, timeout)


class PoolContract:
    """Contract tests for a pool plugin. Subclass it as ``Test...``."""

    pool_name: ClassVar[str] = ""
    """Entry-point name in ``celeriac.pools``."""
    concurrency: ClassVar[int] = 2
    """Concurrency the pool is built with (at least 2 to test parallelism)."""
    lacks: ClassVar[frozenset[str]] = frozenset()
    """Names from :data:`POOL_CAPABILITIES` the pool does not provide."""
    wait_timeout: ClassVar[float] = 30.0
    """Upper bound for anything that must happen."""
    quiet_wait: ClassVar[float] = 0.2
    """How long the tests watch for something that must not happen."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.lacks) - set(POOL_CAPABILITIES)
        if unknown:
            raise TypeError(f"{cls.__name__}.lacks names unknown capabilities {sorted(unknown)}")

    def make_pool(self, concurrency: int) -> Pool:
        """Build the pool as the kernel does (override to pass extra settings)."""
        if not self.pool_name:
            raise NotImplementedError(f"{type(self).__name__} must set pool_name")
        record = load_driver("pool", self.pool_name)
        return resolve(record.pool_class)(concurrency)

    @pytest.fixture
    def pool(self) -> Any:
        """The started pool; terminated at teardown."""
        pool = self.make_pool(self.concurrency)
        pool.start()
        yield pool
        pool.terminate()

    def _require(self, capability: str) -> None:
        if capability in self.lacks:
            pytest.skip(f"the {self.pool_name} pool declares it lacks {capability!r}: "
                        f"{POOL_CAPABILITIES[capability]}")

    def _parallel(self, pool: Pool) -> None:
        self._require("in_process")
        if pool.inline:
            pytest.skip(f"the {self.pool_name} pool is inline: submit runs the job")

    def _blocking(self, job_id: str, release: threading.Event) -> BlockingJob:
        return BlockingJob(job_id, release, self.wait_timeout)

    # -- the contract -------------------------------------------------------------

    def test_declares_itself(self, pool: Pool) -> None:
        assert pool.concurrency >= 1
        assert isinstance(pool.inline, bool)
        if not (pool.soft_time_limits and pool.hard_time_limits):
            assert pool.limitation, "a pool without time limits says why in `limitation`"
        info = pool.info()
        assert "implementation" in info and "max-concurrency" in info

    def test_every_job_is_reported_once_with_its_value(self, pool: Pool) -> None:
        reports = Reports()
        jobs = [ValueJob(f"job-{i}", {"n": i, "items": [i, str(i)]}) for i in range(25)]
        for job in jobs:
            pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(len(jobs), self.wait_timeout), "not every job reported"
        assert pool.stop(self.wait_timeout) == []
        assert reports.calls == {job.id: [job.value] for job in jobs}

    def test_a_job_that_raises_gives_job_failed(self, pool: Pool) -> None:
        reports = Reports()
        pool.submit(FailingJob("bad"), reports.callback("bad"))
        pool.submit(ValueJob("good", 1), reports.callback("good"))
        assert reports.wait_for(2, self.wait_timeout)
        [outcome] = reports.calls["bad"]
        assert isinstance(outcome, JobFailed)
        assert outcome.reason == "error"
        assert isinstance(outcome.exception, JobError)
        assert reports.calls["good"] == [1]

    def test_inline_submit_reports_before_returning(self, pool: Pool) -> None:
        if not pool.inline:
            pytest.skip(f"the {self.pool_name} pool is not inline")
        reports = Reports()
        pool.submit(ValueJob("now", 7), reports.callback("now"))
        assert reports.calls == {"now": [7]}
        assert pool.active == 0

    def test_runs_up_to_concurrency_jobs_at_once(self, pool: Pool) -> None:
        self._parallel(pool)
        release = threading.Event()
        reports = Reports()
        busy = [self._blocking(f"busy-{i}", release) for i in range(pool.concurrency)]
        extra = self._blocking("extra", release)
        try:
            for job in [*busy, extra]:
                pool.submit(job, reports.callback(job.id))
            for job in busy:
                assert job.started.wait(self.wait_timeout), f"{job.id} never started"
            assert pool.active == pool.concurrency
            assert not extra.started.wait(self.quiet_wait), "ran more jobs than its concurrency"
        finally:
            release.set()
        assert reports.wait_for(len(busy) + 1, self.wait_timeout)
        assert reports.calls == {job.id: [job.id] for job in [*busy, extra]}

    def test_stop_waits_for_running_jobs(self, pool: Pool) -> None:
        self._parallel(pool)
        release = threading.Event()
        reports = Reports()
        job = self._blocking("running", release)
        pool.submit(job, reports.callback(job.id))
        assert job.started.wait(self.wait_timeout)
        unfinished: list[Any] = []
        stopper = threading.Thread(target=lambda: unfinished.extend(pool.stop(self.wait_timeout)))
        stopper.start()
        try:
            stopper.join(self.quiet_wait)
            assert stopper.is_alive(), "stop() returned while a job was still running"
        finally:
            release.set()
        stopper.join(self.wait_timeout)
        assert not stopper.is_alive()
        assert unfinished == []
        assert reports.calls == {"running": ["running"]}

    def test_stop_on_an_idle_pool_returns_nothing(self, pool: Pool) -> None:
        assert pool.stop(self.wait_timeout) == []
        assert pool.active == 0

    def test_stop_hands_back_unfinished_and_queued_jobs(self, pool: Pool) -> None:
        self._parallel(pool)
        release = threading.Event()
        reports = Reports()
        busy = [self._blocking(f"busy-{i}", release) for i in range(pool.concurrency)]
        queued = [self._blocking(f"queued-{i}", release) for i in range(2)]
        try:
            for job in [*busy, *queued]:
                pool.submit(job, reports.callback(job.id))
            for job in busy:
                assert job.started.wait(self.wait_timeout)
            handed_back = pool.stop(0.05)
        finally:
            release.set()
        assert sorted(job.id for job in handed_back) == sorted(j.id for j in [*busy, *queued])
        for job in busy:
            assert job.finished.wait(self.wait_timeout)
        for job in queued:
            assert not job.started.wait(self.quiet_wait), f"{job.id} ran after stop()"
        assert reports.calls == {}, "a job handed back by stop() was reported too"

    def test_terminate_hands_back_running_jobs(self, pool: Pool) -> None:
        self._parallel(pool)
        release = threading.Event()
        reports = Reports()
        job = self._blocking("running", release)
        try:
            pool.submit(job, reports.callback(job.id))
            assert job.started.wait(self.wait_timeout)
            handed_back = pool.terminate()
        finally:
            release.set()
        assert [j.id for j in handed_back] == ["running"]
        # terminate() may kill the job or let it finish unseen; either way no report.
        job.finished.wait(self.quiet_wait)
        time.sleep(self.quiet_wait)
        assert reports.calls == {}
