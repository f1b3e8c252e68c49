"""The broker's tables and every SQL statement the transport runs.

One :class:`BrokerStore` exists per process and file, shared by every kombu
connection of the process to that file (see :func:`acquire`). It owns the
single SQLite connection, the caches of routing data, the socket that wakes
consumers, and the heartbeat thread that renews leases.

Rows of ``kombu_message`` are in one of three states, all told by
``visible_at``:

* ready: ``visible_at IS NULL`` (in the partial index the claim reads);
* delayed: ``visible_at`` in the future and ``claimed_by IS NULL`` (an ETA);
* leased: ``visible_at`` in the future and ``claimed_by`` set to the token of
  the channel holding it. The lease is renewed while that channel's process
  lives; a row whose ``visible_at`` has passed is made ready by the sweep.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence

from ._sqlite import SharedConnection
from .heartbeat import DELAYED, READY, Heartbeat, ListeningFlags
from .schema import (
    ACK,
    BROADCAST_PROBE,
    BROADCAST_READ,
    CLAIM_RETURNING,
    INSERT,
    NEXT_DUE,
    PROBE,
    ROUTING_BUMP,
    ROUTING_VERSION,
    SELECT_READY,
    SWEEP,
    TAKE_RETURNING,
    create_schema,
)

logger = logging.getLogger(__name__)

CHUNK = 500
"""Ids per ``IN (...)`` list (well under SQLite's variable limit)."""
WAITER_STALE = 60.0
"""Waiters not seen for this long are not woken (their process is gone)."""
WAITER_PRUNE = 600.0
CACHE_TTL = 1.0
"""Seconds a queue's message TTL and its waiters list are trusted before being read again."""

CACHE_LIMIT = 4096
"""Entries a per-queue or per-exchange cache holds before it starts over."""

BROADCAST_KEY = "\x1f"
"""Prefix of waiter keys that stand for a fanout exchange, not a queue."""


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _bounded(cache: dict) -> dict:
    # Reply queues have a new name per client: caches keyed by queue would
    # otherwise grow for as long as a worker lives.
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    return cache


def _marks(n: int) -> str:
    return ",".join("?" * n)


class BrokerStore:
    """The SQL of the SQLite broker for one file, shared within a process."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0, durability: str = "normal") -> None:
        self.path = path
        self.db = SharedConnection(path, busy_timeout=busy_timeout, durability=durability,
                                   setup=create_schema)
        #: ``UPDATE ... RETURNING`` needs SQLite 3.35; older libraries use
        #: ``BEGIN IMMEDIATE`` + ``SELECT`` + ``UPDATE`` (same result, same speed).
        self.returning = sqlite3.sqlite_version_info >= (3, 35, 0)
        self.refs = 0
        self._waiters: dict[str, tuple[float, list[tuple[str, int]]]] = {}
        self._tables: dict[str, list[tuple[str, str | None, str]]] = {}
        self._types: dict[str, str | None] = {}
        self._routing_version = -1
        self._ttls: dict[str, tuple[float, float | None]] = {}
        self._declared: dict[str, float | None] = {}
        self._sender: socket.socket | None = None
        #: Which consumers are inside drain_events (shared by every process).
        self.flags = ListeningFlags(path)
        #: Renews the leases of this process's channels (see :mod:`.heartbeat`).
        self.heartbeat = Heartbeat(path, self._refresh_waiters)

    # -- messages ----------------------------------------------------------------------

    def publish(self, queue: str, priority: int, visible_at: float | None,
                expires_at: float | None, payload: str) -> None:
        """Insert one message and wake the consumers of ``queue``."""
        with self.db as conn:
            conn.execute(INSERT, (queue, priority, visible_at, expires_at, payload))
        self.ring(queue, DELAYED if visible_at is not None else READY)

    def publish_many(self, rows: Sequence[tuple[str, int, float | None, float | None, str]]) -> None:
        """Insert many messages in one transaction, then wake each queue's consumers once."""
        if not rows:
            return
        with self.db as conn:
            # Autocommit would make each row its own transaction: one for all.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        kinds: dict[str, bytes] = {}
        for queue, _priority, visible_at, _expires, _payload in rows:
            if visible_at is not None or queue not in kinds:
                kinds[queue] = DELAYED if visible_at is not None else kinds.get(queue, READY)
        for queue, kind in kinds.items():
            self.ring(queue, kind)

    def claim(self, queue: str, n: int, token: str, lease_until: float, *,
              take: bool = False, acks: Sequence[int] = ()) -> list[tuple]:
        """Lease up to ``n`` ready messages of ``queue`` (highest priority,
        then oldest first) to ``token`` until ``lease_until``.

        ``take`` deletes them instead (consumers without acknowledgements).
        ``acks`` are ids deleted in the same transaction (batched acks).
        Rows are ``(id, priority, deliveries, expires_at, payload)``.
        """
        with self.db as conn:
            if not acks and conn.execute(PROBE, (queue,)).fetchone() is None:
                # Read-only probe: WAL readers never wait for the write lock, so
                # consumers woken together do not queue for it to find nothing.
                return []
            if not acks and self.returning:
                if take:
                    rows = conn.execute(TAKE_RETURNING, (queue, n)).fetchall()
                else:
                    rows = conn.execute(CLAIM_RETURNING,
                                        (lease_until, token, queue, n)).fetchall()
            else:
                rows = self._claim_in_transaction(conn, queue, n, token, lease_until, take, acks)
        if len(rows) > 1:
            # RETURNING gives no order; deliver highest priority, then oldest, first.
            rows.sort(key=lambda row: (-row[1], row[0]))
        return rows

    def _claim_in_transaction(self, conn: sqlite3.Connection, queue: str, n: int, token: str,
                              lease_until: float, take: bool, acks: Sequence[int]) -> list[tuple]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for chunk in _chunks(list(acks)):
                conn.execute(f"DELETE FROM kombu_message WHERE id IN ({_marks(len(chunk))})", chunk)
            rows = conn.execute(SELECT_READY, (queue, n)).fetchall()
            if rows:
                ids = [row[0] for row in rows]
                if take:
                    conn.execute(f"DELETE FROM kombu_message WHERE id IN ({_marks(len(ids))})", ids)
                else:
                    conn.execute(
                        "UPDATE kombu_message SET visible_at = ?, claimed_by = ?, "
                        f"deliveries = deliveries + 1 WHERE id IN ({_marks(len(ids))})",
                        [lease_until, token, *ids])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return rows

    def ack(self, message_id: int) -> None:
        """Delete one message (by id, even if its lease ran out meanwhile)."""
        with self.db as conn:
            conn.execute(ACK, (message_id,))

    def ack_many(self, ids: Sequence[int]) -> None:
        """Delete messages by id."""
        if not ids:
            return
        with self.db as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(f"DELETE FROM kombu_message WHERE id IN ({_marks(len(chunk))})", chunk)

    def release(self, ids: Sequence[int], token: str) -> None:
        """Make messages leased to ``token`` ready again (requeue, never a copy)."""
        if not ids:
            return
        queues: set[str] = set()
        with self.db as conn:
            for chunk in _chunks(list(ids)):
                sql = ("UPDATE kombu_message SET visible_at = NULL, claimed_by = NULL "
                       f"WHERE claimed_by = ? AND id IN ({_marks(len(chunk))})")
                if self.returning:
                    queues.update(q for (q,) in conn.execute(sql + " RETURNING queue",
                                                             [token, *chunk]).fetchall())
                else:
                    conn.execute(sql, [token, *chunk])
        for queue in queues:
            self.ring(queue)

    def renew(self, ids: Sequence[int], token: str, lease_until: float) -> None:
        """Extend the leases ``token`` still holds on ``ids``."""
        with self.db as conn:
            for chunk in _chunks(list(ids)):
                conn.execute("UPDATE kombu_message SET visible_at = ? "
                             f"WHERE claimed_by = ? AND id IN ({_marks(len(chunk))})",
                             [lease_until, token, *chunk])

    def next_due(self) -> float | None:
        """When the next delayed or leased message becomes due (epoch seconds)."""
        with self.db as conn:
            return conn.execute(NEXT_DUE).fetchone()[0]

    def sweep(self, now: float) -> int:
        """Make every due row ready: expired leases and ETAs that arrived.

        Idempotent, so any consumer may sweep for everybody without a mutex.
        A swept row keeps its id, so it goes to the head of its priority band.
        """
        with self.db as conn:
            return conn.execute(SWEEP, (now,)).rowcount

    def size(self, queue: str) -> int:
        """Ready messages of ``queue``."""
        with self.db as conn:
            return conn.execute("SELECT count(*) FROM kombu_message "
                                "WHERE queue = ? AND visible_at IS NULL", (queue,)).fetchone()[0]

    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` nobody holds (ready and delayed), in chunks."""
        removed = 0
        for where in ("queue = ? AND visible_at IS NULL",
                      "visible_at IS NOT NULL AND claimed_by IS NULL AND queue = ?"):
            while True:
                with self.db as conn:
                    count = conn.execute(
                        f"DELETE FROM kombu_message WHERE id IN (SELECT id FROM kombu_message "
                        f"WHERE {where} LIMIT 5000)", (queue,)).rowcount
                removed += count
                if count < 5000:
                    break
        return removed

    def expire(self, now: float) -> int:
        """Delete messages whose time to live has passed."""
        with self.db as conn:
            return conn.execute("DELETE FROM kombu_message WHERE expires_at IS NOT NULL "
                                "AND expires_at <= ?", (now,)).rowcount

    # -- queues, exchanges, bindings -------------------------------------------------------

    def declare_queue(self, queue: str, message_ttl: float | None) -> None:
        """Record that ``queue`` exists, with its per-message time to live."""
        if self._declared.get(queue, -1.0) == message_ttl:
            return
        with self.db as conn:
            conn.execute("INSERT INTO kombu_queue (name, message_ttl) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET message_ttl = excluded.message_ttl",
                         (queue, message_ttl))
        _bounded(self._declared)[queue] = message_ttl
        _bounded(self._ttls)[queue] = (time.monotonic() + CACHE_TTL, message_ttl)

    def queue_ttl(self, queue: str) -> float | None:
        """The time to live of messages put on ``queue`` (declared by anyone)."""
        entry = self._ttls.get(queue)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            return entry[1]
        with self.db as conn:
            row = conn.execute("SELECT message_ttl FROM kombu_queue WHERE name = ?",
                               (queue,)).fetchone()
        ttl = row[0] if row else None
        _bounded(self._ttls)[queue] = (now + CACHE_TTL, ttl)
        return ttl

    def has_queue(self, queue: str) -> bool:
        """Whether ``queue`` was declared or bound by anyone."""
        with self.db as conn:
            return conn.execute(
                "SELECT 1 FROM kombu_queue WHERE name = ? UNION ALL "
                "SELECT 1 FROM kombu_binding WHERE queue = ? LIMIT 1", (queue, queue)
            ).fetchone() is not None

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue``: its messages (held ones too), bindings and waiters."""
        with self.db as conn:
            conn.execute("DELETE FROM kombu_message WHERE queue = ?", (queue,))
            if conn.execute("DELETE FROM kombu_binding WHERE queue = ?", (queue,)).rowcount:
                self._routing_changed(conn)
            conn.execute("DELETE FROM kombu_queue WHERE name = ?", (queue,))
            conn.execute("DELETE FROM kombu_waiter WHERE queue = ?", (queue,))
        self._declared.pop(queue, None)
        self._ttls.pop(queue, None)

    # Routing data (exchange types, bindings) is cached per process and read
    # again whenever any process changed it: every change bumps a counter, and
    # a lookup first reads the counter (one tiny primary-key read). A time-based
    # cache would route a reply to a queue deleted a moment ago, or miss a
    # queue bound a moment ago.

    def _routing_fresh(self, conn: sqlite3.Connection) -> None:
        version = conn.execute(ROUTING_VERSION).fetchone()[0]
        if version != self._routing_version:
            self._routing_version = version
            self._tables.clear()
            self._types.clear()

    def _routing_changed(self, conn: sqlite3.Connection) -> None:
        conn.execute(ROUTING_BUMP)
        self._tables.clear()
        self._types.clear()

    def declare_exchange(self, exchange: str, type_: str) -> None:
        """Record the type of ``exchange`` so undeclaring producers route alike."""
        with self.db as conn:
            self._routing_fresh(conn)
            if self._types.get(exchange) == type_:
                return
            if conn.execute("INSERT INTO kombu_exchange (name, type) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET type = excluded.type "
                            "WHERE kombu_exchange.type != excluded.type",
                            (exchange, type_)).rowcount:
                self._routing_changed(conn)
            self._types[exchange] = type_

    def exchange_type(self, exchange: str) -> str | None:
        """The recorded type of ``exchange``, or ``None``."""
        with self.db as conn:
            self._routing_fresh(conn)
            if exchange in self._types:
                return self._types[exchange]
            row = conn.execute("SELECT type FROM kombu_exchange WHERE name = ?",
                               (exchange,)).fetchone()
            type_ = _bounded(self._types)[exchange] = row[0] if row else None
            return type_

    def delete_exchange(self, exchange: str) -> None:
        """Forget ``exchange`` and its bindings (its queues stay)."""
        with self.db as conn:
            conn.execute("DELETE FROM kombu_binding WHERE exchange = ?", (exchange,))
            conn.execute("DELETE FROM kombu_exchange WHERE name = ?", (exchange,))
            self._routing_changed(conn)

    def bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str, *,
             fanout: bool = False) -> None:
        """Persist a binding, so producers that never declared it still route.

        A fanout binding starts reading the broadcast log at its newest entry.
        """
        with self.db as conn:
            if fanout:
                added = conn.execute(
                    "INSERT OR IGNORE INTO kombu_binding (exchange, routing_key, pattern, queue, "
                    "cursor) VALUES (?, '', '', ?, "
                    "(SELECT coalesce(max(seq), 0) FROM kombu_broadcast))", (exchange, queue))
            else:
                added = conn.execute(
                    "INSERT OR IGNORE INTO kombu_binding (exchange, routing_key, pattern, queue) "
                    "VALUES (?, ?, ?, ?)", (exchange, routing_key, pattern or "", queue))
            if added.rowcount:
                self._routing_changed(conn)

    def unbind(self, exchange: str, routing_key: str, pattern: str | None, queue: str, *,
               fanout: bool = False) -> None:
        """Remove a persisted binding."""
        if fanout:
            routing_key = pattern = ""
        with self.db as conn:
            if conn.execute("DELETE FROM kombu_binding WHERE exchange = ? AND routing_key = ? "
                            "AND pattern = ? AND queue = ?",
                            (exchange, routing_key, pattern or "", queue)).rowcount:
                self._routing_changed(conn)

    def fanout_exchanges(self, queue: str) -> list[str]:
        """The fanout exchanges ``queue`` is bound to (by any process)."""
        with self.db as conn:
            return [name for (name,) in conn.execute(
                "SELECT exchange FROM kombu_binding WHERE queue = ? AND cursor IS NOT NULL",
                (queue,)).fetchall()]

    def table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        """``[(routing_key, pattern, queue)]`` of ``exchange``, as kombu's exchange types read it."""
        with self.db as conn:
            self._routing_fresh(conn)
            table = self._tables.get(exchange)
            if table is None:
                rows = conn.execute("SELECT routing_key, pattern, queue FROM kombu_binding "
                                    "WHERE exchange = ?", (exchange,)).fetchall()
                table = _bounded(self._tables)[exchange] = [(rkey, pattern or None, queue)
                                                  for rkey, pattern, queue in rows]
            return table

    # -- broadcast log ---------------------------------------------------------------------

    def broadcast(self, exchange: str, routing_key: str, payload: str) -> None:
        """Append a fanout message to the log and wake the exchange's consumers."""
        with self.db as conn:
            conn.execute("INSERT INTO kombu_broadcast (exchange, routing_key, created_at, payload) "
                         "VALUES (?, ?, ?, ?)", (exchange, routing_key or "", time.time(), payload))
        self.ring(BROADCAST_KEY + exchange)

    def take_broadcasts(self, queue: str, n: int) -> list[tuple[int, str]]:
        """Up to ``n`` broadcasts ``queue`` has not read yet, oldest first:
        ``[(seq, payload)]``. Reading moves the queue's cursors, so several
        consumers of one queue share its broadcasts, as with any message."""
        with self.db as conn:
            if conn.execute(BROADCAST_PROBE, (queue,)).fetchone() is None:
                return []
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(BROADCAST_READ, (queue, n)).fetchall()
                last: dict[str, int] = {}
                for seq, exchange, _payload in rows:
                    last[exchange] = seq
                conn.executemany("UPDATE kombu_binding SET cursor = ? WHERE queue = ? "
                                 "AND exchange = ? AND cursor IS NOT NULL",
                                 [(seq, queue, exchange) for exchange, seq in last.items()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return [(seq, payload) for seq, _exchange, payload in rows]

    # -- maintenance -----------------------------------------------------------------------

    def maintain(self, broadcast_ttl: float) -> None:
        """Prune what nobody will read: expired messages, old broadcasts, stale waiters."""
        now = time.time()
        self.expire(now)
        with self.db as conn:
            conn.execute("DELETE FROM kombu_broadcast WHERE created_at < ?", (now - broadcast_ttl,))
            conn.execute("DELETE FROM kombu_waiter WHERE seen_at < ?", (now - WAITER_PRUNE,))

    # -- waking consumers ------------------------------------------------------------------

    def register_waiter(self, keys: Iterable[str], addr: str) -> None:
        """Ask publishers to ring ``addr`` for messages on ``keys``."""
        now = time.time()
        with self.db as conn:
            conn.executemany("INSERT OR REPLACE INTO kombu_waiter (queue, addr, pid, seen_at) "
                             "VALUES (?, ?, ?, ?)", [(key, addr, os.getpid(), now) for key in keys])
        self._waiters.clear()

    def unregister_waiter(self, addr: str, keys: Iterable[str] | None = None) -> None:
        """Stop ringing ``addr`` (for ``keys``, or at all)."""
        with self.db as conn:
            if keys is None:
                conn.execute("DELETE FROM kombu_waiter WHERE addr = ?", (addr,))
            else:
                conn.executemany("DELETE FROM kombu_waiter WHERE queue = ? AND addr = ?",
                                 [(key, addr) for key in keys])
        self._waiters.clear()

    def waiters(self, key: str) -> list[tuple[str, int]]:
        """Addresses of the live consumers of ``key`` (cached for a second)."""
        entry = self._waiters.get(key)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            return entry[1]
        with self.db as conn:
            rows = conn.execute("SELECT addr FROM kombu_waiter WHERE queue = ? AND seen_at > ?",
                                (key, time.time() - WAITER_STALE)).fetchall()
        addrs = []
        for (addr,) in rows:
            host, _, port = addr.rpartition(":")
            addrs.append((host, int(port)))
        _bounded(self._waiters)[key] = (now + CACHE_TTL, addrs)
        return addrs

    def ring(self, key: str, kind: bytes = READY) -> None:
        """Wake consumers of ``key``: for a new ready message, those idle in
        ``drain_events`` (see :class:`ListeningFlags`; busy ones claim before
        they sleep again); for a delayed one, every consumer, since each plans
        its own sleep from the next due time.
        """
        addrs = self.waiters(key)
        if not addrs:
            return
        sender = self._sender
        if sender is None:
            sender = self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.setblocking(False)
        if kind == READY:
            # Every idle one, not just one: a consumer killed while idle leaves
            # its byte set until its waiter row is pruned, and must not absorb
            # the only ring.
            idle = self.flags.listening
            addrs = [addr for addr in addrs if idle(addr[1])]
        for addr in addrs:
            try:
                sender.sendto(kind, addr)
            except OSError:  # a full buffer already holds a wake-up
                pass

    def _refresh_waiters(self, addrs: list[str]) -> None:
        now = time.time()
        with self.db as conn:
            conn.executemany("UPDATE kombu_waiter SET seen_at = ? WHERE addr = ?",
                             [(now, addr) for addr in addrs])

    def close(self) -> None:
        """Stop the heartbeat and close the connection (reopened if used again)."""
        self.heartbeat.stop()
        self.flags.close()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self.db.close()


_STORES: dict[str, BrokerStore] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire(path: str, *, busy_timeout: float = 5.0, durability: str = "normal") -> BrokerStore:
    """The process's store for ``path`` (created on first use); pair with :func:`release`."""
    with _REGISTRY_LOCK:
        store = _STORES.get(path)
        if store is None:
            store = _STORES[path] = BrokerStore(path, busy_timeout=busy_timeout,
                                                durability=durability)
        store.refs += 1
        return store


def release(store: BrokerStore) -> None:
    """Give back a store from :func:`acquire`; the last user closes it."""
    with _REGISTRY_LOCK:
        store.refs -= 1
        if store.refs > 0:
            return
        if _STORES.get(store.path) is store:
            del _STORES[store.path]
    store.close()


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for store in list(_STORES.values()):
        # The parent's channels are not ours to renew, and its threads are gone.
        store.heartbeat.reset()
        store._waiters.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
