"""One SQLite connection per process and file, safe across threads and forks.

Both the broker and the result store open their files through
:class:`SharedConnection`:

* autocommit (``isolation_level=None``): every statement is its own
  transaction unless the caller says ``BEGIN IMMEDIATE``. Python's implicit
  deferred transactions would read and then try to upgrade to a write lock,
  which in WAL mode fails at once with SQLITE_BUSY, bypassing the busy handler;
* WAL journal, switched on with retries (the switch needs an exclusive lock,
  and does not go through the busy handler when several processes start
  together);
* ``synchronous=NORMAL`` by default, ``FULL`` on request;
* a re-entrant lock around the connection, because kombu acknowledges from
  other threads and the result store is used by many;
* a fresh connection and lock in a forked child: a connection must not cross
  a fork, and a lock held by another thread at fork time would never be
  released in the child.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

#: Connections inherited through a fork. They are kept referenced and never
#: closed in the child: closing would run SQLite's cleanup (checkpoint, WAL
#: removal) on behalf of the parent's handle.
_INHERITED: list[sqlite3.Connection] = []

_INSTANCES: weakref.WeakSet[SharedConnection] = weakref.WeakSet()


def _is_locked_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class RetryingConnection(sqlite3.Connection):
    """A connection that waits for another writer's lock with short sleeps.

    SQLite's own busy handler sleeps at least a millisecond before it looks
    again, while our write transactions hold the lock for tens of
    microseconds: under a steady stream of them, most of that millisecond is
    wasted. So SQLite's busy timeout is 0 and a statement that meets a held
    lock is retried here, backing off from 50 microseconds to 5 ms, for up to
    ``patience`` seconds. Retrying is safe: a statement that fails to get the
    lock has changed nothing.
    """

    patience: float = 5.0

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _is_locked_error(exc):
                raise
        return self._retry(super().execute, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        parameters = list(parameters)  # an iterator could not be replayed
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            if not _is_locked_error(exc):
                raise
        return self._retry(super().executemany, sql, parameters)

    def _retry(self, run: Callable[..., sqlite3.Cursor], sql: str, parameters: Any) -> sqlite3.Cursor:
        deadline = time.monotonic() + self.patience
        delay = 0.00005
        while True:
            time.sleep(delay)
            try:
                return run(sql, parameters)
            except sqlite3.OperationalError as exc:
                if not _is_locked_error(exc) or time.monotonic() > deadline:
                    raise
            delay = min(delay * 2, 0.005)


def connect(path: str, *, busy_timeout: float = 5.0, durability: str = "normal") -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL and the requested durability."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False,
                           cached_statements=256, factory=RetryingConnection)
    conn.patience = busy_timeout
    try:
        _enable_wal(conn, busy_timeout)
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS.get(durability, 'NORMAL')}")
        # After a burst the -wal file is truncated back to this size at the
        # next checkpoint, instead of staying as large as the burst made it.
        conn.execute("PRAGMA journal_size_limit = 16777216")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, patience: float) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + max(patience, 1.0)
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def run_locked_retry(fn: Callable[[], object], patience: float) -> object:
    """Run ``fn`` again while SQLite reports a lock that its busy handler did
    not wait for (schema changes racing at start-up)."""
    deadline = time.monotonic() + max(patience, 1.0)
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_locked_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class SharedConnection:
    """A lazily opened connection to one file, guarded by a lock.

    Use it as a context manager: ``with shared as conn: conn.execute(...)``.
    ``setup(conn)`` runs once on every new connection (schema creation).
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0, durability: str = "normal",
                 setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.durability = durability
        self._setup = setup
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._pid = os.getpid()
        _INSTANCES.add(self)

    def __enter__(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self.after_fork()
        self._lock.acquire()
        conn = self._conn
        if conn is None:
            try:
                conn = self._conn = self._open()
            except BaseException:
                self._lock.release()
                raise
        return conn

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, busy_timeout=self.busy_timeout, durability=self.durability)
        if self._setup is not None:
            try:
                run_locked_retry(lambda: self._setup(conn), self.busy_timeout)  # type: ignore[misc]
            except BaseException:
                conn.close()
                raise
        return conn

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connection (kept open, never
        closed here) and lock; the next use opens the child's own."""
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the connection; the next use opens a new one."""
        if self._pid != os.getpid():
            self.after_fork()
            return
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


#: How long a fork waits for statements running in other threads to end.
FORK_PATIENCE = 2.0

_HELD_AT_FORK: list[threading.RLock] = []


def _before_fork() -> None:
    """Keep other threads out of SQLite while the process is copied.

    SQLite keeps its per-process lock state in memory: a fork in the middle
    of another thread's write would copy "this process holds the write lock"
    into the child, whose own connections would then wait for a lock nobody
    there can release. Each connection's lock is taken (waiting at most
    :data:`FORK_PATIENCE` in all, so a fork never hangs) and given back after.
    """
    deadline = time.monotonic() + FORK_PATIENCE
    pid = os.getpid()
    for shared in list(_INSTANCES):
        if shared._pid == pid and shared._lock.acquire(
                timeout=max(0.0, deadline - time.monotonic())):
            _HELD_AT_FORK.append(shared._lock)


def _after_fork_in_parent() -> None:
    while _HELD_AT_FORK:
        _HELD_AT_FORK.pop().release()


def _after_fork_in_child() -> None:
    _HELD_AT_FORK.clear()
    for shared in list(_INSTANCES):
        shared.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
