"""The solo pool: each task runs inline, in the worker's own thread.

The worker does nothing else while a task runs, which makes this pool the
simplest to debug (a breakpoint in a task just works) and the one to use when
tasks must never run concurrently.

The entry point ``celeriac.pools: solo`` names :data:`pool`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celeriac.plugin import PoolPlugin
from celeriac.pool import Job, JobFailed, Pool, PoolOptions

__all__ = ["SoloPool", "pool"]

logger = logging.getLogger(__name__)


class SoloPool(Pool):
    """Runs each job in the thread that submits it; concurrency is always 1.

    A job whose ``run()`` is interrupted by a :class:`BaseException` that is
    not an :class:`Exception` (``KeyboardInterrupt``, ``SystemExit``) never
    finished: the exception propagates to the worker and :meth:`stop` hands
    the job back, so its message returns to the broker.
    """

    name = "solo"
    inline = True
    soft_time_limits = False
    hard_time_limits = False
    limitation = (
        "the solo pool runs tasks in the worker's own thread, which cannot be "
        "interrupted safely, so time limits are not enforced"
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
                outcome: Any = job.run()
            except Exception as exc:
                outcome = JobFailed("error", exc)
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


pool = PoolPlugin(
    name="solo",
    pool_class="celeriac_solo:SoloPool",
    description="Runs each task inline in the worker's own thread (concurrency 1, no time limits).",
)
"""Registration record named by the ``solo`` entry point."""
