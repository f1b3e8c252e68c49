"""The prefork pool on its own: child processes, limits, recycling, resizing, stopping.

Jobs run in children, so they meet the test through files in ``tmp_path``:
a gated job writes ``<id>.started`` (its pid) and waits for ``<id>.release``.
Nothing here asserts on timings; the time limits are short only so that the
tests end soon.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
from celeriac._plugins import load_driver
from celeriac.exceptions import (
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.plugin import resolve
from celeriac.pool import JobFailed, PoolOptions
from celeriac.testing.contracts.pool import Reports
from celeriac_prefork.child import dump_result
from celeriac_prefork.prefork import PreforkPool

WAIT = 60.0


@attrs.define
class PidJob:
    """Returns the pid of the process that ran it."""

    id: str
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> int:
        return os.getpid()


@attrs.define
class GateJob:
    """Writes ``<id>.started`` (its pid), waits for ``<id>.release``, returns its id.

    With ``catch_soft``, a SoftTimeLimitExceeded raised while waiting is
    caught and ``"caught"`` returned."""

    id: str
    folder: str
    soft_time_limit: float | None = None
    time_limit: float | None = None
    catch_soft: bool = False

    def run(self) -> str:
        folder = Path(self.folder)
        (folder / f"{self.id}.started").write_text(str(os.getpid()))
        try:
            while not (folder / f"{self.id}.release").exists():
                threading.Event().wait(0.01)
        except SoftTimeLimitExceeded:
            if not self.catch_soft:
                raise
            return "caught"
        return self.id


@attrs.define
class DieJob:
    """Ends its own process: by ``signum``, or ``os._exit(code)``."""

    id: str
    signum: int | None = None
    code: int = 3
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> None:
        if self.signum is not None:
            faulthandler.disable()  # no traceback dump for the SIGSEGV case
            os.kill(os.getpid(), self.signum)
        os._exit(self.code)


class Unpicklable:
    """A value pickle refuses."""

    def __reduce__(self) -> Any:
        raise TypeError("not picklable")

    def __repr__(self) -> str:
        return "<Unpicklable>"


class NeedsTwo(Exception):
    """Pickles, but cannot be unpickled (its ``__init__`` needs two arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


@attrs.define
class OddReturnJob:
    """Returns an unpicklable value, or raises an exception that will not unpickle."""

    id: str
    raise_it: bool = False
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> Any:
        if self.raise_it:
            raise NeedsTwo(1, 2)
        return Unpicklable()


@attrs.define
class HoldsALock:
    """A job that cannot be sent to a child (a lock does not pickle)."""

    id: str
    lock: Any = attrs.field(factory=threading.Lock)
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def run(self) -> None:
        raise AssertionError("never sent")


def make(concurrency: int = 2, **options: Any) -> PreforkPool:
    pool = PreforkPool(concurrency, PoolOptions(**options))
    pool.start()
    return pool


@pytest.fixture
def pools(procs):
    """``pools(concurrency, **options)``: started pools, terminated at teardown,
    after which every child they had must be reaped."""
    made: list[PreforkPool] = []
    seen: set[int] = set()

    def build(concurrency: int = 2, **options: Any) -> PreforkPool:
        pool = make(concurrency, **options)
        made.append(pool)
        return pool

    build.seen = seen  # type: ignore[attr-defined]
    yield build
    for pool in made:
        seen.update(pool.info()["processes"])
        pool.terminate()
    for pid in seen:
        assert procs.is_reaped(pid), f"child {pid} was not reaped"


class Gates:
    def __init__(self, folder: Path, procs: Any) -> None:
        self.folder = folder
        self.procs = procs

    def job(self, job_id: str, **fields: Any) -> GateJob:
        return GateJob(job_id, str(self.folder), **fields)

    def started(self, job_id: str) -> int:
        path = self.folder / f"{job_id}.started"
        self.procs.wait_until(lambda: path.exists() and path.read_text(), f"{job_id} to start")
        return int(path.read_text())

    def release(self, job_id: str) -> None:
        (self.folder / f"{job_id}.release").touch()


@pytest.fixture
def gates(tmp_path: Path, procs) -> Gates:
    return Gates(tmp_path, procs)


def processes(pool: PreforkPool) -> list[int]:
    return list(pool.info()["processes"])


def test_record_points_at_the_pool():
    assert resolve(load_driver("pool", "prefork").pool_class) is PreforkPool
    assert PreforkPool.soft_time_limits and PreforkPool.hard_time_limits
    assert PreforkPool.resizable and not PreforkPool.inline


def test_jobs_run_in_child_processes_that_stay(pools, procs):
    pool = pools(2)
    reports = Reports()
    for i in range(6):
        pool.submit(PidJob(f"p{i}"), reports.callback(f"p{i}"))
    assert reports.wait_for(6, WAIT)
    pids = {outcome for [outcome] in reports.calls.values()}
    assert os.getpid() not in pids
    assert pids <= set(processes(pool))
    assert procs.children_of(os.getpid()) >= set(processes(pool))


def test_info_has_celerys_prefork_shape(pools, procs):
    pool = pools(3, max_tasks_per_child=5, soft_time_limit=4, time_limit=5)
    procs.wait_until(lambda: len(processes(pool)) == 3, "three children")
    info = pool.info()
    assert info["implementation"] == "celeriac_prefork.prefork:PreforkPool"
    assert info["max-concurrency"] == 3
    assert info["max-tasks-per-child"] == 5
    assert info["timeouts"] == [4, 5]
    assert info["writes"]["inqueues"]["total"] == 3
    assert all(isinstance(pid, int) for pid in info["processes"])


def test_the_hard_limit_kills_only_that_child_and_replaces_it(pools, gates, procs):
    pool = pools(2)
    reports = Reports()
    pool.submit(gates.job("sibling"), reports.callback("sibling"))
    sibling = gates.started("sibling")
    pool.submit(gates.job("runaway", time_limit=0.5), reports.callback("runaway"))
    runaway = gates.started("runaway")
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["runaway"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "time-limit"
    assert isinstance(outcome.exception, TimeLimitExceeded)
    procs.wait_until(lambda: procs.is_reaped(runaway), "the runaway's child to be reaped")
    procs.wait_until(lambda: len(processes(pool)) == 2, "a replacement child")
    assert runaway not in processes(pool)
    assert sibling in processes(pool) and not procs.is_gone(sibling)
    assert "sibling" not in reports.calls
    gates.release("sibling")
    assert reports.wait_for(2, WAIT)
    assert reports.calls["sibling"] == ["sibling"]


def test_the_soft_limit_raises_inside_the_task(pools, gates):
    pool = pools(1)
    reports = Reports()
    pool.submit(gates.job("soft", soft_time_limit=0.2, catch_soft=True), reports.callback("soft"))
    pool.submit(gates.job("uncaught", soft_time_limit=0.2), reports.callback("uncaught"))
    pool.submit(PidJob("after"), reports.callback("after"))
    assert reports.wait_for(3, WAIT)
    assert reports.calls["soft"] == ["caught"]
    [failed] = reports.calls["uncaught"]
    assert isinstance(failed, JobFailed) and isinstance(failed.exception, SoftTimeLimitExceeded)
    # The child lives on: the soft limit is the task's to handle.
    assert reports.calls["after"] == [gates.started("soft")]


def test_max_tasks_per_child_replaces_the_child(pools):
    pool = pools(1, max_tasks_per_child=2)
    reports = Reports()
    for i in range(6):
        pool.submit(PidJob(f"p{i}"), reports.callback(f"p{i}"))
    assert reports.wait_for(6, WAIT)
    pids = [reports.calls[f"p{i}"][0] for i in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert len(set(pids)) == 3


def test_max_memory_per_child_replaces_the_child(pools):
    # Every process uses more than 1 KiB: each child retires after one task.
    pool = pools(1, max_memory_per_child=1)
    reports = Reports()
    for i in range(3):
        pool.submit(PidJob(f"p{i}"), reports.callback(f"p{i}"))
    assert reports.wait_for(3, WAIT)
    assert len({reports.calls[f"p{i}"][0] for i in range(3)}) == 3


@pytest.mark.parametrize(("job", "how"), [
    (DieJob("die", signum=signal.SIGKILL), "signal 9 (SIGKILL)"),
    (DieJob("die", signum=signal.SIGSEGV), "signal 11 (SIGSEGV)"),
    (DieJob("die", code=3), "exitcode 3"),
])
def test_a_child_that_dies_gives_worker_lost_and_is_replaced(pools, procs, job, how):
    pool = pools(2)
    procs.wait_until(lambda: len(processes(pool)) == 2, "two children")
    reports = Reports()
    pool.submit(job, reports.callback("die"))
    assert reports.wait_for(1, WAIT)
    [outcome] = reports.calls["die"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "worker-lost"
    assert isinstance(outcome.exception, WorkerLostError)
    assert how in str(outcome.exception)
    procs.wait_until(lambda: len(processes(pool)) == 2, "a replacement child")
    pool.submit(PidJob("after"), reports.callback("after"))
    assert reports.wait_for(2, WAIT)


def test_terminate_job_signals_its_child_and_replaces_it(pools, gates, procs):
    pool = pools(2)
    reports = Reports()
    pool.submit(gates.job("victim"), reports.callback("victim"))
    victim = gates.started("victim")
    assert pool.terminate_job("nobody", signal.SIGTERM) is False
    assert pool.terminate_job("victim", signal.SIGTERM) is True
    [outcome] = reports.calls["victim"]
    assert isinstance(outcome, JobFailed) and outcome.reason == "terminated"
    assert isinstance(outcome.exception, TaskRevokedError)
    procs.wait_until(lambda: procs.is_reaped(victim), "the terminated child to be reaped")
    procs.wait_until(lambda: len(processes(pool)) == 2 and victim not in processes(pool),
                     "a replacement child")
    assert pool.terminate_job("victim", signal.SIGTERM) is False


def test_terminate_job_with_sigusr1_raises_soft_limit_in_the_task(pools, gates, procs):
    pool = pools(1)
    reports = Reports()
    pool.submit(gates.job("cleanup", catch_soft=True), reports.callback("cleanup"))
    child = gates.started("cleanup")
    assert pool.terminate_job("cleanup", signal.SIGUSR1) is True
    assert reports.calls["cleanup"][0].reason == "terminated"
    # The task caught SoftTimeLimitExceeded and returned; its child then left
    # by itself (no SIGKILL: it exits with 0) and was replaced.
    procs.wait_until(lambda: procs.is_reaped(child), "the child to leave")
    pool.submit(PidJob("next"), reports.callback("next"))
    assert reports.wait_for(2, WAIT)
    assert reports.calls["next"][0] != child
    assert reports.calls["cleanup"][0].reason == "terminated"


def test_terminate_job_drops_a_queued_job(pools, gates):
    pool = pools(1)
    reports = Reports()
    pool.submit(gates.job("busy"), reports.callback("busy"))
    gates.started("busy")
    pool.submit(PidJob("queued"), reports.callback("queued"))
    assert pool.terminate_job("queued", signal.SIGTERM) is True
    assert reports.calls["queued"][0].reason == "terminated"
    gates.release("busy")
    assert reports.wait_for(2, WAIT)
    assert reports.calls["queued"][0].reason == "terminated"  # reported once


def test_grow_and_shrink(pools, gates, procs):
    pool = pools(1)
    pool.grow(2)
    assert pool.concurrency == 3
    reports = Reports()
    for i in range(3):
        pool.submit(gates.job(f"g{i}"), reports.callback(f"g{i}"))
    pids = {gates.started(f"g{i}") for i in range(3)}  # three at once
    assert len(pids) == 3 and pool.active == 3
    pool.shrink(5)
    assert pool.concurrency == 1
    assert all(not procs.is_gone(pid) for pid in pids), "shrink ended a running job"
    for i in range(3):
        gates.release(f"g{i}")
    assert reports.wait_for(3, WAIT)
    assert reports.calls == {f"g{i}": [f"g{i}"] for i in range(3)}
    procs.wait_until(lambda: len(processes(pool)) == 1, "the pool to shrink to one child")
    procs.wait_until(lambda: sum(not procs.is_reaped(pid) for pid in pids) == 1,
                     "the let-go children to be reaped")
    with pytest.raises(ValueError):
        pool.grow(0)


def test_warm_stop_waits_for_the_running_job(pools, gates):
    pool = pools(1)
    reports = Reports()
    pool.submit(gates.job("running"), reports.callback("running"))
    gates.started("running")
    handed_back: list[Any] = []
    stopper = threading.Thread(target=lambda: handed_back.extend(pool.stop(WAIT)))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while a job was running"
    gates.release("running")
    stopper.join(WAIT)
    assert not stopper.is_alive() and handed_back == []
    assert reports.calls == {"running": ["running"]}


def test_cold_stop_kills_running_children_and_hands_their_jobs_back(pools, gates, procs):
    pool = pools(2)
    reports = Reports()
    running = [gates.job(f"r{i}") for i in range(2)]
    queued = gates.job("queued")
    for job in [*running, queued]:
        pool.submit(job, reports.callback(job.id))
    pids = [gates.started(job.id) for job in running]
    handed_back = pool.terminate()
    ids = [job.id for job in handed_back]
    assert sorted(ids[:2]) == ["r0", "r1"] and ids[2:] == ["queued"]
    assert all(procs.is_reaped(pid) for pid in pids)
    assert reports.calls == {}
    assert not (gates.folder / "queued.started").exists()
    with pytest.raises(RuntimeError):
        pool.submit(PidJob("late"), reports.callback("late"))


def test_unpicklable_values_reach_the_parent_as_their_repr(pools):
    pool = pools(1)
    reports = Reports()
    pool.submit(OddReturnJob("value"), reports.callback("value"))
    pool.submit(OddReturnJob("raises", raise_it=True), reports.callback("raises"))
    assert reports.wait_for(2, WAIT)
    assert reports.calls["value"] == ["<Unpicklable>"]
    [failed] = reports.calls["raises"]
    assert isinstance(failed, JobFailed) and failed.reason == "error"
    assert "NeedsTwo" in str(failed.exception) and "1/2" in str(failed.exception)


def test_only_the_fields_of_an_outcome_that_do_not_pickle_are_replaced():
    import pickle

    from celeriac.trace import Outcome

    outcome = Outcome("SUCCESS", retval=Unpicklable(), exception=NeedsTwo(1, 2), ack=False)
    kind, value, retire = pickle.loads(dump_result("ok", outcome, None))
    assert isinstance(value, Outcome)
    assert (value.state, value.retval, value.ack) == ("SUCCESS", "<Unpicklable>", False)
    assert "NeedsTwo" in str(value.exception)


def test_a_job_that_cannot_be_sent_fails_clearly(pools):
    pool = pools(1)
    reports = Reports()
    pool.submit(HoldsALock("locked"), reports.callback("locked"))
    pool.submit(PidJob("next"), reports.callback("next"))
    assert reports.wait_for(2, WAIT)
    [failed] = reports.calls["locked"]
    assert isinstance(failed, JobFailed) and failed.reason == "error"
    assert "cannot be sent to a pool child" in str(failed.exception)


def test_children_die_with_their_parent(tmp_path, procs):
    """The process holding the pool is killed with SIGKILL: no child outlives it."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent("""
        import sys, threading
        from celeriac_prefork.prefork import PreforkPool
        from celeriac.testing.contracts.pool import ValueJob

        pool = PreforkPool(2)
        pool.start()
        done = threading.Event()
        for i in range(2):
            pool.submit(ValueJob(str(i), i), lambda outcome: done.set())
        done.wait(60)
        while len(pool.info()["processes"]) < 2:
            threading.Event().wait(0.01)
        print(" ".join(map(str, pool.info()["processes"])), flush=True)
        threading.Event().wait(120)
    """))
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        line = holder.stdout.readline() if holder.stdout else b""
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2, line
    finally:
        holder.kill()
        holder.wait()
    procs.wait_until(lambda: all(procs.is_gone(pid) for pid in pids), "the children to die")
