"""Behaviour of the threads pool beyond the pool contract."""

from __future__ import annotations

import logging
import threading

import pytest
from celeriac._plugins import load_driver
from celeriac.plugin import resolve
from celeriac.pool import JobFailed
from celeriac.testing.contracts.pool import BlockingJob, Reports, ValueJob
from celeriac_threads import ThreadPool


class ExitingJob:
    id = "exit"
    soft_time_limit = time_limit = None

    def run(self):
        raise SystemExit(3)


@pytest.fixture
def pool():
    pool = ThreadPool(2)
    yield pool
    pool.terminate()


def test_record_points_at_the_pool():
    assert resolve(load_driver("pool", "threads").pool_class) is ThreadPool


def test_declares_time_limits_and_their_limits():
    assert not ThreadPool.inline
    assert ThreadPool.soft_time_limits and ThreadPool.hard_time_limits
    assert "C call" in ThreadPool.limitation


def test_start_makes_named_daemon_threads(pool):
    pool.start()
    pool.start()
    names = pool.info()["threads"]
    assert names == ["celeriac-pool-1", "celeriac-pool-2"]
    running = {t.name: t for t in threading.enumerate() if t.name in names}
    assert set(running) == set(names)
    assert all(t.daemon for t in running.values())


def test_jobs_submitted_before_start_run_after_it(pool):
    reports = Reports()
    pool.submit(ValueJob("early", 1), reports.callback("early"))
    pool.start()
    assert reports.wait_for(1, 30)
    assert reports.calls == {"early": [1]}


def test_submit_never_blocks(pool):
    pool.start()
    release = threading.Event()
    jobs = [BlockingJob(f"j{i}", release, 30) for i in range(50)]
    reports = Reports()
    submitter = threading.Thread(
        target=lambda: [pool.submit(job, reports.callback(job.id)) for job in jobs])
    submitter.start()
    submitter.join(30)
    submitted = not submitter.is_alive()
    release.set()
    assert submitted, "submit blocked while every thread was busy"
    assert reports.wait_for(len(jobs), 30)


def test_a_job_raising_system_exit_does_not_end_its_thread(pool):
    pool.start()
    reports = Reports()
    pool.submit(ExitingJob(), reports.callback("exit"))
    for i in range(4):
        pool.submit(ValueJob(f"after-{i}", i), reports.callback(f"after-{i}"))
    assert reports.wait_for(5, 30)
    [outcome] = reports.calls["exit"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "error"
    assert isinstance(outcome.exception, SystemExit)
    assert all(t.is_alive() for t in threading.enumerate() if t.name.startswith("celeriac-pool"))


def test_a_failing_on_done_is_logged_and_the_thread_carries_on(caplog):
    # One thread, so the failing report is logged before the next job runs.
    pool = ThreadPool(1)
    pool.start()
    reports = Reports()

    def broken(outcome):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="celeriac_threads"):
        pool.submit(ValueJob("bad-callback"), broken)
        pool.submit(ValueJob("next", 2), reports.callback("next"))
        pool.submit(ValueJob("and-next", 3), reports.callback("and-next"))
        assert reports.wait_for(2, 30)
    pool.terminate()
    assert "on_done of job bad-callback failed" in caplog.text


def test_stop_hands_back_running_jobs_then_queued_ones_in_order(pool):
    pool.start()
    release = threading.Event()
    running = [BlockingJob(f"r{i}", release, 30) for i in range(2)]
    queued = [BlockingJob(f"q{i}", release, 30) for i in range(3)]
    try:
        for job in running:
            pool.submit(job, lambda outcome: None)
        for job in running:
            assert job.started.wait(30)
        for job in queued:
            pool.submit(job, lambda outcome: None)
        handed_back = pool.stop(0)
    finally:
        release.set()
    assert {j.id for j in handed_back[:2]} == {"r0", "r1"}
    assert [j.id for j in handed_back[2:]] == ["q0", "q1", "q2"]


def test_submit_after_stop_is_refused(pool):
    pool.start()
    assert pool.stop(1) == []
    with pytest.raises(RuntimeError):
        pool.submit(ValueJob("late"), lambda outcome: None)
