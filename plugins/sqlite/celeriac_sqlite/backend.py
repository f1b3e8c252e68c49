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
* Revokes (``revoke``/``revoked``) are rows of ``celeriac_revoked`` (task id,
  expiry), pruned at each revoke.
* Chords: ``celeriac_chord`` (size, dispatch claim, expiry) and
  ``celeriac_chord_part`` (one row per header task and group index), each
  operation one ``BEGIN IMMEDIATE`` transaction.
* Saved group results are rows of ``celeriac_group``; the steps of compact
  chains rows of ``celeriac_chain_step`` (one per step, read by primary key).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.backend import ChordClaim, ChordPart, ChordProgress, Codec, ResultBackend
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

# Revokes (``ResultBackend.revoke``): one row per revoked task id, kept until
# ``expires_at``; revoking again keeps the later expiry.
REVOKES_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_revoked (
    task_id    TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""
REVOKE = ("INSERT INTO celeriac_revoked (task_id, expires_at) VALUES (?, ?) "
          "ON CONFLICT(task_id) DO UPDATE SET expires_at = excluded.expires_at "
          "WHERE excluded.expires_at > celeriac_revoked.expires_at")

# Chords (``ResultBackend.record_chord_part`` and the rest): the chord's size
# (NULL until the client sets it, and once finished), its dispatch claim
# (a token until ``claim_until``, then free; "done" once finished) and the
# expiry of all its rows; one row per recorded part, keyed so that a
# redelivered header task counts once.
CHORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_chord (
    group_id    TEXT PRIMARY KEY,
    size        INTEGER,
    claim       TEXT,
    claim_until REAL,
    expires_at  REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_chord_part (
    group_id    TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    part        BLOB NOT NULL,
    PRIMARY KEY (group_id, task_id, position)
) WITHOUT ROWID;
"""
CHORD_DONE = "done"
#: ``position`` of a part without a group index: after every other.
LAST = 2**62

# The canvas (``save_group``, ``save_chain``...): saved group results, one row
# per group; the steps of compact chains, one row per step, so that a worker
# reads only the step it sends.
CANVAS_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_group (
    group_id   TEXT PRIMARY KEY,
    document   BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_chain_step (
    chain_id   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    step       BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (chain_id, position)
) WITHOUT ROWID;
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in (SCHEMA + REVOKES_SCHEMA + CHORDS_SCHEMA + CANVAS_SCHEMA).split(";"):
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
                self._cleanup_chords(now)
                self._cleanup_canvas(now)
                return removed

    # -- revokes -----------------------------------------------------------------------

    stores_revokes = True

    def revoke(self, task_ids: Iterable[str], *, expires: float) -> None:
        """Record ``task_ids`` as revoked until ``expires`` seconds from now."""
        now = time.time()
        rows = [(task_id, now + expires) for task_id in dict.fromkeys(task_ids)]
        with self._transaction() as conn:
            conn.executemany(REVOKE, rows)
            conn.execute("DELETE FROM celeriac_revoked WHERE expires_at <= ?", (now,))

    def revoked(self) -> dict[str, float]:
        """The revokes that have not expired: task id -> expiry (Unix time)."""
        with self.db as conn:
            rows = conn.execute("SELECT task_id, expires_at FROM celeriac_revoked "
                                "WHERE expires_at > ?", (time.time(),)).fetchall()
        return dict(rows)

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

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connection open and unused
        (the next call opens the child's own) and renew the locks."""
        self.db.after_fork()
        self._changes_lock = threading.Lock()

    # -- chords ------------------------------------------------------------------------

    supports_chords = True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block
        ends, rolled back when it raises."""
        with self.db as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _chord(self, group_id: str) -> Iterator[tuple[sqlite3.Connection, tuple | None]]:
        """A write transaction on ``group_id``'s chord and its row (``None``
        when there is none, or it expired: then its rows are deleted first)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT size, claim, claim_until, expires_at FROM "
                               "celeriac_chord WHERE group_id = ?", (group_id,)).fetchone()
            if row is not None and row[3] is not None and row[3] <= time.time():
                self._drop_chord(conn, group_id)
                row = None
            yield conn, row

    @staticmethod
    def _drop_chord(conn: sqlite3.Connection, group_id: str) -> None:
        conn.execute("DELETE FROM celeriac_chord_part WHERE group_id = ?", (group_id,))
        conn.execute("DELETE FROM celeriac_chord WHERE group_id = ?", (group_id,))

    @staticmethod
    def _count(conn: sqlite3.Connection, group_id: str) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM celeriac_chord_part WHERE group_id = ?",
                                (group_id,)).fetchone()[0])

    def set_chord_size(self, group_id: str, size: int, *, expires: float | None) -> None:
        """Set the size and drop a claim or "done" mark of an earlier run;
        recorded parts stay."""
        expires_at = None if expires is None else time.time() + expires
        with self._chord(group_id) as (conn, _):
            conn.execute(
                "INSERT INTO celeriac_chord (group_id, size, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(group_id) DO UPDATE SET size = excluded.size, claim = NULL, "
                "claim_until = NULL, expires_at = excluded.expires_at",
                (group_id, int(size), expires_at))

    def record_chord_part(self, group_id: str, part: ChordPart, *, token: str,
                          claim_timeout: float, expires: float | None) -> ChordProgress:
        now = time.time()
        data = self.codec.encode({"task_id": part.task_id, "status": part.state,
                                  "result": part.result})
        position = LAST if part.group_index is None else int(part.group_index)
        with self._chord(group_id) as (conn, row):
            if row is not None and row[1] == CHORD_DONE:
                return ChordProgress(recorded=0, expected=None, added=False, claimed=False,
                                     closed=True)
            added = conn.execute(
                "INSERT OR IGNORE INTO celeriac_chord_part (group_id, task_id, position, part) "
                "VALUES (?, ?, ?, ?)", (group_id, part.task_id, position, data)).rowcount == 1
            expires_at = None if expires is None else now + expires
            if row is None:
                conn.execute("INSERT INTO celeriac_chord (group_id, expires_at) VALUES (?, ?)",
                             (group_id, expires_at))
            elif expires_at is not None:
                conn.execute("UPDATE celeriac_chord SET expires_at = ? WHERE group_id = ?",
                             (expires_at, group_id))
            size, claim, claim_until = (None, None, None) if row is None else row[:3]
            recorded = self._count(conn, group_id)
            claimed = (size is not None and recorded == size
                       and (claim is None or claim_until <= now))
            if claimed:
                conn.execute("UPDATE celeriac_chord SET claim = ?, claim_until = ? "
                             "WHERE group_id = ?", (token, now + claim_timeout, group_id))
        return ChordProgress(recorded=recorded, expected=size, added=added, claimed=claimed)

    def claim_chord(self, group_id: str, token: str, *, timeout: float) -> ChordClaim:
        now = time.time()
        with self._chord(group_id) as (conn, row):
            if row is None:
                return ChordClaim.CLOSED
            size, claim, claim_until, _ = row
            if claim == CHORD_DONE:
                return ChordClaim.CLOSED
            if claim not in (None, token) and claim_until > now:
                return ChordClaim.HELD
            if claim != token and (size is None or self._count(conn, group_id) != size):
                return ChordClaim.CLOSED
            conn.execute("UPDATE celeriac_chord SET claim = ?, claim_until = ? "
                         "WHERE group_id = ?", (token, now + timeout, group_id))
            return ChordClaim.OWNED

    def chord_parts(self, group_id: str) -> list[ChordPart]:
        with self.db as conn:
            rows = conn.execute(
                "SELECT p.position, p.part FROM celeriac_chord_part p JOIN celeriac_chord c "
                "ON c.group_id = p.group_id WHERE p.group_id = ? AND (c.expires_at IS NULL "
                "OR c.expires_at > ?) ORDER BY p.position, p.task_id",
                (group_id, time.time())).fetchall()
        parts = []
        for position, data in rows:
            doc = self.codec.decode(bytes(data))
            parts.append(ChordPart(doc["task_id"], None if position == LAST else position,
                                   doc["status"], doc["result"]))
        return parts

    def finish_chord(self, group_id: str, token: str, *, expires: float | None) -> bool:
        expires_at = None if expires is None else time.time() + expires
        with self._chord(group_id) as (conn, row):
            if row is None or row[1] != token:
                return False
            conn.execute("DELETE FROM celeriac_chord_part WHERE group_id = ?", (group_id,))
            conn.execute("UPDATE celeriac_chord SET size = NULL, claim = ?, claim_until = NULL, "
                         "expires_at = ? WHERE group_id = ?", (CHORD_DONE, expires_at, group_id))
            return True

    def _cleanup_chords(self, now: float) -> None:
        """Delete the rows of expired chords, 100 chords per transaction."""
        while True:
            with self._transaction() as conn:
                expired = [group_id for (group_id,) in conn.execute(
                    "SELECT group_id FROM celeriac_chord WHERE expires_at IS NOT NULL AND "
                    "expires_at <= ? LIMIT 100", (now,)).fetchall()]
                for group_id in expired:
                    self._drop_chord(conn, group_id)
            if len(expired) < 100:
                return

    # -- canvas: saved group results and compact chains ----------------------------------

    def save_group(self, group_id: str, document: Mapping[str, Any], *,
                   expires: float | None) -> None:
        """Upsert the group's row (``celeriac_group``)."""
        expires_at = None if expires is None else time.time() + expires
        with self.db as conn:
            conn.execute("INSERT INTO celeriac_group (group_id, document, expires_at) "
                         "VALUES (?, ?, ?) ON CONFLICT(group_id) DO UPDATE SET "
                         "document = excluded.document, expires_at = excluded.expires_at",
                         (group_id, self.codec.encode(document), expires_at))

    def restore_group(self, group_id: str) -> dict[str, Any] | None:
        with self.db as conn:
            row = conn.execute("SELECT document FROM celeriac_group WHERE group_id = ? AND "
                               "(expires_at IS NULL OR expires_at > ?)",
                               (group_id, time.time())).fetchone()
        return None if row is None else self.codec.decode(bytes(row[0]))

    def delete_group(self, group_id: str) -> None:
        with self.db as conn:
            conn.execute("DELETE FROM celeriac_group WHERE group_id = ?", (group_id,))

    def save_chain(self, chain_id: str, steps: Sequence[Mapping[str, Any]], *,
                   expires: float | None) -> None:
        """One row per step (``celeriac_chain_step``), in one transaction."""
        expires_at = None if expires is None else time.time() + expires
        rows = [(chain_id, position, self.codec.encode(step), expires_at)
                for position, step in enumerate(steps)]
        with self._transaction() as conn:
            conn.execute("DELETE FROM celeriac_chain_step WHERE chain_id = ?", (chain_id,))
            conn.executemany("INSERT INTO celeriac_chain_step (chain_id, position, step, "
                             "expires_at) VALUES (?, ?, ?, ?)", rows)

    def chain_step(self, chain_id: str, index: int) -> dict[str, Any] | None:
        """One primary-key read."""
        with self.db as conn:
            row = conn.execute("SELECT step FROM celeriac_chain_step WHERE chain_id = ? AND "
                               "position = ? AND (expires_at IS NULL OR expires_at > ?)",
                               (chain_id, index, time.time())).fetchone()
        return None if row is None else self.codec.decode(bytes(row[0]))

    def forget_chain(self, chain_id: str) -> None:
        with self.db as conn:
            conn.execute("DELETE FROM celeriac_chain_step WHERE chain_id = ?", (chain_id,))

    def _cleanup_canvas(self, now: float) -> None:
        """Delete expired saved groups and chain steps, a chunk per transaction."""
        for table, key in (("celeriac_group", "group_id"),
                           ("celeriac_chain_step", "chain_id, position")):
            while True:
                with self.db as conn:
                    count = conn.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                        f"WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                        (now, CLEANUP_CHUNK)).rowcount
                if count < CLEANUP_CHUNK:
                    break
