"""What every pool of green threads keeps, beyond the pool contract.

Subclass :class:`GreenPoolContract` in a test module that runs in a process
patched for the pool (see :mod:`celeriac.testing.patched`)::

    from celeriac.testing.contracts.green import GreenPoolContract

    class TestMyGreenPool(GreenPoolContract):
        pool_name = "mygreen"

It checks time limits (the soft one raised in the task, the hard one killing
the green thread and reported at once, a late outcome dropped),
``terminate_job``, ``grow``/``shrink``, that ``submit`` never blocks, that
``terminate()`` kills, and that an unpatched process is refused. The process
is patched, so ``threading.Event`` and ``time.sleep`` are cooperative here.
Bounds on waiting only, never timing assertions.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from celeriac._plugins import load_driver
from celeriac.exceptions import (
    ConfigurationError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from celeriac.plugin import resolve
from celeriac.pool import JobFailed

from .pool import BlockingJob, Reports, ValueJob

__all__ = ["GreenPoolContract", "SleepyJob"]

BOUND = 30.0  # seconds a job waits when nothing stops it


class SleepyJob:
    """Waits until ``release`` is set or ``BOUND`` passes.

    ``linger``: when killed, keep going (swallow the kill) until ``release``.
    """

    def __init__(self, job_id: str, *, soft: float | None = None, hard: float | None = None,
                 linger: bool = False) -> None:
        self.id = job_id
        self.soft_time_limit = soft
        self.time_limit = hard
        self.linger = linger
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.seen: list[str] = []

    def run(self) -> Any:
        from greenlet import GreenletExit

        self.started.set()
        try:
            try:
                self.release.wait(BOUND)
                return "released"
            except SoftTimeLimitExceeded as exc:
                self.seen.append(str(exc))
                return "soft limit caught"
            except GreenletExit:
                self.seen.append("killed")
                if not self.linger:
                    raise
                self.release.wait(BOUND)
                return "late outcome"
        finally:
            self.finished.set()


class GreenPoolContract:
    """Tests for a :class:`celeriac.greenpool.GreenPool` plugin. Subclass it as ``Test...``."""

    pool_name: ClassVar[str] = ""
    """Entry-point name in ``celeriac.pools``."""

    @pytest.fixture
    def make_pool(self) -> Any:
        """``make_pool(concurrency=2)``: a started pool, terminated at teardown."""
        made = []

        def make(concurrency: int = 2) -> Any:
            pool = self.pool_class()(concurrency)
            pool.start()
            made.append(pool)
            return pool

        yield make
        for pool in made:
            pool.terminate()

    def pool_class(self) -> Any:
        if not self.pool_name:
            raise NotImplementedError(f"{type(self).__name__} must set pool_name")
        return resolve(load_driver("pool", self.pool_name).pool_class)

    def test_declares_its_abilities(self, make_pool):
        pool = make_pool()
        assert pool.soft_time_limits and pool.hard_time_limits and pool.resizable
        assert pool.default_concurrency and pool.default_concurrency > 1
        assert "yield" in pool.limitation

    def test_soft_limit_raises_in_the_task(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("soft", soft=0.02)
        pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(1, BOUND + 10)
        assert reports.calls == {"soft": ["soft limit caught"]}
        assert job.seen and "soft time limit" in job.seen[0]

    def test_hard_limit_kills_the_job_and_reports_time_limit(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("hard", hard=0.02)
        pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(1, BOUND + 10)
        [failed] = reports.calls["hard"]
        assert isinstance(failed, JobFailed) and failed.reason == "time-limit"
        assert isinstance(failed.exception, TimeLimitExceeded)
        assert job.finished.wait(BOUND)
        assert job.seen == ["killed"]
        assert pool.active == 0

    def test_soft_then_hard_limit(self, make_pool):
        class IgnoresSoft(SleepyJob):
            def run(self):
                from greenlet import GreenletExit

                try:
                    for _ in range(2):
                        try:
                            self.release.wait(BOUND)
                            return "released"
                        except SoftTimeLimitExceeded:
                            self.seen.append("soft")
                except GreenletExit:
                    self.seen.append("killed")
                    raise
                finally:
                    self.finished.set()

        pool = make_pool()
        reports = Reports()
        job = IgnoresSoft("both", soft=0.02, hard=0.1)
        pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(1, BOUND + 10)
        assert reports.calls["both"][0].reason == "time-limit"
        assert job.finished.wait(BOUND)
        assert job.seen == ["soft", "killed"]

    def test_a_job_that_outlives_its_kill_is_reported_once(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("stubborn", hard=0.02, linger=True)
        pool.submit(job, reports.callback(job.id))
        assert reports.wait_for(1, BOUND + 10)
        [failed] = reports.calls["stubborn"]
        assert failed.reason == "time-limit"
        # Its slot is free again: other jobs run while it lingers.
        for i in range(3):
            pool.submit(ValueJob(f"next-{i}", i), reports.callback(f"next-{i}"))
        assert reports.wait_for(4, BOUND)
        job.release.set()
        assert job.finished.wait(BOUND)
        time.sleep(0.01)  # yield once more so that the job's greenlet ends
        assert reports.calls["stubborn"] == [failed], "the late outcome was reported too"

    def test_a_job_within_its_limits_is_not_disturbed(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("calm", soft=BOUND, hard=BOUND)
        pool.submit(job, reports.callback(job.id))
        assert job.started.wait(BOUND)
        job.release.set()
        assert reports.wait_for(1, BOUND)
        assert reports.calls == {"calm": ["released"]}

    def test_terminate_job_kills_a_running_job(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("victim")
        pool.submit(job, reports.callback(job.id))
        assert job.started.wait(BOUND)
        assert pool.terminate_job("no-such-job", 15) is False
        assert pool.terminate_job("victim", 15) is True
        assert reports.wait_for(1, BOUND)
        [failed] = reports.calls["victim"]
        assert failed.reason == "terminated" and isinstance(failed.exception, TaskRevokedError)
        assert job.finished.wait(BOUND) and job.seen == ["killed"]
        assert pool.terminate_job("victim", 15) is False

    def test_terminate_job_drops_a_queued_job(self, make_pool):
        pool = make_pool(1)
        release = threading.Event()
        reports = Reports()
        busy = BlockingJob("busy", release, BOUND)
        queued = BlockingJob("queued", release, BOUND)
        pool.submit(busy, reports.callback(busy.id))
        pool.submit(queued, reports.callback(queued.id))
        assert busy.started.wait(BOUND)
        assert pool.terminate_job("queued", 15) is True
        assert reports.calls["queued"][0].reason == "terminated"
        release.set()
        assert reports.wait_for(2, BOUND)
        assert not queued.started.is_set()

    def test_grow_and_shrink(self, make_pool):
        pool = make_pool(1)
        release = threading.Event()
        reports = Reports()
        first, second = BlockingJob("first", release, BOUND), BlockingJob("second", release, BOUND)
        pool.submit(first, reports.callback(first.id))
        pool.submit(second, reports.callback(second.id))
        assert first.started.wait(BOUND)
        assert not second.started.wait(0.1), "ran more jobs than its concurrency"
        pool.grow(1)
        assert pool.concurrency == 2
        assert second.started.wait(BOUND), "grow() did not start the queued job"
        pool.shrink(5)
        assert pool.concurrency == 1
        third, fourth = BlockingJob("third", release, BOUND), BlockingJob("fourth", release, BOUND)
        pool.submit(third, reports.callback(third.id))
        pool.submit(fourth, reports.callback(fourth.id))
        assert not third.started.wait(0.1), "shrink() did not lower the concurrency"
        release.set()
        assert reports.wait_for(4, BOUND)
        assert pool.info()["max-concurrency"] == 1

    def test_submit_never_blocks(self, make_pool):
        pool = make_pool(1)
        release = threading.Event()
        reports = Reports()
        jobs = [BlockingJob(f"j{i}", release, BOUND) for i in range(50)]
        for job in jobs:
            pool.submit(job, reports.callback(job.id))
        assert pool.info()["queued"] == 49
        release.set()
        assert reports.wait_for(len(jobs), BOUND)

    def test_terminate_kills_running_jobs_without_reporting_them(self, make_pool):
        pool = make_pool()
        reports = Reports()
        job = SleepyJob("running")
        pool.submit(job, reports.callback(job.id))
        assert job.started.wait(BOUND)
        assert [j.id for j in pool.terminate()] == ["running"]
        assert job.finished.wait(BOUND) and job.seen == ["killed"]
        assert reports.calls == {}

    def test_refuses_a_process_that_is_not_patched(self, monkeypatch):
        cls = self.pool_class()
        monkeypatch.setattr(cls, "is_patched", lambda pool: False)
        with pytest.raises(ConfigurationError, match=f"-P {self.pool_name}"):
            cls(2)
