"""The threads pool: tasks run in a fixed set of daemon threads.

Good for I/O-bound tasks and the embedded default. Threads share the worker's
process, so there is no pickling and no start-up cost, but CPU-bound tasks
contend for the GIL.

The entry point ``celeriac.pools: threads`` names :data:`pool`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from celeriac.plugin import PoolPlugin
from celeriac.pool import Job, JobFailed, Pool, PoolOptions

__all__ = ["ThreadPool", "pool"]

logger = logging.getLogger(__name__)


class _Slot:
    """A submitted job and what the pool knows about it."""

    __slots__ = ("job", "on_done", "reporting", "handed_back")

    def __init__(self, job: Job, on_done: Callable[[Any], None]) -> None:
        self.job = job
        self.on_done = on_done
        self.reporting = False
        self.handed_back = False


class ThreadPool(Pool):
    """``concurrency`` daemon threads (``celeriac-pool-1`` ...) taking jobs
    from one queue.

    ``submit`` only appends to the queue, so it never blocks. A job handed
    back by :meth:`stop` or :meth:`terminate` gets no ``on_done`` call, even
    if it finishes later: its message is already on its way back to the
    broker.
    """

    name = "threads"
    soft_time_limits = False
    hard_time_limits = False
    limitation = (
        "the threads pool cannot interrupt a running task (Python threads cannot "
        "be stopped from outside), so time limits are not enforced"
    )

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        super().__init__(concurrency, options)
        self._cond = threading.Condition()
        self._pending: deque[_Slot] = deque()
        self._running: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        """Start the threads (idempotent)."""
        with self._cond:
            if self._threads or self._stopping:
                return
            for n in range(1, self.concurrency + 1):
                thread = threading.Thread(target=self._work, name=f"celeriac-pool-{n}", daemon=True)
                self._threads.append(thread)
            for thread in self._threads:
                thread.start()

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Queue ``job`` for the next free thread and return at once."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the threads pool is stopped and takes no more jobs")
            self._pending.append(_Slot(job, on_done))
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                slot = self._pending.popleft()
                self._running.append(slot)
            try:
                outcome: Any = slot.job.run()
            except BaseException as exc:
                # Even SystemExit raised by a task must not end the thread:
                # the pool would silently lose a slot and the job's report.
                outcome = JobFailed("error", exc)
            with self._cond:
                report = not slot.handed_back
                slot.reporting = report
            try:
                if report:
                    slot.on_done(outcome)
            except Exception:
                logger.exception("on_done of job %s failed", getattr(slot.job, "id", slot.job))
            finally:
                # The job counts as running until on_done returned, so that
                # stop() never returns while a report is still on its way.
                with self._cond:
                    self._running.remove(slot)
                    self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs, drop the queued ones, wait up to ``timeout`` s
        for the running ones; return the running jobs that did not finish,
        then the queued jobs that never started."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._stopping = True
            queued = list(self._pending)
            self._pending.clear()
            for slot in queued:
                slot.handed_back = True
            self._cond.notify_all()
            while self._running:
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            # A job whose on_done is already running has finished; giving it
            # back too would both requeue and acknowledge its message.
            unfinished = [slot for slot in self._running if not slot.reporting]
            for slot in unfinished:
                slot.handed_back = True
        return [slot.job for slot in unfinished] + [slot.job for slot in queued]

    def terminate(self) -> list[Job]:
        """Give up at once; the threads of running jobs finish on their own."""
        return self.stop(0)

    @property
    def active(self) -> int:
        """How many jobs are running now."""
        with self._cond:
            return len(self._running)

    def info(self) -> dict[str, Any]:
        """Adds the names of the pool's threads to :meth:`Pool.info`."""
        info = super().info()
        info["threads"] = [thread.name for thread in self._threads]
        return info


pool = PoolPlugin(
    name="threads",
    pool_class="celeriac_threads:ThreadPool",
    description="Runs tasks in a fixed set of threads (good for I/O-bound tasks; no time limits).",
)
"""Registration record named by the ``threads`` entry point."""
