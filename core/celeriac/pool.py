"""The pool contract: how a worker runs task calls.

The worker hands a pool :class:`Job` objects. A job knows how to run one task
call from start to stored result (``job.run()``); the pool decides *where*
(inline, a thread, a child process, a greenlet) and reports back through the
``on_done`` callback given to :meth:`Pool.submit`.

Rules every pool keeps (checked by :class:`celeriac.testing.contracts.PoolContract`):

* ``on_done(outcome)`` is called exactly once per submitted job, with the
  value ``job.run()`` returned, or with a :class:`JobFailed` when the job could
  not finish (the process died, the hard time limit ended it). It may be called
  from any thread; the worker makes it thread-safe. The one exception: a job
  handed back by ``stop()`` or ``terminate()`` gets no ``on_done``, even if it
  finishes later (its message is requeued; it must not also be acknowledged).
* ``submit`` after ``stop`` raises :class:`RuntimeError`.
* ``submit`` never blocks for longer than it takes to hand the job over,
  except in pools with ``inline = True`` (solo), where it runs the job.
* ``stop(timeout)`` stops taking jobs, waits up to ``timeout`` seconds for
  running ones and returns the jobs still running (their messages go back to
  the broker); ``terminate()`` gives up on all of them at once.
* Time limits: a pool declares with ``soft_time_limits`` / ``hard_time_limits``
  whether it can enforce them; the worker warns once when a task asks for a
  limit the pool cannot enforce, instead of silently ignoring it.
* Optional abilities, each declared so the worker and remote control can say
  "not supported by this pool" instead of failing oddly: ``resizable``
  (:meth:`Pool.grow` / :meth:`Pool.shrink`, used by ``pool_grow``,
  ``pool_shrink`` and autoscale) and :meth:`Pool.terminate_job` (revoke with
  ``terminate=True``).
* A pool that needs the process patched first (gevent, eventlet) names the
  patch in its record (:attr:`celeriac.plugin.PoolPlugin.patch`, run by the
  command line through :mod:`celeriac.patching`) and refuses to be built in
  an unpatched process; :class:`celeriac.greenpool.GreenPool` does the
  bookkeeping of such pools.

Running a job in another process. A job is an object of the process that
received the message (the worker's job holds the kombu message and the
tracer), so it cannot cross a process boundary as it is. A pool whose
children are *forked* from the worker asks the job for a portable form:
``job.portable()`` (optional, see :class:`Job`) returns a picklable object
whose ``run()`` does in the child what ``job.run()`` would do in the parent,
storing the result there; a job without ``portable`` is pickled as it is. The
child inherited the app over the fork (the app makes its inherited result
backend and broker connections safe first, see :meth:`celeriac.app.App.after_fork`),
so the portable form only names what to run. The value that ``run()``
returns in the child is pickled back for ``on_done``; a value that cannot be
pickled is replaced by its ``repr``, and in an attrs instance such as the
tracer's :class:`~celeriac.trace.Outcome` only the fields that need it are
(what was stored in the child is unaffected).

Running a job on an event loop. A pool that runs ``async def`` tasks as
coroutines on its own loop asks a job whether it is one (``job.is_async``,
optional, see :class:`AsyncJob`) and then awaits ``job.run_async(guard)``
on the loop instead of calling ``job.run()``: the task's coroutine runs on
the loop, and everything that may block runs in the loop's default executor
(which the pool sets). ``guard(coroutine)`` is how the pool enforces time
limits: the job awaits what it returns in place of the task's coroutine, and
only there, so a limit never interrupts the storing of a result. Other pools
keep calling ``job.run()``, which runs an ``async def`` task with
``asyncio.run``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import attrs


class Job(Protocol):
    """One task call to run. Produced by the worker; opaque to the pool.

    A job may also offer ``portable() -> object``: a picklable object with a
    ``run()`` method that, called in a process forked from this one, does
    what ``job.run()`` would (runs the task, stores the result there) and
    returns the same kind of value. Pools that run jobs in child processes
    call it in the parent; the worker's jobs have it. It is not part of
    this protocol's required members, so in-process pools never need it.
    """

    @property
    def id(self) -> str: ...

    soft_time_limit: float | None
    time_limit: float | None

    def run(self) -> Any:
        """Run the task and store its result; never raises for task errors."""


class AsyncJob(Job, Protocol):
    """A job that can also run on an event loop (optional; the worker's jobs are).

    A pool checks ``getattr(job, "is_async", False)``; when true, it awaits
    ``run_async`` on its loop instead of calling ``run()``.
    """

    @property
    def name(self) -> str:
        """The task's name, for log messages."""

    @property
    def is_async(self) -> bool:
        """The task is an ``async def``: its call is a coroutine for the loop."""

    def run_async(self, guard: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]] | None = None,
                  ) -> Coroutine[Any, Any, Any]:
        """What ``run()`` does, as a coroutine for the running loop (see
        :meth:`celeriac.trace.Tracer.run_async`).

        The task's coroutine is awaited as ``await guard(coroutine)`` when a
        guard is given; what the guard raises is what the task raised (an
        ``Exception`` becomes the outcome, ``CancelledError`` propagates with
        nothing stored). Prerun and the STARTED state, storing the result,
        sending callbacks and the hooks run in the loop's default executor.
        Never raises for task errors."""
        ...


def portable(job: Job) -> Any:
    """What a pool sends to a child process to run ``job`` there:
    ``job.portable()`` when the job has it, else the job itself (which must
    then pickle)."""
    make = getattr(job, "portable", None)
    return make() if callable(make) else job


@attrs.frozen
class PoolOptions:
    """Worker settings a pool may honour, given to the pool's constructor.

    A pool that cannot honour one that is set says so in :attr:`Pool.limitation`
    (the worker logs it at start-up) rather than ignoring it.
    """

    max_tasks_per_child: int | None = None
    """Replace an execution unit (a child process) after this many tasks."""
    max_memory_per_child: int | None = None
    """Replace a child whose resident memory exceeds this many KiB, checked
    before it takes its next task."""
    soft_time_limit: float | None = None
    """The app's default soft limit (``task_soft_time_limit``), for pools that
    report it (``inspect stats``). Jobs carry the limits to enforce."""
    time_limit: float | None = None
    """The app's default hard limit (``task_time_limit``), reported likewise."""
    settings: Any = None
    """The app's :class:`celeriac.config.Settings` (``None`` outside a worker),
    for a pool that reads its own configuration section
    (``settings.section(name)``, declared through ``celeriac_config_sections``)."""


@attrs.frozen
class JobFailed:
    """Passed to ``on_done`` when a job ended without returning."""

    reason: str
    """``"time-limit"``, ``"worker-lost"``, ``"terminated"`` or ``"error"``."""
    exception: BaseException | None = None


class Pool(ABC):
    """Base class of pools; register a :class:`celeriac.plugin.PoolPlugin`."""

    name: str = "?"
    inline: bool = False
    """``submit`` runs the job before returning (the worker then does no
    other work while a task runs)."""
    soft_time_limits: bool = False
    hard_time_limits: bool = False
    limitation: str = ""
    """Said in the banner and the once-only warning when a limit cannot be enforced."""
    default_concurrency: int | None = None
    """Concurrency when neither ``-c`` nor ``worker_concurrency`` sets one
    (``None``: the number of CPUs). Pools of cheap coroutines or greenlets set
    it high."""
    resizable: bool = False
    """:meth:`grow` and :meth:`shrink` work (remote control and autoscale)."""

    concurrency: int
    """How many jobs run at once (for a resizable pool, changed by :meth:`grow`
    and :meth:`shrink`; the worker reads it to keep its dispatch gate in step)."""

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        self.concurrency = max(1, int(concurrency))
        self.options = options or PoolOptions()

    def grow(self, n: int = 1) -> None:
        """Add ``n`` to the concurrency (only when :attr:`resizable`)."""
        raise NotImplementedError(f"the {self.name} pool cannot be resized")

    def shrink(self, n: int = 1) -> None:
        """Take ``n`` from the concurrency, never below 1; running jobs finish
        first (only when :attr:`resizable`)."""
        raise NotImplementedError(f"the {self.name} pool cannot be resized")

    def job_pid(self, job_id: str) -> int | None:
        """The id of the process running ``job_id`` (``worker_pid`` in
        ``inspect active``). Pools that run jobs in the worker's own process
        keep this default; pools of processes say which child."""
        import os

        return os.getpid()

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """End the running job ``job_id`` now (revoke with ``terminate=True``).

        ``signum`` is the signal the caller asked for; pools of processes send
        it, others end the job their own way (cancel a coroutine, kill a
        greenlet). Return True when the job was ended; its ``on_done`` then
        gets a :class:`JobFailed` with reason ``"terminated"``. Return False
        when the pool cannot end a running job or does not run ``job_id``.
        """
        return False

    def start(self) -> None:
        """Get ready to take jobs (start threads or children)."""

    @abstractmethod
    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Run ``job`` and call ``on_done`` with what it returned."""

    @abstractmethod
    def stop(self, timeout: float | None = None) -> list[Job]:
        """Stop; wait up to ``timeout`` s for running jobs; return the unfinished ones."""

    def terminate(self) -> list[Job]:
        """Stop now; return the jobs that were running."""
        return self.stop(0)

    @property
    @abstractmethod
    def active(self) -> int:
        """How many jobs are running now."""

    def info(self) -> dict[str, Any]:
        """What ``inspect stats`` reports under ``pool``."""
        return {"implementation": f"{type(self).__module__}:{type(self).__qualname__}",
                "max-concurrency": self.concurrency}
