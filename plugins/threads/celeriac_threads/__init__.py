"""The threads pool: tasks run in a fixed set of daemon threads.

Good for I/O-bound tasks and the embedded default. Threads share the worker's
process, so there is no pickling and no start-up cost, but CPU-bound tasks
contend for the GIL.

Time limits, as far as Python threads allow (they cannot be stopped from
outside): a watchdog thread raises an exception *in* the task's thread with
``PyThreadState_SetAsyncExc``. It lands between two Python bytecodes, so a
task blocked in a C call (``time.sleep``, a socket read, waiting on a lock,
a C extension) sees it only when that call returns.

* soft limit: :class:`~celeriac.exceptions.SoftTimeLimitExceeded` is raised
  in the task, which may catch it and clean up;
* hard limit: the job is reported failed at once
  (``JobFailed("time-limit", TimeLimitExceeded(...))``), :class:`HardTimeLimit`
  is raised in its thread to unwind it, and the thread is abandoned: a new
  thread takes its place, and whatever the old one does later is dropped.

The entry point ``celeriac.pools: threads`` names :data:`pool`.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from celeriac.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celeriac.plugin import PoolPlugin
from celeriac.pool import Job, JobFailed, Pool, PoolOptions

__all__ = ["HardTimeLimit", "ThreadPool", "pool"]

logger = logging.getLogger(__name__)

# A slot's life: queued -> running -> reporting (finished, on_done running), or
# ended (hard time limit or terminate_job: reported by the watchdog, thread
# abandoned), or handed-back (stop/terminate gave the job back: never reported).
QUEUED, RUNNING, REPORTING, ENDED, HANDED_BACK = (
    "queued", "running", "reporting", "ended", "handed-back")
SOFT, HARD = "soft", "hard"


class HardTimeLimit(BaseException):  # noqa: N818 - it is not an error of the task
    """Raised inside a task whose thread was abandoned (hard time limit,
    ``revoke(terminate=True)``), to unwind it. A :class:`BaseException`, so
    that ``except Exception`` in the task does not swallow it. The job was
    already reported; nothing the thread does afterwards is."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next bytecode
    (``None``: forget one that is pending)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None)


class _Slot:
    """A submitted job and what the pool knows about it."""

    __slots__ = ("job", "on_done", "state", "thread_id")

    def __init__(self, job: Job, on_done: Callable[[Any], None]) -> None:
        self.job = job
        self.on_done = on_done
        self.state = QUEUED
        self.thread_id: int | None = None


class ThreadPool(Pool):
    """``concurrency`` daemon threads (``celeriac-pool-1`` ...) taking jobs
    from one queue.

    ``submit`` only appends to the queue, so it never blocks. A job handed
    back by :meth:`stop` or :meth:`terminate` gets no ``on_done`` call, even
    if it finishes later: its message is already on its way back to the
    broker. A thread abandoned at a hard time limit or by
    :meth:`terminate_job` is replaced at once.
    """

    name = "threads"
    soft_time_limits = True
    hard_time_limits = True
    limitation = (
        "time limits reach a task between two Python bytecodes: a task blocked in a C call "
        "(time.sleep, a socket read, a lock, a C extension) gets SoftTimeLimitExceeded only "
        "when that call returns; at the hard limit the task is reported failed at once and its "
        "thread is replaced, but the old thread runs on until it gets back to Python code"
    )

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        super().__init__(concurrency, options)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._timer_cond = threading.Condition(self._lock)
        self._pending: deque[_Slot] = deque()
        self._running: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count(1)
        self._timers: list[tuple[float, int, str, _Slot]] = []
        self._sequence = itertools.count()
        self._watchdog: threading.Thread | None = None
        self._started = False
        self._stopping = False

    def start(self) -> None:
        """Start the threads (idempotent)."""
        with self._lock:
            if self._started or self._stopping:
                return
            self._started = True
            for _ in range(self.concurrency):
                self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"celeriac-pool-{next(self._numbers)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Queue ``job`` for the next free thread and return at once."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the threads pool is stopped and takes no more jobs")
            self._pending.append(_Slot(job, on_done))
            self._cond.notify()

    # -- running a job -----------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                slot = self._take()
                if slot is None or not self._run(slot):
                    return
        except HardTimeLimit:
            return  # ended by terminate_job before its job began: already replaced

    def _take(self) -> _Slot | None:
        with self._lock:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            slot = self._pending.popleft()
            slot.state = RUNNING
            slot.thread_id = threading.get_ident()
            self._running.append(slot)
            return slot

    def _run(self, slot: _Slot) -> bool:
        """Run the job, then report it unless it was handed back or ended;
        False when this thread was abandoned and must end.

        Once the limits are armed, their exceptions may land on any bytecode
        of this thread. Those landing outside the job are too late (or too
        early) to matter: they are caught here and the step is retried, and
        one still pending is cleared once the state is taken (after which the
        watchdog raises nothing more for this job).
        """
        outcome: Any = None
        armed = ran = False
        state: str | None = None
        while True:
            try:
                if not armed:
                    armed = True
                    self._arm(slot)
                if not ran and slot.state == RUNNING:
                    ran = True
                    try:
                        outcome = slot.job.run()
                    except BaseException as exc:
                        # Even SystemExit raised by a task must not end the thread:
                        # the pool would silently lose a slot and the job's report.
                        outcome = JobFailed("error", exc)
                if state is None:
                    with self._lock:
                        state = slot.state
                        if state == RUNNING:
                            slot.state = REPORTING
                _raise_in_thread(threading.get_ident(), None)
                break
            except (SoftTimeLimitExceeded, HardTimeLimit):
                continue
        if state == ENDED:
            return False
        try:
            if state == RUNNING:
                slot.on_done(outcome)
        except Exception:
            logger.exception("on_done of job %s failed", getattr(slot.job, "id", slot.job))
        finally:
            # The job counts as running until on_done returned, so that
            # stop() never returns while a report is still on its way.
            self._forget(slot)
        return True

    def _forget(self, slot: _Slot) -> None:
        with self._lock:
            self._running.remove(slot)
            self._cond.notify_all()

    # -- time limits and ending jobs ---------------------------------------------------

    def _arm(self, slot: _Slot) -> None:
        """Give the watchdog ``slot``'s time limits, counted from now."""
        limits = [(kind, limit) for kind, limit in
                  ((SOFT, slot.job.soft_time_limit), (HARD, slot.job.time_limit)) if limit]
        if not limits:
            return
        with self._lock:
            if len(self._timers) > 4 * len(self._running) + 64:
                # Limits of finished jobs stay in the heap until due: drop them.
                self._timers = [timer for timer in self._timers if timer[3].state == RUNNING]
                heapq.heapify(self._timers)
            now = time.monotonic()
            for kind, limit in limits:
                heapq.heappush(self._timers, (now + limit, next(self._sequence), kind, slot))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch,
                                                  name="celeriac-pool-watchdog", daemon=True)
                self._watchdog.start()
            self._timer_cond.notify()

    def _watch(self) -> None:
        while True:
            with self._lock:
                ended = self._expire_due()
                if not ended:
                    if self._stopping and not any(s.state == RUNNING for s in self._running):
                        self._watchdog = None
                        return
                    wait = self._timers[0][0] - time.monotonic() if self._timers else None
                    self._timer_cond.wait(wait)
                    continue
            for slot, failed in ended:
                self._report_ended(slot, failed)

    def _expire_due(self) -> list[tuple[_Slot, JobFailed]]:
        """Act on the limits that are due (holding the lock); return the jobs
        ended at their hard limit, to report."""
        ended = []
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, slot = heapq.heappop(self._timers)
            if slot.state != RUNNING or slot.thread_id is None:
                continue
            if kind == SOFT:
                _raise_in_thread(slot.thread_id, SoftTimeLimitExceeded)
                continue
            limit = slot.job.time_limit or 0.0
            self._abandon(slot)
            ended.append((slot, JobFailed("time-limit", TimeLimitExceeded(
                f"hard time limit ({limit:g} s) exceeded: the task was stopped"))))
        return ended

    def _abandon(self, slot: _Slot) -> None:
        """End ``slot`` and replace its thread (holding the lock)."""
        slot.state = ENDED
        assert slot.thread_id is not None
        _raise_in_thread(slot.thread_id, HardTimeLimit)
        self._threads = [t for t in self._threads if t.ident != slot.thread_id]
        if not self._stopping:
            self._add_thread()

    def _report_ended(self, slot: _Slot, failed: JobFailed) -> None:
        try:
            slot.on_done(failed)
        except Exception:
            logger.exception("on_done of job %s failed", getattr(slot.job, "id", slot.job))
        finally:
            self._forget(slot)

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """Abandon the thread running ``job_id`` as at a hard time limit (with
        the same limits: a thread in a C call runs on until it returns) and
        report ``JobFailed("terminated")``. ``signum`` is not used."""
        with self._lock:
            found = [s for s in self._running if s.job.id == job_id and s.state == RUNNING]
            if not found:
                return False
            self._abandon(found[0])
        self._report_ended(found[0], JobFailed("terminated", TaskRevokedError("terminated")))
        return True

    # -- stopping ----------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs, drop the queued ones, wait up to ``timeout`` s
        for the running ones; return the running jobs that did not finish,
        then the queued jobs that never started."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._stopping = True
            queued = list(self._pending)
            self._pending.clear()
            for slot in queued:
                slot.state = HANDED_BACK
            self._cond.notify_all()
            self._timer_cond.notify_all()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._cond.wait_for(lambda: not self._running, left)
            # A job whose on_done is already running has finished; giving it
            # back too would both requeue and acknowledge its message.
            unfinished = [slot for slot in self._running if slot.state == RUNNING]
            for slot in unfinished:
                slot.state = HANDED_BACK
            self._timer_cond.notify_all()
        return [slot.job for slot in unfinished] + [slot.job for slot in queued]

    def terminate(self) -> list[Job]:
        """Give up at once; the threads of running jobs finish on their own."""
        return self.stop(0)

    @property
    def active(self) -> int:
        """How many jobs are running now."""
        with self._lock:
            return len(self._running)

    def info(self) -> dict[str, Any]:
        """Adds the names of the pool's threads to :meth:`Pool.info`."""
        info = super().info()
        with self._lock:
            info["threads"] = [thread.name for thread in self._threads]
        return info


pool = PoolPlugin(
    name="threads",
    pool_class="celeriac_threads:ThreadPool",
    description="Runs tasks in a fixed set of threads (good for I/O-bound tasks; time limits "
                "take effect between Python bytecodes).",
)
"""Registration record named by the ``threads`` entry point."""
