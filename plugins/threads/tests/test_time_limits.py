"""Time limits and terminate_job in the threads pool (exceptions raised in the task's thread)."""

from __future__ import annotations

import threading
import time

import pytest
from celeriac.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celeriac.pool import JobFailed
from celeriac.testing.contracts.pool import Reports, ValueJob
from celeriac_threads import HardTimeLimit, ThreadPool

BOUND = 30.0  # seconds a job runs when no limit stops it: a bound, never a timing assertion


class LoopJob:
    """Sleeps in short steps (Python code between them) until stopped or ``BOUND`` passes.

    ``on_soft``/``on_hard``: what to do when the limit's exception arrives
    (``"return"`` a value, or ``"linger"`` until ``release`` is set, then return).
    """

    def __init__(self, job_id, *, soft=None, hard=None, on_soft="return", on_hard="raise"):
        self.id = job_id
        self.soft_time_limit = soft
        self.time_limit = hard
        self.on_soft = on_soft
        self.on_hard = on_hard
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.thread = None

    def run(self):
        self.thread = threading.current_thread()
        self.started.set()
        try:
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:
                time.sleep(0.005)
            return "ran to the end"
        except SoftTimeLimitExceeded:
            return "soft limit caught"
        except HardTimeLimit:
            if self.on_hard == "linger":
                self.release.wait(BOUND)
                return "late outcome"
            raise
        finally:
            self.finished.set()


@pytest.fixture
def pool():
    pool = ThreadPool(2)
    pool.start()
    yield pool
    pool.terminate()


def test_soft_limit_raises_in_the_task_which_may_catch_it(pool):
    reports = Reports()
    job = LoopJob("soft", soft=0.05)
    pool.submit(job, reports.callback(job.id))
    assert reports.wait_for(1, BOUND + 10)
    assert reports.calls == {"soft": ["soft limit caught"]}


def test_hard_limit_reports_at_once_replaces_the_thread_and_drops_the_late_outcome(pool):
    reports = Reports()
    job = LoopJob("hard", hard=0.05, on_hard="linger")
    pool.submit(job, reports.callback(job.id))
    assert reports.wait_for(1, BOUND + 10)
    [failed] = reports.calls["hard"]
    assert isinstance(failed, JobFailed) and failed.reason == "time-limit"
    assert isinstance(failed.exception, TimeLimitExceeded)
    assert job.thread.name not in pool.info()["threads"]
    assert len(pool.info()["threads"]) == 2
    # The pool still runs two jobs at once while the abandoned thread lingers.
    for i in range(4):
        pool.submit(ValueJob(f"after-{i}", i), reports.callback(f"after-{i}"))
    assert reports.wait_for(5, BOUND)
    job.release.set()
    job.thread.join(BOUND)
    assert not job.thread.is_alive(), "the abandoned thread did not end after its job returned"
    assert reports.calls["hard"] == [failed], "the abandoned job's late outcome was reported"


def test_hard_limit_unwinds_a_task_that_catches_only_exception(pool):
    class Stubborn(LoopJob):
        def run(self):
            self.thread = threading.current_thread()
            try:
                while not self.release.is_set():
                    try:
                        time.sleep(0.005)
                    except Exception:  # would swallow an Exception, not HardTimeLimit
                        pass
            finally:
                self.finished.set()

    reports = Reports()
    job = Stubborn("stubborn", hard=0.05)
    pool.submit(job, reports.callback(job.id))
    assert reports.wait_for(1, BOUND)
    assert reports.calls["stubborn"][0].reason == "time-limit"
    assert job.finished.wait(BOUND), "HardTimeLimit did not unwind the task"
    job.release.set()


def test_soft_then_hard_limit(pool):
    class IgnoresSoft(LoopJob):
        def run(self):
            self.thread = threading.current_thread()
            self.started.set()
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:
                try:
                    time.sleep(0.005)
                except SoftTimeLimitExceeded:
                    self.release.set()  # seen, and ignored
            return "ran to the end"

    reports = Reports()
    job = IgnoresSoft("both", soft=0.02, hard=0.2)
    pool.submit(job, reports.callback(job.id))
    assert reports.wait_for(1, BOUND + 10)
    assert job.release.is_set(), "the soft limit was not raised first"
    [failed] = reports.calls["both"]
    assert isinstance(failed, JobFailed) and failed.reason == "time-limit"


def test_terminate_job_ends_a_running_job(pool):
    reports = Reports()
    job = LoopJob("victim")
    pool.submit(job, reports.callback(job.id))
    assert job.started.wait(BOUND)
    assert pool.terminate_job("no-such-job", 15) is False
    assert pool.terminate_job("victim", 15) is True
    assert reports.wait_for(1, BOUND)
    [failed] = reports.calls["victim"]
    assert failed.reason == "terminated" and isinstance(failed.exception, TaskRevokedError)
    assert job.finished.wait(BOUND)
    assert pool.terminate_job("victim", 15) is False


def test_jobs_without_limits_start_no_watchdog(pool):
    reports = Reports()
    pool.submit(ValueJob("plain", 1), reports.callback("plain"))
    assert reports.wait_for(1, BOUND)
    assert pool._watchdog is None


def test_a_worker_stores_what_the_limits_did(celeriac_app, caplog):
    from celeriac.testing.worker import start_worker

    def spin():
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            time.sleep(0.005)
        return "ran to the end"

    soft = celeriac_app.task(name="limits.soft", soft_time_limit=0.05)(spin)
    hard = celeriac_app.task(name="limits.hard", time_limit=0.05)(spin)
    with caplog.at_level("WARNING", logger="celeriac.worker"), \
            start_worker(celeriac_app, pool="threads", concurrency=2):
        with pytest.raises(SoftTimeLimitExceeded):
            soft.delay().get(timeout=BOUND + 10)
        with pytest.raises(TimeLimitExceeded):
            hard.delay().get(timeout=BOUND + 10)
    assert "cannot enforce" not in caplog.text
