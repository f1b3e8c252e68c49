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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import attrs


class Job(Protocol):
    """One task call to run. Produced by the worker; opaque to the pool."""

    @property
    def id(self) -> str: ...

    soft_time_limit: float | None
    time_limit: float | None

    def run(self) -> Any:
        """Run the task and store its result; never raises for task errors."""


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

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, int(concurrency))

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
