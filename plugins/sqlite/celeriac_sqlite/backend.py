"""The result store: one row per task in a SQLite file beside the broker's.

It is a separate file on purpose: SQLite has one write lock per file, so
result writes never wait behind the broker's claims and acks.

* ``store`` is one UPSERT that leaves a ``SUCCESS`` row alone (Celery's rule:
  a redelivered task cannot overwrite a success).
* ``get`` is a primary-key read; ``get_many`` reads 500 ids per statement.
* ``wait`` polls ``PRAGMA data_version``, which changes only when another
  connection commits: an idle tick costs microseconds and reads no table.
  The poll backs off from 0.5 ms to 50 ms (starting at 2 ms, as the base
  class does, doubled the round trip of a short task).
* Expired rows are invisible to ``get`` at once and deleted by ``cleanup``
  in chunks, so the write lock is never held for long.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celeriac.backend import Codec, ResultBackend
from celeriac.states import SUCCESS

from ._sqlite import SharedConnection
from .plugin import results_path, section_settings

if TYPE_CHECKING:
    from celeriac.config import Settings

__all__ = ["SQLiteBackend"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_result (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    document   BLOB NOT NULL,
    date_done  REAL NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS celeriac_result_expires
    ON celeriac_result(expires_at) WHERE expires_at IS NOT NULL;
"""

# An expired success no longer counts: a new document may replace it.
STORE = (
    "INSERT INTO celeriac_result (task_id, status, document, date_done, expires_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, "
    "document = excluded.document, date_done = excluded.date_done, "
    "expires_at = excluded.expires_at "
    "WHERE celeriac_result.status != ? OR celeriac_result.expires_at <= ?")
GET = ("SELECT document FROM celeriac_result WHERE task_id = ? "
       "AND (expires_at IS NULL OR expires_at > ?)")
CHUNK = 500
CLEANUP_CHUNK = 1000


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteBackend(ResultBackend):
    """Result backend for ``sqlite://`` URLs.

    ``sqlite://`` alone is ``results.sqlite3`` in the app's default directory
    (beside the default broker file); ``sqlite:////abs/path.db`` names a file.
    Safe to share between threads, and between processes using the same file.
    """

    name = "sqlite"

    #: ``wait`` polls first after this many seconds, then 1.5 times later each
    #: time, up to :attr:`max_poll`. A poll that finds nothing new costs a few
    #: microseconds, so starting well under a millisecond is cheap, and it is
    #: what keeps a short task's round trip near a millisecond.
    first_poll = 0.0005
    max_poll = 0.05

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str | None) -> None:
        super().__init__(url, codec=codec, settings=settings, app_name=app_name)  # type: ignore[arg-type]
        section = section_settings(settings)
        self.path = results_path(url, section.directory, app_name)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.db = SharedConnection(self.path, busy_timeout=section.busy_timeout,
                                   durability=section.durability, setup=_create_schema)
        # data_version does not move for commits made through our own
        # connection (other threads of this process): count those here.
        self._local_changes = 0
        self._changes_lock = threading.Lock()

    def _changed(self) -> None:
        with self._changes_lock:
            self._local_changes += 1

    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        """Upsert ``document``; ``False`` (and nothing changes) over a live ``SUCCESS``."""
        data = self.codec.encode(document)
        now = time.time()
        expires_at = None if expires is None else now + expires
        status = document.get("status") or "PENDING"
        with self.db as conn:
            changed = conn.execute(STORE, (task_id, status, data, now, expires_at,
                                           SUCCESS, now)).rowcount
        if changed:
            self._changed()
        return bool(changed)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The document of ``task_id`` unless missing or expired."""
        with self.db as conn:
            row = conn.execute(GET, (task_id, time.time())).fetchone()
        return None if row is None else self.codec.decode(bytes(row[0]))

    def get_many(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Documents of the ids that have one, read 500 per statement."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, dict[str, Any]] = {}
        now = time.time()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            with self.db as conn:
                rows = conn.execute(
                    f"SELECT task_id, document FROM celeriac_result WHERE task_id IN ({marks}) "
                    "AND (expires_at IS NULL OR expires_at > ?)", [*chunk, now]).fetchall()
            for task_id, data in rows:
                found[task_id] = self.codec.decode(bytes(data))
        return found

    def forget(self, task_id: str) -> None:
        """Delete what is stored for ``task_id``."""
        with self.db as conn:
            conn.execute("DELETE FROM celeriac_result WHERE task_id = ?", (task_id,))
        self._changed()

    def cleanup(self) -> int:
        """Delete expired documents, a chunk per transaction; return how many."""
        removed = 0
        now = time.time()
        while True:
            with self.db as conn:
                count = conn.execute(
                    "DELETE FROM celeriac_result WHERE task_id IN (SELECT task_id FROM "
                    "celeriac_result WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                    (now, CLEANUP_CHUNK)).rowcount
            removed += count
            if count < CLEANUP_CHUNK:
                return removed

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until ``task_id`` is ready; re-read only when the file changed."""
        seen: tuple[int, int] | None = None
        doc: dict[str, Any] | None = None

        def fetch() -> dict[str, Any] | None:
            nonlocal seen, doc
            with self.db as conn:
                # data_version moves only when another connection commits: an
                # idle tick costs no B-tree read.
                version = (conn.execute("PRAGMA data_version").fetchone()[0], self._local_changes)
                if version != seen:
                    seen = version
                    row = conn.execute(GET, (task_id, time.time())).fetchone()
                    doc = None if row is None else self.codec.decode(bytes(row[0]))
            return doc

        return self.poll_until_ready(fetch, timeout)

    def describe(self) -> str:
        """``sqlite:////absolute/path/results.sqlite3``."""
        return f"sqlite:///{self.path}"

    def close(self) -> None:
        """Close the connection (it is reopened if the backend is used again)."""
        self.db.close()
