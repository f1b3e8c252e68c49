"""The asyncio pool: one event loop for ``async def`` tasks, threads for ``def`` tasks.

How a job runs:

* An ``async def`` task (``job.is_async``) becomes an asyncio task on the
  pool's loop, which runs in its own thread (``celeriac-asyncio-loop``); the
  job awaits the task's coroutine there (``job.run_async``) and does its
  blocking work (storing results, sending callbacks, hooks) in the loop's
  default executor (``io_threads`` threads), so thousands of coroutines wait
  at once without waiting for each other's I/O.
* A plain ``def`` task runs ``job.run()`` in one of ``threads`` threads
  (``celeriac-asyncio-def``) beside the loop.

At most ``concurrency`` jobs of either kind run at once; the rest wait in
submission order.

Time limits (``async def`` tasks only; a ``def`` task cannot be interrupted,
and a warning says so once per task name):

* Soft: :class:`~celeriac.exceptions.SoftTimeLimitExceeded` is raised inside
  the task's coroutine at the ``await`` where it is suspended (the pool
  cancels the asyncio task and turns the cancellation into that exception,
  then uncancels the task, so ``asyncio.timeout`` and task groups inside it
  keep working). Tasks the coroutine started and awaits (``gather``,
  ``wait_for``...) are cancelled as asyncio cancels them. The task may catch
  the exception and finish; uncaught, the task fails with it.
* Hard: the asyncio task is cancelled (the coroutine sees ``CancelledError``
  where it awaits) and the job is reported at once as
  ``JobFailed("time-limit", TimeLimitExceeded(limit))``; nothing the
  coroutine does afterwards is stored.
* Both count from the moment the coroutine starts, and fire only when the
  loop gets control back: a coroutine that blocks the loop is interrupted
  only when it awaits again (the watchdog reports such blocking).

``terminate_job`` cancels the coroutine the same way (``JobFailed("terminated")``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celeriac.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celeriac.pool import Job, JobFailed, Pool, PoolOptions

from . import section_settings

__all__ = ["AsyncioPool"]

logger = logging.getLogger(__name__)

#: How long a stopping pool lets cancelled coroutines unwind before it closes the loop.
CLOSE_GRACE = 2.0
#: A cancelled coroutine still running after this many seconds is reported as ignoring it.
CANCEL_GRACE = 5.0

_QUEUED, _RUNNING, _REPORTING, _DONE = "queued", "running", "reporting", "done"


class _Interruptible:
    """Awaits a coroutine while passing each of its suspensions through to the
    asyncio task that awaits this, so that an exception can be raised inside
    the coroutine at the ``await`` where it is suspended.

    :meth:`interrupt` arms the exception; the caller then cancels the task.
    The ``CancelledError`` that reaches this driver is replaced by the armed
    exception (and the task uncancelled). Any other cancellation passes
    through unchanged.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._coroutine = coroutine
        self._armed: BaseException | None = None

    def interrupt(self, exc: BaseException) -> None:
        self._armed = exc

    def disarm(self) -> None:
        self._armed = None

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._coroutine.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                suspension = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = yield suspension
            except GeneratorExit:
                steps.close()
                raise
            except asyncio.CancelledError as cancelled:
                error, self._armed = (self._armed or cancelled), None
                if error is not cancelled:
                    task = asyncio.current_task()
                    uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                    if uncancel is not None:
                        uncancel()
            except BaseException as exc:  # thrown in by the awaiting task: pass it on
                error = exc


class _Slot:
    """A submitted job and what the pool knows about it."""

    __slots__ = ("job", "on_done", "is_async", "state", "handed_back", "task", "driver",
                 "in_call", "ended")

    def __init__(self, job: Job, on_done: Callable[[Any], None]) -> None:
        self.job = job
        self.on_done = on_done
        self.is_async = bool(getattr(job, "is_async", False))
        self.state = _QUEUED
        self.handed_back = False
        self.task: asyncio.Task[Any] | None = None
        self.driver: _Interruptible | None = None
        self.in_call = False
        """The task's own coroutine is running (the only time limits apply)."""
        self.ended: str | None = None
        """Why the pool ended the job (``time-limit``, ``terminated``), once it has."""

    @property
    def label(self) -> str:
        return f"{getattr(self.job, 'name', 'job')}[{self.job.id}]"


class AsyncioPool(Pool):
    """An event loop for ``async def`` tasks and threads for ``def`` tasks;
    settings from the ``[asyncio]`` section (see :class:`celeriac_asyncio.AsyncioSettings`).

    ``submit`` only queues, so it never blocks. A job handed back by
    :meth:`stop` or :meth:`terminate` gets no ``on_done`` call: its coroutine
    is cancelled, and a ``def`` task still running finishes unseen.
    """

    name = "asyncio"
    soft_time_limits = True
    hard_time_limits = True
    limitation = (
        "time limits and terminate apply to async def tasks only (by cancelling the "
        "coroutine where it awaits); plain def tasks run in threads, which cannot be "
        "interrupted"
    )
    default_concurrency = 1000
    resizable = True

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        super().__init__(concurrency, options)
        self.settings = section_settings(self.options.settings)
        self._cond = threading.Condition()
        self._waiting: deque[_Slot] = deque()
        """Jobs over the concurrency, in submission order."""
        self._running: list[_Slot] = []
        """Jobs handed to the loop or the threads (started or about to)."""
        self._inbox: list[_Slot] = []
        """Async jobs on their way to the loop, which takes them in one batch."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._io: ThreadPoolExecutor | None = None
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._last_beat = time.monotonic()
        self._stopping = False
        self._closed = False
        self._warned_def_limits: set[str] = set()

    # -- start ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread, the threads and the watchdog (idempotent)."""
        with self._cond:
            if self._loop is not None or self._stopping:
                return
            loop = asyncio.new_event_loop()
            self._io = ThreadPoolExecutor(self.settings.io_threads,
                                          thread_name_prefix="celeriac-asyncio-io")
            loop.set_default_executor(self._io)
            self._threads = ThreadPoolExecutor(self.settings.threads,
                                               thread_name_prefix="celeriac-asyncio-def")
            ready = threading.Event()
            self._loop_thread = threading.Thread(target=self._run_loop, args=(loop, ready),
                                                 name="celeriac-asyncio-loop", daemon=True)
            self._loop = loop
            self._loop_thread.start()
        ready.wait()
        with self._cond:
            self._fill()
        if self.settings.block_warning > 0:
            self._watchdog = threading.Thread(target=self._watch, name="celeriac-asyncio-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _run_loop(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        if self.settings.block_warning > 0:
            loop.call_soon(self._beat)
        try:
            loop.run_forever()
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=CLOSE_GRACE))
                for task in stuck:
                    logger.warning("%s ignored cancellation when the pool stopped; abandoned",
                                   task.get_name())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    # -- submitting ----------------------------------------------------------------

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Hand ``job`` to the loop or the threads, or queue it while
        ``concurrency`` jobs run (or until :meth:`start`); returns at once."""
        slot = _Slot(job, on_done)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the asyncio pool is stopped and takes no more jobs")
            self._waiting.append(slot)
            if self._loop is not None:
                self._fill()

    def _launch(self, slot: _Slot) -> None:
        """Hand ``slot`` over (the caller holds the lock)."""
        assert self._loop is not None and self._threads is not None
        self._running.append(slot)
        if slot.is_async:
            # One wake-up of the loop per batch, not per job: a burst of
            # submissions then costs the loop one callback.
            if not self._inbox:
                self._loop.call_soon_threadsafe(self._spawn)
            self._inbox.append(slot)
            return
        job = slot.job
        if job.time_limit is not None or job.soft_time_limit is not None:
            self._warn_def_limits(slot)
        self._threads.submit(self._run_def, slot)

    def _fill(self) -> None:
        """Launch waiting jobs while there is room (the caller holds the lock)."""
        if self._loop is None or self._stopping:
            return
        while self._waiting and len(self._running) < self.concurrency:
            self._launch(self._waiting.popleft())

    def _warn_def_limits(self, slot: _Slot) -> None:
        name = getattr(slot.job, "name", slot.job.id)
        if name not in self._warned_def_limits:
            self._warned_def_limits.add(name)
            logger.warning("task %s is a plain def task with a time limit: the asyncio pool runs "
                           "it in a thread and cannot interrupt it, so its limits are not "
                           "enforced (make it async def, or use the prefork pool)", name)

    # -- running -------------------------------------------------------------------

    def _run_def(self, slot: _Slot) -> None:
        with self._cond:
            if slot.handed_back:
                return
            slot.state = _RUNNING
        try:
            outcome: Any = slot.job.run()
        except BaseException as exc:
            # Even SystemExit raised by a task must not end the thread:
            # the pool would silently lose a slot and the job's report.
            outcome = JobFailed("error", exc)
        self._finish(slot, outcome)

    def _spawn(self) -> None:
        """Make an asyncio task of each job in the inbox (on the loop)."""
        with self._cond:
            slots, self._inbox = self._inbox, []
        loop = asyncio.get_running_loop()
        for slot in slots:
            if not slot.handed_back:
                slot.task = loop.create_task(self._run_async(slot), name=slot.label)

    async def _run_async(self, slot: _Slot) -> None:
        with self._cond:
            if slot.handed_back:
                return
            slot.state = _RUNNING
        run_async = slot.job.run_async  # type: ignore[attr-defined]
        try:
            outcome: Any = await run_async(functools.partial(self._guard, slot))
        except asyncio.CancelledError as exc:
            if slot.ended is not None or slot.handed_back:
                return  # reported when it was ended; or given back by stop()
            outcome = JobFailed("error", exc)  # the task's own code raised CancelledError
        except BaseException as exc:
            outcome = JobFailed("error", exc)
        self._finish(slot, outcome)

    async def _guard(self, slot: _Slot, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Await the task's coroutine under its time limits (see the module docstring)."""
        if slot.ended is not None or slot.handed_back:  # ended before its coroutine began
            coroutine.close()
            raise asyncio.CancelledError
        assert self._loop is not None
        job = slot.job
        slot.driver = _Interruptible(coroutine)
        timers = []
        if job.soft_time_limit is not None and (job.time_limit is None
                                                or job.soft_time_limit < job.time_limit):
            timers.append(self._loop.call_later(job.soft_time_limit, self._soft_limit, slot))
        if job.time_limit is not None:
            timers.append(self._loop.call_later(job.time_limit, self._hard_limit, slot))
        slot.in_call = True
        try:
            result = await slot.driver
        except BaseException:
            if slot.ended is not None:
                raise asyncio.CancelledError from None
            raise
        finally:
            slot.in_call = False
            for timer in timers:
                timer.cancel()
        if slot.ended is not None:  # it caught the cancellation and returned: not stored
            raise asyncio.CancelledError
        return result

    def _soft_limit(self, slot: _Slot) -> None:
        if not slot.in_call or slot.ended is not None or slot.task is None or slot.driver is None:
            return
        limit = slot.job.soft_time_limit
        logger.warning("task %s passed its soft time limit (%s s): SoftTimeLimitExceeded is "
                       "raised where it awaits", slot.label, limit)
        slot.driver.interrupt(SoftTimeLimitExceeded(f"soft time limit ({limit} s) exceeded"))
        slot.task.cancel()

    def _hard_limit(self, slot: _Slot) -> None:
        if not slot.in_call or slot.ended is not None:
            return
        limit = slot.job.time_limit
        logger.error("task %s passed its hard time limit (%s s): cancelled", slot.label, limit)
        self._end(slot, JobFailed("time-limit", TimeLimitExceeded(limit)))

    def _end(self, slot: _Slot, failed: JobFailed) -> None:
        """Cancel the job's coroutine and report it now (on the loop thread)."""
        slot.ended = failed.reason
        if slot.driver is not None:
            slot.driver.disarm()  # a pending soft limit gives way to this
        if slot.task is not None and slot.in_call:
            slot.task.cancel()
            assert self._loop is not None
            self._loop.call_later(CANCEL_GRACE, self._check_ended, slot)
        self._finish(slot, failed)

    def _check_ended(self, slot: _Slot) -> None:
        if slot.task is not None and not slot.task.done():
            logger.warning("task %s still runs %s s after it was cancelled (%s): it ignores "
                           "cancellation, so it goes on unseen", slot.label, CANCEL_GRACE,
                           slot.ended)

    def _finish(self, slot: _Slot, outcome: Any) -> None:
        with self._cond:
            if slot.state in (_REPORTING, _DONE) or slot.handed_back:
                return
            slot.state = _REPORTING
        try:
            slot.on_done(outcome)
        except Exception:
            logger.exception("on_done of job %s failed", slot.label)
        finally:
            # The job counts as running until on_done returned, so that
            # stop() never returns while a report is still on its way.
            with self._cond:
                slot.state = _DONE
                self._running.remove(slot)
                self._fill()
                self._cond.notify_all()

    # -- ending one job ------------------------------------------------------------

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """Cancel the coroutine of the running ``async def`` job ``job_id``
        (``signum`` is not used: a coroutine is cancelled, not signalled).

        False when no such job runs here, when it is a ``def`` task (a thread
        cannot be interrupted), or when its coroutine already returned and
        only its result is being stored.
        """
        with self._cond:
            slot = next((s for s in self._running if s.job.id == job_id), None)
            loop = self._loop
        if slot is None or not slot.is_async or loop is None or self._stopping:
            return False
        if threading.current_thread() is self._loop_thread:
            return self._terminate(slot)
        answer = asyncio.run_coroutine_threadsafe(self._terminate_on_loop(slot), loop)
        try:
            return bool(answer.result(CLOSE_GRACE))
        except concurrent.futures.TimeoutError:
            answer.cancel()  # so that it does not happen later, after we said it did not
            logger.warning("could not terminate %s: the event loop did not answer within %s s "
                           "(a task is blocking it)", slot.label, CLOSE_GRACE)
            return False

    async def _terminate_on_loop(self, slot: _Slot) -> bool:
        return self._terminate(slot)

    def _terminate(self, slot: _Slot) -> bool:
        if slot.state != _RUNNING or slot.ended is not None or slot.handed_back:
            return False
        if slot.driver is not None and not slot.in_call:
            return False  # the coroutine returned; its result is being stored
        logger.warning("terminating task %s: its coroutine is cancelled", slot.label)
        self._end(slot, JobFailed("terminated", TaskRevokedError("terminated")))
        return True

    # -- stopping ------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs and give back the waiting ones; wait up to
        ``timeout`` s for the running ones; cancel the coroutines still
        running, close the loop, and return the running jobs that did not
        finish, then the waiting ones that never started."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            if self._closed:
                return []
            self._stopping = True
            queued = list(self._waiting) + [s for s in self._running if s.state == _QUEUED]
            self._waiting.clear()
            for slot in queued:
                slot.handed_back = True
                if slot in self._running:
                    self._running.remove(slot)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._cond.wait_for(lambda: not self._running, left)
            # A job whose on_done is already running has finished; giving it
            # back too would both requeue and acknowledge its message.
            unfinished = [slot for slot in self._running if slot.state == _RUNNING]
            for slot in unfinished:
                slot.handed_back = True
                self._running.remove(slot)
            self._closed = True
        self._close()
        return [slot.job for slot in unfinished] + [slot.job for slot in queued]

    def terminate(self) -> list[Job]:
        """Give up at once: coroutines are cancelled, ``def`` tasks finish unseen."""
        return self.stop(0)

    def _close(self) -> None:
        self._watchdog_stop.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # closed meanwhile
                pass
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(CLOSE_GRACE + 1)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._io is not None:
            self._io.shutdown(wait=False)

    # -- size and state ------------------------------------------------------------

    def grow(self, n: int = 1) -> None:
        """Let ``n`` more jobs run at once."""
        with self._cond:
            self.concurrency += max(0, int(n))
            self._fill()

    def shrink(self, n: int = 1) -> None:
        """Let ``n`` fewer jobs run at once (never fewer than 1); running ones finish."""
        with self._cond:
            self.concurrency = max(1, self.concurrency - max(0, int(n)))

    @property
    def active(self) -> int:
        """How many jobs run now (on the loop or in the threads)."""
        with self._cond:
            return len(self._running)

    def info(self) -> dict[str, Any]:
        """Adds the thread counts and the watchdog's threshold to :meth:`Pool.info`."""
        info = super().info()
        info.update({"threads": self.settings.threads, "io-threads": self.settings.io_threads,
                     "block-warning": self.settings.block_warning})
        return info

    # -- the watchdog --------------------------------------------------------------

    def _beat_interval(self) -> float:
        return min(1.0, max(0.02, self.settings.block_warning / 4))

    def _beat(self) -> None:
        """Runs on the loop: proves it is not stuck."""
        self._last_beat = time.monotonic()
        assert self._loop is not None
        self._loop.call_later(self._beat_interval(), self._beat)

    def _watch(self) -> None:
        """Warn once per stall when the loop has not beaten for ``block_warning`` s."""
        limit = self.settings.block_warning
        warned = False
        while not self._watchdog_stop.wait(self._beat_interval()):
            stalled = time.monotonic() - self._last_beat
            if stalled <= limit:
                warned = False
            elif not warned:
                warned = True
                self._report_block(stalled)

    def _report_block(self, stalled: float) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None or thread.ident is None:
            return
        task = asyncio.current_task(loop)
        frame = sys._current_frames().get(thread.ident)
        stack = "".join(traceback.format_list(_user_frames(frame))) if frame else "  (unknown)\n"
        logger.warning(
            "the event loop has been stuck for %.1f s (block_warning is %s s) in %s: an async "
            "def task must not block (time.sleep, blocking I/O, long computations); await "
            "instead, or run the blocking call in a thread (await asyncio.to_thread(...)). "
            "The loop is stuck at:\n%s", stalled, self.settings.block_warning,
            f"task {task.get_name()}" if task is not None else "a callback outside any task",
            stack.rstrip())


#: Files whose frames sit under the code that holds the loop: this module (the
#: coroutine driver) and asyncio's callback runner.
_BASE_FILES = frozenset({__file__, asyncio.events.__file__})


def _user_frames(frame: Any) -> traceback.StackSummary:
    """The stack at ``frame`` from the first frame above the loop's own."""
    frames = traceback.extract_stack(frame)
    start = max((i + 1 for i, summary in enumerate(frames) if summary.filename in _BASE_FILES),
                default=0)
    return traceback.StackSummary.from_list(frames[start:] or frames)
