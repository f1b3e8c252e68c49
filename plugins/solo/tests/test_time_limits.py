"""Time limits of the solo pool (SIGALRM, in the main thread)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.pool import JobFailed
from celeriac.testing.contracts.pool import Reports, ValueJob
from celeriac_solo import HardTimeLimit, SoloPool

BOUND = 30.0  # seconds a job sleeps when no limit stops it: a bound, never a timing assertion

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM here")


class SleepJob:
    """One long ``time.sleep`` (a blocking call the alarm interrupts)."""

    def __init__(self, job_id, *, soft=None, hard=None, ignore_soft=False):
        self.id = job_id
        self.soft_time_limit = soft
        self.time_limit = hard
        self.ignore_soft = ignore_soft
        self.seen: list[str] = []

    def run(self):
        for _ in range(2):
            try:
                time.sleep(BOUND)
                return "slept to the end"
            except SoftTimeLimitExceeded:
                self.seen.append("soft")
                if not self.ignore_soft:
                    return "soft limit caught"
            except HardTimeLimit:
                self.seen.append("hard")
                raise
        return "slept to the end"


@pytest.fixture
def pool():
    pool = SoloPool(1)
    pool.start()
    return pool


def test_soft_limit_interrupts_a_blocking_call(pool):
    reports = Reports()
    pool.submit(SleepJob("soft", soft=0.05), reports.callback("soft"))
    assert reports.calls == {"soft": ["soft limit caught"]}


def test_hard_limit_ends_the_job(pool):
    reports = Reports()
    job = SleepJob("hard", hard=0.05)
    pool.submit(job, reports.callback("hard"))
    [failed] = reports.calls["hard"]
    assert isinstance(failed, JobFailed) and failed.reason == "time-limit"
    assert isinstance(failed.exception, TimeLimitExceeded)
    assert job.seen == ["hard"]


def test_soft_then_hard_limit(pool):
    reports = Reports()
    job = SleepJob("both", soft=0.02, hard=0.1, ignore_soft=True)
    pool.submit(job, reports.callback("both"))
    assert job.seen == ["soft", "hard"]
    assert reports.calls["both"][0].reason == "time-limit"


def test_a_job_within_its_limits_is_not_disturbed(pool):
    reports = Reports()
    job = ValueJob("quick", 3, soft_time_limit=BOUND, time_limit=BOUND)
    before, _ = signal.getitimer(signal.ITIMER_REAL)  # a test timeout may have set one
    pool.submit(job, reports.callback("quick"))
    assert reports.calls == {"quick": [3]}
    after, _ = signal.getitimer(signal.ITIMER_REAL)
    assert (0 < after <= before) if before else after == 0.0


def test_the_previous_alarm_and_handler_are_restored(pool):
    def previous(signum, frame):
        raise AssertionError("the earlier alarm rang during the test")

    old_handler = signal.signal(signal.SIGALRM, previous)
    old_timer = signal.setitimer(signal.ITIMER_REAL, 1000.0)
    try:
        reports = Reports()
        pool.submit(SleepJob("soft", soft=0.02), reports.callback("soft"))
        assert reports.calls == {"soft": ["soft limit caught"]}
        assert signal.getsignal(signal.SIGALRM) is previous
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 1000.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, *old_timer)
        signal.signal(signal.SIGALRM, old_handler)


def test_outside_the_main_thread_limits_are_declared_unenforceable():
    found: list[SoloPool] = []
    reports = Reports()

    def run():
        pool = SoloPool(1)
        pool.start()
        found.append(pool)
        pool.submit(ValueJob("elsewhere", 1, soft_time_limit=0.01), reports.callback("elsewhere"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(BOUND)
    [pool] = found
    assert not pool.soft_time_limits and not pool.hard_time_limits
    assert "main thread" in pool.limitation
    assert reports.calls == {"elsewhere": [1]}
    assert SoloPool.soft_time_limits, "the class-wide declaration must not change"


TASKS = '''
import time
from celeriac import App

app = App("limits")

@app.task(soft_time_limit=0.05)
def soft():
    time.sleep(60)

@app.task(time_limit=0.05)
def hard():
    time.sleep(60)
'''


def test_a_solo_worker_enforces_the_limits_in_its_main_thread(tmp_path):
    import os
    import subprocess
    import sys

    from celeriac import App

    (tmp_path / "limit_tasks.py").write_text(TASKS)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")},
           "PYTHONPATH": str(tmp_path), "CELERIAC_BROKER_URL": f"sqlite:///{tmp_path}/b.sqlite3",
           "CELERIAC_RESULT_BACKEND": f"sqlite:///{tmp_path}/r.sqlite3"}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "limit_tasks", "worker",
                                 "-P", "solo"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    client = App("client", broker_url=env["CELERIAC_BROKER_URL"],
                 result_backend=env["CELERIAC_RESULT_BACKEND"])
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            client.send_task("limit_tasks.soft").get(timeout=BOUND + 30)
        with pytest.raises(TimeLimitExceeded):
            client.send_task("limit_tasks.hard").get(timeout=BOUND + 30)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(BOUND)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = (tmp_path / "worker.log").read_text()
    assert "cannot enforce" not in output, output
