"""A base class for pools of green threads (gevent, eventlet, ...).

What such a pool keeps track of is the same whatever the library: a job per
green thread, at most ``concurrency`` at once, the others queued; the soft
time limit raised inside the task, the hard limit and ``terminate_job``
killing its green thread; growing and shrinking. A plugin subclasses
:class:`GreenPool` and gives it the library's primitives (:meth:`spawn`,
:meth:`spawn_later`, :meth:`kill`, :meth:`start_timeout`, :meth:`make_event`,
:meth:`is_patched`). The kernel imports no green library.

Such a pool needs the process monkey-patched before anything else is
imported: its record names the patch (:attr:`celeriac.plugin.PoolPlugin.patch`)
and the constructor refuses an unpatched process.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

from .exceptions import (
    ConfigurationError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from .pool import Job, JobFailed, Pool, PoolOptions

__all__ = ["GreenPool"]

logger = logging.getLogger("celeriac.greenpool")

# A slot's life: queued -> running -> reporting (finished, on_done running), or
# ended (time limit, terminate_job: reported by whoever ended it), or
# handed-back (stop/terminate gave the job back: never reported).
QUEUED, RUNNING, REPORTING, ENDED, HANDED_BACK = (
    "queued", "running", "reporting", "ended", "handed-back")


class _Slot:
    """A submitted job and what the pool knows about it."""

    __slots__ = ("job", "on_done", "state", "green", "expiry")

    def __init__(self, job: Job, on_done: Callable[[Any], None]) -> None:
        self.job = job
        self.on_done = on_done
        self.state = QUEUED
        self.green: Any = None
        """The green thread running the job."""
        self.expiry: Any = None
        """The green thread that ends the job at its hard time limit."""


class GreenPool(Pool):
    """Each job runs in a green thread of its own; at most ``concurrency`` at once.

    ``submit`` queues the job and returns at once. The soft time limit raises
    :class:`~celeriac.exceptions.SoftTimeLimitExceeded` inside the task; at the
    hard limit the green thread is killed (``GreenletExit`` raised in it) and
    the job reported as ``JobFailed("time-limit", TimeLimitExceeded(...))`` at
    once. :meth:`terminate_job` kills a job's green thread the same way.
    :meth:`stop` lets running jobs finish unseen; :meth:`terminate` kills them.

    All methods are called from green threads of the worker's one OS thread
    (the process is patched), never from another OS thread.
    """

    soft_time_limits = True
    hard_time_limits = True
    default_concurrency = 1000
    resizable = True

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        super().__init__(concurrency, options)
        if not self.is_patched():
            raise ConfigurationError(
                f"The {self.name} pool needs the process monkey-patched before the app, kombu "
                f"and the broker clients are imported, and this process is not. Choose the pool "
                f"where the celeriac command sees it before it loads the app: `celeriac worker "
                f"-P {self.name}`, the environment variable CELERIAC_WORKER_POOL={self.name}, or "
                f"worker_pool = \"{self.name}\" in the configuration file (not "
                f"App(worker_pool=...) or app.conf). A program that starts a worker itself calls "
                f"celeriac.patching.patch_pool(\"{self.name}\") before importing anything else.")
        self._queued: deque[_Slot] = deque()
        self._running: dict[_Slot, None] = {}  # insertion-ordered set
        self._stopping = False
        self._idle = self.make_event()
        self._idle.set()

    # -- the library's primitives ------------------------------------------------------

    @abstractmethod
    def is_patched(self) -> bool:
        """Whether the process was monkey-patched for this library."""

    @abstractmethod
    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a new green thread (soon, not now); return it."""

    @abstractmethod
    def spawn_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a new green thread after ``seconds``; return it."""

    @abstractmethod
    def kill(self, green: Any) -> None:
        """Raise ``GreenletExit`` in ``green`` (or keep it from starting);
        may yield, must not wait for it to end."""

    @abstractmethod
    def start_timeout(self, seconds: float, exc: BaseException) -> Callable[[], None]:
        """Raise ``exc`` in the *current* green thread after ``seconds``, where
        it waits; return the function that cancels it."""

    @abstractmethod
    def make_event(self) -> Any:
        """A cooperative event: ``set()``, ``clear()``, ``wait(timeout)``."""

    # -- taking jobs -------------------------------------------------------------------

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Queue ``job`` for a green thread and return at once."""
        if self._stopping:
            raise RuntimeError(f"the {self.name} pool is stopped and takes no more jobs")
        self._queued.append(_Slot(job, on_done))
        self._fill()

    def _fill(self) -> None:
        while self._queued and len(self._running) < self.concurrency:
            slot = self._queued.popleft()
            slot.state = RUNNING
            self._running[slot] = None
            self._idle.clear()
            slot.green = self.spawn(self._run, slot)

    def _run(self, slot: _Slot) -> None:
        try:
            outcome = self._call(slot)
            if slot.state == RUNNING:
                slot.state = REPORTING
                self._report(slot, outcome)
        finally:
            if slot.state != ENDED:  # whoever ended the job releases its slot
                self._release(slot)

    def _call(self, slot: _Slot) -> Any:
        job = slot.job
        if job.time_limit:
            slot.expiry = self.spawn_later(job.time_limit, self._expire, slot)
        cancel_soft = None
        try:
            if job.soft_time_limit:
                cancel_soft = self.start_timeout(job.soft_time_limit, SoftTimeLimitExceeded(
                    f"soft time limit ({job.soft_time_limit:g} s) exceeded"))
            return job.run()
        except BaseException as exc:
            # Includes GreenletExit when the job was ended: its state says so
            # and this outcome is dropped.
            return JobFailed("error", exc)
        finally:
            if cancel_soft is not None:
                cancel_soft()
            if slot.expiry is not None:
                self.kill(slot.expiry)
                slot.expiry = None

    def _report(self, slot: _Slot, outcome: Any) -> None:
        try:
            slot.on_done(outcome)
        except Exception:
            logger.exception("on_done of job %s failed", getattr(slot.job, "id", slot.job))

    def _release(self, slot: _Slot) -> None:
        self._running.pop(slot, None)
        if not self._running:
            self._idle.set()
        if not self._stopping:
            self._fill()

    # -- ending jobs -------------------------------------------------------------------

    def _expire(self, slot: _Slot) -> None:
        slot.expiry = None  # this green thread must not be killed by the job it ends
        limit = slot.job.time_limit or 0.0
        self._end(slot, JobFailed("time-limit", TimeLimitExceeded(
            f"hard time limit ({limit:g} s) exceeded: the task was stopped")))

    def _end(self, slot: _Slot, failed: JobFailed) -> bool:
        """Kill the job's green thread and report ``failed`` for it, now."""
        if slot.state == QUEUED:
            self._queued.remove(slot)
        elif slot.state != RUNNING:
            return False
        was_running = slot.state == RUNNING
        slot.state = ENDED
        if slot.green is not None:
            self.kill(slot.green)
        self._report(slot, failed)
        if was_running:
            self._release(slot)
        return True

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """Kill the green thread of ``job_id`` (queued or running); report it as
        ``JobFailed("terminated")``. ``signum`` is not used."""
        for slot in [*self._running, *self._queued]:
            if slot.job.id == job_id and slot.state in (QUEUED, RUNNING):
                return self._end(slot, JobFailed("terminated", TaskRevokedError("terminated")))
        return False

    # -- size --------------------------------------------------------------------------

    def grow(self, n: int = 1) -> None:
        """Run up to ``n`` more jobs at once."""
        self.concurrency += max(0, int(n))
        if not self._stopping:
            self._fill()

    def shrink(self, n: int = 1) -> None:
        """Run up to ``n`` fewer jobs at once (never fewer than 1); running jobs finish."""
        self.concurrency = max(1, self.concurrency - max(0, int(n)))

    # -- stopping ----------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs, drop the queued ones, wait up to ``timeout`` s for
        the running ones; return the running jobs that did not finish (they
        go on, unreported), then the queued jobs that never started."""
        self._stopping = True
        queued = list(self._queued)
        self._queued.clear()
        for slot in queued:
            slot.state = HANDED_BACK
        if self._running:
            self._idle.wait(None if timeout is None else max(0.0, timeout))
        # A job whose on_done is running has finished; giving it back too
        # would both requeue and acknowledge its message.
        unfinished = [slot for slot in self._running if slot.state == RUNNING]
        for slot in unfinished:
            slot.state = HANDED_BACK
        return [slot.job for slot in unfinished] + [slot.job for slot in queued]

    def terminate(self) -> list[Job]:
        """Stop at once and kill the green threads of the jobs handed back."""
        unfinished = self.stop(0)
        for slot in list(self._running):
            if slot.state == HANDED_BACK and slot.green is not None:
                self.kill(slot.green)
        return unfinished

    @property
    def active(self) -> int:
        """How many green threads are running jobs now."""
        return len(self._running)

    def info(self) -> dict[str, Any]:
        """Adds the number of running and queued jobs to :meth:`Pool.info`."""
        info = super().info()
        info.update({"running": len(self._running), "queued": len(self._queued)})
        return info
