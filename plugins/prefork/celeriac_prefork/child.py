"""What a pool child does, from the fork to its exit.

A child inherited the worker's memory (the app, its tasks, the tracer), so a
job arrives as a small pickle (``job.portable()``) that names what to run.
The child runs it (the task's result is stored from here), answers with how
it ended, and takes the next job, until one of these ends it:

* its jobs pipe reaches end of file: the pool let it go (shrinking, stopping);
* it ran ``max_tasks_per_child`` jobs, or its resident memory passed
  ``max_memory_per_child`` KiB: it says so with its last answer and exits,
  and the pool starts a replacement;
* the pool kills it (hard time limit, ``terminate_job``, cold stop), or the
  worker dies (Linux: ``PR_SET_PDEATHSIG`` kills it with the worker; elsewhere
  it exits at the end of its current job, when its jobs pipe is closed).

Signals: SIGINT is ignored (Ctrl-C in a terminal reaches every process of the
group; the worker decides between a warm and a cold shutdown), SIGTERM ends
the child, and SIGUSR1 raises :class:`~celeriac.exceptions.SoftTimeLimitExceeded`
inside the running task, but only when the pool asked for it for *that* job
(it writes the job's number in a word of memory shared with the child before
signalling), so a late signal never hits the next task. The child says when
it starts a job (an empty answer): the limits count from then, so an early
signal cannot come before the job is the one to interrupt.

The child always leaves through ``os._exit``: exit handlers and finalizers
belong to the worker and would close its connections.
"""

from __future__ import annotations

import _imp
import logging
import mmap
import os
import pickle
import signal
import struct
import sys
from typing import Any, NoReturn

import attrs
from celeriac.exceptions import SoftTimeLimitExceeded

from . import _wire

logger = logging.getLogger("celeriac_prefork")

SLOT = struct.Struct("q")
"""The shared word: the number of the job SIGUSR1 is meant for (-1: none)."""

NO_JOB = -1
PR_SET_PDEATHSIG = 1


@attrs.frozen
class ChildSettings:
    """What a child is told at its fork."""

    index: int
    """Its number in the pool (``ForkPoolWorker-<index>`` in log lines)."""
    parent_pid: int
    max_tasks: int | None = None
    max_memory: int | None = None
    """KiB of resident memory."""


class _Running:
    """The job this child runs now (read by the SIGUSR1 handler)."""

    seq = NO_JOB
    soft_time_limit: float | None = None


def resident_kib() -> int:
    """This process's resident memory in KiB (``/proc/self/statm``, else the
    peak from ``getrusage``)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def run(jobs_fd: int, results_fd: int, slot: mmap.mmap, settings: ChildSettings,
        inherited_fds: list[int], die_with_parent: Any) -> NoReturn:
    """The child's whole life; never returns."""
    code = 0
    try:
        for fd in inherited_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _prepare(slot, settings, die_with_parent)
        _serve(jobs_fd, results_fd, settings)
    except BaseException:
        code = 1
        try:
            logger.exception("pool child %d failed", os.getpid())
        except BaseException:
            pass
    finally:
        os._exit(code)


def flush_output() -> None:
    """Write out what this process printed.

    Called after each job rather than at exit: a stream's lock taken by
    another thread of the worker at the fork stays taken in the child, and a
    child that never wrote must not wait for it on its way out.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _prepare(slot: mmap.mmap, settings: ChildSettings, die_with_parent: Any) -> None:
    if _imp.lock_held():
        _imp.release_lock()  # the pool held it across the fork
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, lambda signum, frame: _on_soft_limit(slot))
    try:
        # An asyncio loop of the worker may have set it: signals of the child
        # must not be written into the worker's pipe.
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    if die_with_parent is not None:
        die_with_parent(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != settings.parent_pid:
        # The worker died before the death signal was armed.
        os._exit(1)
    import multiprocessing

    # Log lines of the child say which one it is, as Celery's do.
    multiprocessing.current_process().name = f"ForkPoolWorker-{settings.index}"


def _on_soft_limit(slot: mmap.mmap) -> None:
    (target,) = SLOT.unpack_from(slot)
    if _Running.seq != NO_JOB and target == _Running.seq:
        SLOT.pack_into(slot, 0, NO_JOB)
        limit = _Running.soft_time_limit
        raise SoftTimeLimitExceeded(f"soft time limit ({limit:g} s) exceeded" if limit
                                    else "soft time limit exceeded")


def _serve(jobs_fd: int, results_fd: int, settings: ChildSettings) -> None:
    done = 0
    while True:
        frame = _wire.read_frame(jobs_fd)
        if frame is None:
            return
        seq, payload = frame
        kind, value = _run_one(seq, payload, results_fd)
        flush_output()
        done += 1
        retire = _retire_reason(done, settings)
        _wire.write_all(results_fd, _wire.pack(seq, dump_result(kind, value, retire)))
        if retire:
            return


def _run_one(seq: int, payload: bytes, results_fd: int) -> tuple[str, Any]:
    try:
        job = pickle.loads(payload)
        _Running.soft_time_limit = getattr(job, "soft_time_limit", None)
        _Running.seq = seq
        try:
            # Time limits count from here (as in Celery): a soft-limit signal
            # can then only come once this job is the one to interrupt.
            _wire.write_all(results_fd, _wire.pack(seq, _wire.STARTED))
            return "ok", job.run()
        finally:
            _Running.seq = NO_JOB
    except BaseException as exc:
        # Even SystemExit raised by a task must not end the child: the pool
        # would report a lost worker for a job that did finish.
        return "error", exc


def _retire_reason(done: int, settings: ChildSettings) -> str | None:
    if settings.max_tasks and done >= settings.max_tasks:
        return f"ran {done} tasks (max_tasks_per_child is {settings.max_tasks})"
    if settings.max_memory:
        used = resident_kib()
        if used > settings.max_memory:
            return (f"uses {used} KiB of memory (max_memory_per_child is "
                    f"{settings.max_memory} KiB)")
    return None


# -- answers that always reach the parent ---------------------------------------------


def dump_result(kind: str, value: Any, retire: str | None) -> bytes:
    """The pickled answer ``(kind, value, retire)``.

    What does not pickle, or would not unpickle (an exception whose
    ``__init__`` needs other arguments), is replaced by its repr; in an attrs
    instance such as the tracer's ``Outcome``, only the fields that need it
    are, so its state and ack survive. The result was stored here already:
    the parent may lose detail, never the report.
    """
    value = _replace(value, _unpickles)
    try:
        return pickle.dumps((kind, value, retire), pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        return pickle.dumps((kind, _replace(value, _pickles), retire), pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps((kind, _saferepr(value), retire), pickle.HIGHEST_PROTOCOL)


def _replace(value: Any, ok: Any) -> Any:
    """``value``, or the fields of an attrs instance, with each part that
    fails ``ok`` replaced by :func:`_stand_in`."""
    if attrs.has(type(value)):
        changes = {}
        for field in attrs.fields(type(value)):
            if field.init:
                current = getattr(value, field.name)
                if not ok(current):
                    changes[field.alias or field.name] = _stand_in(current)
        return attrs.evolve(value, **changes) if changes else value
    return value if ok(value) else _stand_in(value)


def _unpickles(value: Any) -> bool:
    """Exceptions only (they are small): does it survive a round trip?"""
    if not isinstance(value, BaseException):
        return True
    try:
        pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return False
    return True


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def _stand_in(value: Any) -> Any:
    if isinstance(value, BaseException):
        return Exception(f"{type(value).__qualname__}: {_saferepr(value)}")
    return _saferepr(value)


def _saferepr(value: Any, limit: int = 1024) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__qualname__}: {exc}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
