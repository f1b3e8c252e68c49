"""The solo pool: each task runs inline, in the worker's own thread.

The worker does nothing else while a task runs, which makes this pool the
simplest to debug (a breakpoint in a task just works) and the one to use when
tasks must never run concurrently.

Time limits use ``SIGALRM`` (``setitimer``), so they work when the worker runs
in the process's main thread (``celeriac worker`` does), on systems that have
it. A signal interrupts even a blocking call such as ``time.sleep`` or a
socket read; Python then runs the handler, which raises:

* at the soft limit, :class:`~celeriac.exceptions.SoftTimeLimitExceeded` in
  the task, which may catch it and clean up;
* at the hard limit, :class:`HardTimeLimit` (a :class:`BaseException`), which
  unwinds the task; the job is reported as
  ``JobFailed("time-limit", TimeLimitExceeded(...))``.

The handler runs between Python bytecodes: a long computation inside one C
call (a C extension that does not check for signals) is interrupted only when
it returns, and a task that catches ``BaseException`` can outlive its hard
limit. Any alarm timer and ``SIGALRM`` handler set before a task are restored
after it.

The entry point ``celeriac.pools: solo`` names :data:`pool`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.plugin import PoolPlugin
from celeriac.pool import Job, JobFailed, Pool, PoolOptions

__all__ = ["HardTimeLimit", "SoloPool", "pool"]

logger = logging.getLogger(__name__)

_HAS_ALARM = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


class HardTimeLimit(BaseException):  # noqa: N818 - it is not an error of the task
    """Raised inside a task that passed its hard time limit, to unwind it. A
    :class:`BaseException`, so that ``except Exception`` in the task does not
    swallow it; the job is reported as ``JobFailed("time-limit")``."""


class SoloPool(Pool):
    """Runs each job in the thread that submits it; concurrency is always 1.

    A job whose ``run()`` is interrupted by a :class:`BaseException` that is
    not an :class:`Exception` (``KeyboardInterrupt``, ``SystemExit``) never
    finished: the exception propagates to the worker and :meth:`stop` hands
    the job back, so its message returns to the broker.
    """

    name = "solo"
    inline = True
    soft_time_limits = _HAS_ALARM
    hard_time_limits = _HAS_ALARM
    limitation = (
        "time limits use SIGALRM in the main thread: they interrupt a blocking call, but reach "
        "code running inside one C call only when it returns, and a task that catches "
        "BaseException can outlive its hard limit"
        if _HAS_ALARM else
        "this system has no SIGALRM, so the solo pool cannot enforce time limits"
    )

    def __init__(self, concurrency: int = 1, options: PoolOptions | None = None) -> None:
        super().__init__(1, options)
        self._cond = threading.Condition()
        self._current: Job | None = None
        self._current_thread: int | None = None
        self._reporting = False
        self._handed_back: Job | None = None
        self._interrupted: list[Job] = []
        self._stopped = False

    def start(self) -> None:
        """Say (through the time-limit flags) whether limits can be enforced
        here: only when jobs will run in the main thread, where the worker
        that starts this pool runs its loop."""
        if _HAS_ALARM and threading.current_thread() is not threading.main_thread():
            self.soft_time_limits = self.hard_time_limits = False
            self.limitation = ("the solo pool enforces time limits with SIGALRM, which only "
                               "the main thread receives, and this worker runs in another thread")

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Run ``job`` now and call ``on_done`` with its outcome before returning."""
        with self._cond:
            if self._stopped:
                raise RuntimeError("the solo pool is stopped and takes no more jobs")
            self._current = job
            self._current_thread = threading.get_ident()
            self._reporting = False
        try:
            try:
                with _time_limits(job):
                    outcome: Any = job.run()
            except Exception as exc:
                outcome = JobFailed("error", exc)
            except HardTimeLimit:
                limit = job.time_limit or 0.0
                outcome = JobFailed("time-limit", TimeLimitExceeded(
                    f"hard time limit ({limit:g} s) exceeded: the task was stopped"))
            except BaseException:
                with self._cond:
                    self._interrupted.append(job)
                raise
            with self._cond:
                if self._handed_back is job:
                    # stop() already gave this job back to the worker, whose
                    # message is then on its way back to the broker.
                    return
                self._reporting = True
            try:
                on_done(outcome)
            except Exception:
                logger.exception("on_done of job %s failed", getattr(job, "id", job))
        finally:
            with self._cond:
                self._current = None
                self._current_thread = None
                self._reporting = False
                self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs; wait up to ``timeout`` s for a job running in
        another thread; return the jobs that did not finish.

        Called from the thread that is running a job (a signal handler), it
        cannot wait for that job and hands it back at once.
        """
        with self._cond:
            self._stopped = True
            if self._current is not None and self._current_thread != threading.get_ident():
                self._cond.wait_for(lambda: self._current is None, timeout)
            unfinished = list(self._interrupted)
            self._interrupted.clear()
            if self._current is not None and not self._reporting:
                self._handed_back = self._current
                unfinished.insert(0, self._current)
            return unfinished

    @property
    def active(self) -> int:
        """1 while a job runs, else 0."""
        return 0 if self._current is None else 1


@contextmanager
def _time_limits(job: Job) -> Iterator[None]:
    """Arm ``SIGALRM`` for the job's limits while it runs (main thread only)."""
    soft, hard = job.soft_time_limit or None, job.time_limit or None
    if not (soft or hard) or not _HAS_ALARM or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    began = time.monotonic()
    deadlines = sorted((began + limit, kind) for kind, limit in (("soft", soft), ("hard", hard))
                       if limit)
    armed = True

    def on_alarm(signum: int, frame: Any) -> None:
        if not armed:
            return  # the job returned as the alarm rang
        now = time.monotonic()
        due = {kind for deadline, kind in deadlines if deadline <= now}
        deadlines[:] = [(deadline, kind) for deadline, kind in deadlines if deadline > now]
        if deadlines:  # the hard limit after the soft one, or an early ring
            signal.setitimer(signal.ITIMER_REAL, max(deadlines[0][0] - now, 1e-3))
        if "hard" in due:
            raise HardTimeLimit()
        if "soft" in due:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft:g} s) exceeded")

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer, _ = signal.setitimer(signal.ITIMER_REAL, deadlines[0][0] - began)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer:
            # Someone else's alarm (a test timeout...) was set: it still rings,
            # at once if it fell due while the job ran.
            left = previous_timer - (time.monotonic() - began)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


pool = PoolPlugin(
    name="solo",
    pool_class="celeriac_solo:SoloPool",
    description="Runs each task inline in the worker's own thread (concurrency 1; time limits "
                "by SIGALRM in the main thread).",
)
"""Registration record named by the ``solo`` entry point."""
