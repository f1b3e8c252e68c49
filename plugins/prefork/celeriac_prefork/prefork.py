"""The prefork pool: each task runs in a child process forked from the worker.

One supervising thread (``celeriac-prefork``) owns the children: it forks
them, hands each idle child one job at a time, reads their answers, enforces
time limits, reaps the dead and replaces them. Other threads only change the
pool's state under its lock and wake the supervisor through a pipe, so no
pipe or process is touched by two threads.

What the pool guarantees, beyond the pool contract:

* A hard time limit kills only the child running that job (SIGKILL), at once
  replaced; ``on_done`` gets ``JobFailed("time-limit", TimeLimitExceeded)``.
* A soft time limit raises :class:`~celeriac.exceptions.SoftTimeLimitExceeded`
  inside the task (SIGUSR1 to its child; see :mod:`celeriac_prefork.child`).
* A child that dies while running a job (``kill -9``, a crash, ``os._exit``)
  gives ``JobFailed("worker-lost", WorkerLostError)``, and is replaced.
* ``max_tasks_per_child`` / ``max_memory_per_child`` (KiB) replace a child
  after the job that reached the limit.
* :meth:`PreforkPool.terminate_job` signals the child running a job, reports
  ``JobFailed("terminated")`` and replaces the child.
* Children never outlive the worker: on Linux they get SIGKILL when the
  supervising thread's process dies, anywhere else they leave when their
  pipe closes; every child is reaped.
"""

from __future__ import annotations

import _imp
import itertools
import logging
import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

from celeriac.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from celeriac.pool import Job, JobFailed, Pool, PoolOptions, portable

from . import _wire
from . import child as child_process
from .child import NO_JOB, SLOT, ChildSettings

__all__ = ["PreforkPool"]

logger = logging.getLogger("celeriac_prefork")

# Forking a process that runs other threads is this pool's design (as it is
# Celery's): a child only uses what it resets after the fork (the app's
# connections and locks, see App.after_fork; its own pipes).
warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded, use of fork\(\)",
                        category=DeprecationWarning)

READY, RETIRING, CONDEMNED = "ready", "retiring", "condemned"
REAP_PATIENCE = 1.0
"""Seconds a child whose pipe closed may take to exit before it is killed."""
LEAVE_PATIENCE = 10.0
"""Seconds an idle child that was let go may take to leave before it is killed."""
IMPORT_PATIENCE = 5.0
"""Seconds a fork waits for imports running in other threads to end."""

# Pipe ends of every prefork pool of this process. Each new child closes them
# all but its own: a child holding another child's jobs pipe open would keep
# that child from ever seeing its end of file.
_fds_lock = threading.Lock()
_pool_fds: set[int] = set()


def _open_pipe() -> tuple[int, int]:
    read, write = os.pipe()
    _pool_fds.update((read, write))
    return read, write


def _close_fd(fd: int) -> None:
    with _fds_lock:
        _pool_fds.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


_death_signal_setter: Any = None
_death_signal_checked = False


def _prctl() -> Any:
    """``prctl`` of the C library (Linux), to arm the parent-death signal; else None."""
    global _death_signal_setter, _death_signal_checked
    if not _death_signal_checked:
        _death_signal_checked = True
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _death_signal_setter = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                logger.warning("prctl is not available: pool children cannot be made to die "
                               "with the worker, only to leave when their pipe closes")
    return _death_signal_setter


def _modules_being_imported() -> list[str]:
    return [name for name, module in list(sys.modules.items())
            if getattr(getattr(module, "__spec__", None), "_initializing", False)]


def _describe(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "?"
        return f"signal {signum} ({name})"
    return f"exitcode {os.waitstatus_to_exitcode(status)}"


class _Entry:
    """A submitted job and what the pool knows about it."""

    __slots__ = ("job", "on_done", "seq", "soft_at", "hard_at", "soft_sent", "done", "handed_back")

    def __init__(self, job: Job, on_done: Callable[[Any], None], seq: int) -> None:
        self.job = job
        self.on_done = on_done
        self.seq = seq
        self.soft_at: float | None = None
        self.hard_at: float | None = None
        self.soft_sent = False
        self.done = False
        """Reported (its ``on_done`` is called or about to be)."""
        self.handed_back = False
        """Returned by ``stop``: never reported."""

    @property
    def job_id(self) -> str:
        return str(getattr(self.job, "id", "?"))


class _Child:
    """A child process, the parent's ends of its pipes, and its job."""

    __slots__ = ("index", "pid", "jobs_fd", "results_fd", "slot", "reader", "outbox", "entry",
                 "state", "given", "kill_at", "killed", "closed_at")

    def __init__(self, index: int, pid: int, jobs_fd: int, results_fd: int,
                 slot: mmap.mmap) -> None:
        self.index = index
        self.pid = pid
        self.jobs_fd: int | None = jobs_fd
        self.results_fd: int | None = results_fd
        self.slot = slot
        self.reader = _wire.Reader()
        self.outbox = bytearray()
        self.entry: _Entry | None = None
        self.state = READY
        """READY: takes jobs. RETIRING: finishes its job, then leaves.
        CONDEMNED: its job was ended (time limit, terminate); it is killed
        after a grace period if it has not left."""
        self.given = 0
        self.kill_at: float | None = None
        self.killed = False
        self.closed_at: float | None = None
        """When its results pipe closed (it exited or is exiting)."""

    def kill(self, signum: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            self.killed = True


class PreforkPool(Pool):
    """``concurrency`` child processes, forked from the worker, each running
    one job at a time. Resizable; enforces soft and hard time limits."""

    name = "prefork"
    soft_time_limits = True
    hard_time_limits = True
    resizable = True
    terminate_grace = 10.0
    """Seconds a child signalled by :meth:`terminate_job` has to leave by
    itself (a task catching SoftTimeLimitExceeded may clean up) before SIGKILL."""

    def __init__(self, concurrency: int, options: PoolOptions | None = None) -> None:
        super().__init__(concurrency, options)
        if os.name != "posix":
            raise RuntimeError("the prefork pool needs os.fork (POSIX); use the threads pool here")
        self._cond = threading.Condition()
        self._pending: deque[_Entry] = deque()
        self._children: list[_Child] = []
        self._seq = itertools.count(1)
        with _fds_lock:
            self._wake_r, self._wake_w = _open_pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._killing = False
        self._closed = False
        self._retry_spawn_at = 0.0
        self._quiet_since: float | None = None

    # -- the contract ----------------------------------------------------------------

    def start(self) -> None:
        """Start the supervising thread, which forks the children (idempotent)."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=self._supervise, name="celeriac-prefork",
                                            daemon=True)
            self._thread.start()

    def submit(self, job: Job, on_done: Callable[[Any], None]) -> None:
        """Queue ``job`` for the next idle child and return at once."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the prefork pool is stopped and takes no more jobs")
            self._pending.append(_Entry(job, on_done, next(self._seq)))
        self._wake()

    def stop(self, timeout: float | None = None) -> list[Job]:
        """Take no more jobs, give back the queued ones, wait up to ``timeout``
        s for the running ones, then kill the children still running a job
        and give those jobs back too (running first, then queued). Idle
        children leave; every child is reaped before this returns."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._stopping = True
            queued = list(self._pending)
            self._pending.clear()
            for entry in queued:
                entry.handed_back = True
        self._wake()
        with self._cond:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._cond.wait_for(lambda: not self._running(), left)
            unfinished = self._running()
            for entry in unfinished:
                entry.handed_back = True
            self._killing = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._close()
        return [entry.job for entry in unfinished] + [entry.job for entry in queued]

    @property
    def active(self) -> int:
        """How many jobs children are running now."""
        with self._cond:
            return len(self._running())

    def grow(self, n: int = 1) -> None:
        """Add ``n`` children (forked by the supervising thread)."""
        if n < 1:
            raise ValueError(f"grow takes a number of processes of at least 1, got {n}")
        with self._cond:
            self.concurrency += n
        self._wake()

    def shrink(self, n: int = 1) -> None:
        """Let ``n`` children go, never below one: idle ones first; busy ones
        finish their job first."""
        if n < 1:
            raise ValueError(f"shrink takes a number of processes of at least 1, got {n}")
        with self._cond:
            self.concurrency = max(1, self.concurrency - n)
        self._wake()

    def job_pid(self, job_id: str) -> int | None:
        """The pid of the child running ``job_id`` (None: not running)."""
        with self._cond:
            for child in self._children:
                entry = child.entry
                if entry is not None and entry.job_id == job_id and not entry.done:
                    return int(child.pid)
        return None

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """Send ``signum`` to the child running ``job_id`` and report the job
        ``JobFailed("terminated")`` at once; the child takes no other job and
        is replaced (killed if it has not left after :attr:`terminate_grace`).
        A job still queued in the pool is dropped and reported the same way.
        SIGUSR1 raises SoftTimeLimitExceeded in the task, as in Celery."""
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        failed = JobFailed("terminated", TaskRevokedError(f"terminated ({name})"))
        reports: list[tuple[_Entry, Any]] = []
        with self._cond:
            for entry in self._pending:
                if entry.job_id == job_id:
                    self._pending.remove(entry)
                    self._finish(entry, failed, reports)
                    break
            else:
                child = next((c for c in self._children if c.entry is not None
                              and c.entry.job_id == job_id and not c.entry.done
                              and not c.entry.handed_back), None)
                if child is None or child.entry is None:
                    return False
                entry = child.entry
                if signum == signal.SIGUSR1:
                    SLOT.pack_into(child.slot, 0, entry.seq)
                child.kill(signum)
                child.entry = None
                child.state = CONDEMNED
                child.kill_at = time.monotonic() + self.terminate_grace
                logger.warning("job %s terminated with %s in child %d; the child is replaced",
                               job_id, name, child.pid)
                self._finish(entry, failed, reports)
        self._wake()
        self._report(reports)
        return True

    def info(self) -> dict[str, Any]:
        """Celery's prefork ``inspect stats`` shape: ``processes`` (pids),
        ``max-tasks-per-child``, ``timeouts`` (soft, hard), ``writes``."""
        info = super().info()
        with self._cond:
            children = [c for c in self._children if c.state == READY]
            given = [c.given for c in children]
            busy = sum(1 for c in children if c.entry is not None)
        total = sum(given)

        def share(value: float) -> str:
            return f"{(value / total) if value else 0:.2f}"

        options = self.options
        info.update({
            "processes": [c.pid for c in children],
            "max-tasks-per-child": options.max_tasks_per_child or "N/A",
            "max-memory-per-child": options.max_memory_per_child or "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": [options.soft_time_limit or 0, options.time_limit or 0],
            "writes": {
                "total": total,
                "avg": share(total / len(given) if given and total else 0),
                "all": ", ".join(share(v) for v in given),
                "raw": ", ".join(str(v) for v in given),
                "strategy": "fair",
                "inqueues": {"total": len(children), "active": busy},
            },
        })
        return info

    # -- shared helpers (lock held) ----------------------------------------------------

    def _running(self) -> list[_Entry]:
        return [c.entry for c in self._children if c.entry is not None
                and not c.entry.done and not c.entry.handed_back]

    def _finish(self, entry: _Entry, outcome: Any, reports: list[tuple[_Entry, Any]]) -> None:
        if entry.done or entry.handed_back:
            return
        entry.done = True
        reports.append((entry, outcome))
        self._cond.notify_all()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (pipe full), or the pool is closed

    @staticmethod
    def _report(reports: list[tuple[_Entry, Any]]) -> None:
        for entry, outcome in reports:
            try:
                entry.on_done(outcome)
            except Exception:
                logger.exception("on_done of job %s failed", entry.job_id)

    def _close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        _close_fd(self._wake_r)
        _close_fd(self._wake_w)

    # -- the supervising thread --------------------------------------------------------

    def _supervise(self) -> None:
        events: list[tuple[int, int]] = []
        watched: dict[int, _Child] = {}
        try:
            while True:
                reports: list[tuple[_Entry, Any]] = []
                with self._cond:
                    self._handle(events, watched, reports)
                    self._maintain(reports)
                    finished = self._stopping and self._killing and not self._children
                    if not finished:
                        poller, watched, timeout = self._watch()
                self._report(reports)
                if finished:
                    return
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    events = []
        except BaseException:
            logger.exception("the prefork pool's supervising thread failed; its children are "
                             "killed and their jobs reported lost")
            self._abandon()

    def _abandon(self) -> None:
        reports: list[tuple[_Entry, Any]] = []
        with self._cond:
            self._stopping = self._killing = True
            for child in self._children:
                child.kill()
                entry, child.entry = child.entry, None
                if entry is not None:
                    self._finish(entry, JobFailed("worker-lost", WorkerLostError(
                        "the prefork pool's supervising thread failed")), reports)
                try:
                    os.waitpid(child.pid, 0)
                except ChildProcessError:
                    pass
            self._children.clear()
            for entry in self._pending:
                self._finish(entry, JobFailed("error", RuntimeError(
                    "the prefork pool's supervising thread failed")), reports)
            self._pending.clear()
            self._cond.notify_all()
        self._report(reports)

    def _watch(self) -> tuple[Any, dict[int, _Child], float]:
        """What to wait for (the wake pipe, results, pending writes) and for
        how long (milliseconds, until the next deadline)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, _Child] = {}
        moments = [time.monotonic() + 1.0]
        for child in self._children:
            if child.results_fd is not None:
                poller.register(child.results_fd, select.POLLIN)
                watched[child.results_fd] = child
            if child.jobs_fd is not None and child.outbox:
                poller.register(child.jobs_fd, select.POLLOUT)
                watched[child.jobs_fd] = child
            entry = child.entry
            if entry is not None:
                if entry.hard_at is not None:
                    moments.append(entry.hard_at)
                if entry.soft_at is not None and not entry.soft_sent:
                    moments.append(entry.soft_at)
            if child.kill_at is not None and not child.killed:
                moments.append(child.kill_at)
            if child.closed_at is not None:
                moments.append(time.monotonic() + 0.01)
        if self._retry_spawn_at:
            moments.append(self._retry_spawn_at)
        wait = max(0.0, min(moments) - time.monotonic())
        return poller, watched, wait * 1000

    def _handle(self, events: list[tuple[int, int]], watched: dict[int, _Child],
                reports: list[tuple[_Entry, Any]]) -> None:
        for fd, _mask in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            child = watched.get(fd)
            if child is None:
                continue
            if fd == child.results_fd:
                self._read(child, reports)
            elif fd == child.jobs_fd:
                self._flush(child)

    def _read(self, child: _Child, reports: list[tuple[_Entry, Any]]) -> None:
        assert child.results_fd is not None
        while True:
            try:
                data = os.read(child.results_fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                _close_fd(child.results_fd)
                child.results_fd = None
                child.closed_at = time.monotonic()
                return
            for seq, payload in child.reader.feed(data):
                self._answer(child, seq, payload, reports)

    def _answer(self, child: _Child, seq: int, payload: bytes,
                reports: list[tuple[_Entry, Any]]) -> None:
        entry = child.entry
        if entry is None or entry.seq != seq:
            return  # the job was already ended (time limit, terminate)
        if payload == _wire.STARTED:
            # The limits count from the child's start, as Celery's do.
            now = time.monotonic()
            soft, hard = entry.job.soft_time_limit, entry.job.time_limit
            entry.soft_at = now + soft if soft else None
            entry.hard_at = now + hard if hard else None
            return
        child.entry = None
        try:
            kind, value, retire = pickle.loads(payload)
        except Exception as exc:
            logger.error("the answer of child %d for job %s cannot be read: %s", child.pid,
                         entry.job_id, exc)
            kind, value, retire = "error", exc, None
        logger.debug("child %d ran job %s", child.pid, entry.job_id)
        if retire and child.state == READY:
            child.state = RETIRING
            logger.info("child %d %s: it is replaced", child.pid, retire)
        self._finish(entry, value if kind == "ok" else JobFailed("error", value), reports)

    def _flush(self, child: _Child) -> None:
        if child.jobs_fd is None:
            child.outbox.clear()
            return
        while child.outbox:
            try:
                written = os.write(child.jobs_fd, child.outbox)
            except BlockingIOError:
                return
            except OSError:
                # The child is gone; its closed results pipe tells the rest.
                child.outbox.clear()
                return
            del child.outbox[:written]

    def _maintain(self, reports: list[tuple[_Entry, Any]]) -> None:
        now = time.monotonic()
        self._reap(now, reports)
        for child in self._children:
            entry = child.entry
            if entry is not None and entry.hard_at is not None and now >= entry.hard_at:
                self._hard_limit(child, entry, reports)
            elif entry is not None and entry.soft_at is not None and now >= entry.soft_at \
                    and not entry.soft_sent:
                entry.soft_sent = True
                logger.warning("job %s passed its soft time limit (%g s) in child %d",
                               entry.job_id, entry.job.soft_time_limit, child.pid)
                SLOT.pack_into(child.slot, 0, entry.seq)
                child.kill(signal.SIGUSR1)
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                logger.warning("child %d did not leave in time: killed", child.pid)
                child.kill()
            if self._killing and child.entry is not None:
                logger.warning("child %d killed at shutdown while running job %s", child.pid,
                               child.entry.job_id)
                child.kill()
                child.entry = None
                child.state = CONDEMNED
        ready = [c for c in self._children if c.state == READY]
        keep = 0 if self._stopping else self.concurrency
        idle_first = sorted(ready, key=lambda c: c.entry is not None)
        for child in idle_first[:max(0, len(ready) - keep)]:
            child.state = RETIRING
        if not self._stopping:
            self._spawn_missing(now)
            self._assign(reports)
        for child in self._children:
            if child.state != READY and child.jobs_fd is not None and \
                    (not child.outbox or child.state == CONDEMNED):
                # End of file on its jobs pipe: it leaves after its current job.
                _close_fd(child.jobs_fd)
                child.jobs_fd = None
                child.outbox.clear()
            if child.state != READY and child.entry is None and child.kill_at is None:
                child.kill_at = now + LEAVE_PATIENCE

    def _hard_limit(self, child: _Child, entry: _Entry, reports: list[tuple[_Entry, Any]]) -> None:
        limit = entry.job.time_limit
        logger.error("job %s passed its hard time limit (%g s): child %d killed and replaced",
                     entry.job_id, limit, child.pid)
        child.kill()
        child.entry = None
        child.state = CONDEMNED
        self._finish(entry, JobFailed("time-limit", TimeLimitExceeded(limit)), reports)

    def _reap(self, now: float, reports: list[tuple[_Entry, Any]]) -> None:
        for child in list(self._children):
            if child.closed_at is None:
                continue
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, None  # reaped elsewhere
            if pid == 0:
                if now - child.closed_at > REAP_PATIENCE and not child.killed:
                    logger.warning("child %d closed its pipe but did not exit: killed", child.pid)
                    child.kill()
                continue
            self._children.remove(child)
            if child.jobs_fd is not None:
                _close_fd(child.jobs_fd)
                child.jobs_fd = None
            child.slot.close()
            self._died(child, _describe(status), reports)

    def _died(self, child: _Child, how: str, reports: list[tuple[_Entry, Any]]) -> None:
        entry, child.entry = child.entry, None
        if entry is not None and not entry.done and not entry.handed_back:
            logger.error("child %d died (%s) while running job %s", child.pid, how, entry.job_id)
            self._finish(entry, JobFailed("worker-lost", WorkerLostError(
                f"Worker exited prematurely: {how} Job: {entry.seq}.")), reports)
        elif child.state == READY and not self._stopping:
            logger.warning("child %d exited unexpectedly (%s); it is replaced", child.pid, how)
        else:
            logger.debug("child %d exited (%s)", child.pid, how)

    def _spawn_missing(self, now: float) -> None:
        if now < self._retry_spawn_at:
            return
        self._retry_spawn_at = 0.0
        while sum(1 for c in self._children if c.state == READY) < self.concurrency:
            try:
                if not self._spawn_when_quiet(now):
                    return
            except OSError as exc:
                logger.error("could not start a pool child (%s); trying again in a second", exc)
                self._retry_spawn_at = now + 1.0
                return

    def _spawn_when_quiet(self, now: float) -> bool:
        """Fork a child unless another thread is importing a module (then try
        again shortly, and return False).

        A module being imported is locked by the importing thread; that lock
        stays taken in the child, where the thread does not exist, so a child
        importing the same module would wait forever. Holding the import lock
        keeps any new import from starting until the fork is done.
        """
        # Output still buffered here would be written again by the child.
        child_process.flush_output()
        _imp.acquire_lock()
        try:
            busy = _modules_being_imported()
            if busy:
                if self._quiet_since is None:
                    self._quiet_since = now
                if now - self._quiet_since < IMPORT_PATIENCE:
                    self._retry_spawn_at = now + 0.01
                    return False
                logger.warning("starting a pool child while another thread imports %s; a "
                               "task that imports it too would hang in that child",
                               ", ".join(busy))
            self._quiet_since = None
            self._spawn()
            return True
        finally:
            _imp.release_lock()

    def _spawn(self) -> None:
        taken = {c.index for c in self._children}
        index = next(i for i in itertools.count(1) if i not in taken)
        settings = ChildSettings(index=index, parent_pid=os.getpid(),
                                 max_tasks=self.options.max_tasks_per_child,
                                 max_memory=self.options.max_memory_per_child)
        slot = mmap.mmap(-1, SLOT.size)
        SLOT.pack_into(slot, 0, NO_JOB)
        prctl = _prctl()
        with _fds_lock:
            jobs_r, jobs_w = _open_pipe()
            results_r, results_w = _open_pipe()
            inherited = sorted(_pool_fds - {jobs_r, results_w})
            try:
                pid = os.fork()
            except OSError:
                for fd in (jobs_r, jobs_w, results_r, results_w):
                    _pool_fds.discard(fd)
                    os.close(fd)
                slot.close()
                raise
            if pid == 0:
                child_process.run(jobs_r, results_w, slot, settings, inherited, prctl)
            _pool_fds.difference_update((jobs_r, results_w))
        os.close(jobs_r)
        os.close(results_w)
        os.set_blocking(jobs_w, False)
        os.set_blocking(results_r, False)
        self._children.append(_Child(index, pid, jobs_w, results_r, slot))
        logger.info("started pool child %d (ForkPoolWorker-%d)", pid, index)

    def _assign(self, reports: list[tuple[_Entry, Any]]) -> None:
        idle = [c for c in self._children if c.state == READY and c.entry is None]
        while self._pending and idle:
            entry = self._pending.popleft()
            try:
                payload = pickle.dumps(portable(entry.job), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                logger.error("job %s cannot be sent to a pool child: %s", entry.job_id, exc)
                self._finish(entry, JobFailed("error", TypeError(
                    f"job {entry.job_id} cannot be sent to a pool child process: {exc}")),
                    reports)
                continue
            child = idle.pop(0)
            hard = entry.job.time_limit
            # Until the child says it started (then the limits count from
            # there), a child stuck before the task is still killed in time.
            entry.hard_at = time.monotonic() + hard if hard else None
            child.entry = entry
            child.given += 1
            child.outbox += _wire.pack(entry.seq, payload)
            logger.debug("job %s sent to child %d", entry.job_id, child.pid)
            self._flush(child)
