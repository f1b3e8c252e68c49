"""Behaviour of the solo pool beyond the pool contract."""

from __future__ import annotations

import logging
import threading

import pytest
from celeriac._plugins import load_driver
from celeriac.plugin import resolve
from celeriac.pool import JobFailed
from celeriac.testing.contracts.pool import BlockingJob, Reports, ValueJob
from celeriac_solo import SoloPool


class ThreadJob:
    id = "where"
    soft_time_limit = time_limit = None

    def run(self):
        return threading.get_ident()


class InterruptedJob:
    id = "interrupted"
    soft_time_limit = time_limit = None

    def run(self):
        raise KeyboardInterrupt


def test_record_points_at_the_pool():
    assert resolve(load_driver("pool", "solo").pool_class) is SoloPool


def test_concurrency_is_always_one():
    pool = SoloPool(8)
    assert pool.concurrency == 1
    assert pool.info()["max-concurrency"] == 1


def test_declares_time_limits_and_their_limits():
    assert SoloPool.inline
    assert SoloPool.soft_time_limits and SoloPool.hard_time_limits
    assert "SIGALRM" in SoloPool.limitation


def test_runs_the_job_in_the_calling_thread():
    reports = Reports()
    SoloPool(1).submit(ThreadJob(), reports.callback("where"))
    assert reports.calls == {"where": [threading.get_ident()]}


def test_stop_from_another_thread_waits_then_hands_back():
    pool = SoloPool(1)
    release = threading.Event()
    job = BlockingJob("slow", release, 30)
    reports = Reports()
    runner = threading.Thread(target=pool.submit, args=(job, reports.callback("slow")))
    runner.start()
    assert job.started.wait(30)
    assert pool.active == 1
    assert pool.stop(0.05) == [job]
    release.set()
    runner.join(30)
    assert reports.calls == {}
    assert pool.active == 0


def test_stop_from_the_running_job_hands_it_back_without_waiting():
    pool = SoloPool(1)
    handed_back = []

    class StopsItself:
        id = "self"
        soft_time_limit = time_limit = None

        def run(self):
            handed_back.extend(pool.stop(30))
            return "done"

    reports = Reports()
    job = StopsItself()
    pool.submit(job, reports.callback("self"))
    assert handed_back == [job]
    assert reports.calls == {}


def test_an_interrupted_job_propagates_and_is_handed_back():
    pool = SoloPool(1)
    job = InterruptedJob()
    reports = Reports()
    with pytest.raises(KeyboardInterrupt):
        pool.submit(job, reports.callback(job.id))
    assert reports.calls == {}
    assert pool.stop(1) == [job]


def test_a_failing_on_done_is_logged_not_raised(caplog):
    def on_done(outcome):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="celeriac_solo"):
        SoloPool(1).submit(ValueJob("j", 1), on_done)
    assert "on_done of job j failed" in caplog.text


def test_submit_after_stop_is_refused():
    pool = SoloPool(1)
    pool.stop()
    with pytest.raises(RuntimeError):
        pool.submit(ValueJob("late"), lambda outcome: None)


def test_job_failed_keeps_the_exception():
    class Fails:
        id = "f"
        soft_time_limit = time_limit = None

        def run(self):
            raise ValueError("boom")

    reports = Reports()
    SoloPool(1).submit(Fails(), reports.callback("f"))
    [outcome] = reports.calls["f"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "error"
    assert isinstance(outcome.exception, ValueError)
