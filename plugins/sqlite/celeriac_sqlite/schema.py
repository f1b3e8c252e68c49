"""The broker's tables, its indexes and the statements of the hot path.

Why the layout is what it is:

* ``visible_at IS NULL`` means ready, and ready rows have their own partial
  index ordered like the claim (``queue, priority DESC, id``): the first
  index entry for a queue *is* the next message, so a claim costs the same
  with a million delayed or leased rows in the table as with none.
* Delayed (ETA) and leased rows share the other partial index on
  ``visible_at``: "when is the next thing due" is one index-edge read, and
  the sweep that makes due rows ready is one range update.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS kombu_message (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    visible_at  REAL,
    claimed_by  TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    expires_at  REAL,
    payload     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS kombu_message_ready
    ON kombu_message(queue, priority DESC, id) WHERE visible_at IS NULL;
CREATE INDEX IF NOT EXISTS kombu_message_invisible
    ON kombu_message(visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS kombu_message_expires
    ON kombu_message(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS kombu_queue (
    name        TEXT PRIMARY KEY,
    message_ttl REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kombu_exchange (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kombu_binding (
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    queue       TEXT NOT NULL,
    cursor      INTEGER,
    PRIMARY KEY (exchange, routing_key, pattern, queue)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kombu_binding_queue ON kombu_binding(queue);
CREATE TABLE IF NOT EXISTS kombu_broadcast (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    created_at  REAL NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kombu_broadcast_created ON kombu_broadcast(created_at);
CREATE TABLE IF NOT EXISTS kombu_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO kombu_meta (key, value) VALUES ('routing', 0);
CREATE TABLE IF NOT EXISTS kombu_waiter (
    queue   TEXT    NOT NULL,
    addr    TEXT    NOT NULL,
    pid     INTEGER NOT NULL,
    seen_at REAL    NOT NULL,
    PRIMARY KEY (queue, addr)
) WITHOUT ROWID;
"""

# A fanout binding's ``cursor`` is the last broadcast its queue has read: the
# queue receives what was published after it was first bound, whichever
# connection consumes it, and nothing is copied per queue.
#
# AUTOINCREMENT on both logs: a deleted id is never handed out again, so a late
# ack (by id) cannot delete a newer message, and a broadcast cursor never
# skips rows written after the log was pruned empty.

CLAIM_RETURNING = (
    "UPDATE kombu_message SET visible_at = ?, claimed_by = ?, deliveries = deliveries + 1 "
    "WHERE id IN (SELECT id FROM kombu_message WHERE queue = ? AND visible_at IS NULL "
    "ORDER BY priority DESC, id LIMIT ?) "
    "RETURNING id, priority, deliveries, expires_at, payload")
TAKE_RETURNING = (
    "DELETE FROM kombu_message "
    "WHERE id IN (SELECT id FROM kombu_message WHERE queue = ? AND visible_at IS NULL "
    "ORDER BY priority DESC, id LIMIT ?) "
    "RETURNING id, priority, deliveries + 1, expires_at, payload")
SELECT_READY = (
    "SELECT id, priority, deliveries + 1, expires_at, payload FROM kombu_message "
    "WHERE queue = ? AND visible_at IS NULL ORDER BY priority DESC, id LIMIT ?")
PROBE = "SELECT 1 FROM kombu_message WHERE queue = ? AND visible_at IS NULL LIMIT 1"
INSERT = ("INSERT INTO kombu_message (queue, priority, visible_at, expires_at, payload) "
          "VALUES (?, ?, ?, ?, ?)")
ACK = "DELETE FROM kombu_message WHERE id = ?"
NEXT_DUE = "SELECT min(visible_at) FROM kombu_message WHERE visible_at IS NOT NULL"
BROADCAST_PROBE = (
    "SELECT 1 FROM kombu_binding k JOIN kombu_broadcast b ON b.exchange = k.exchange "
    "AND b.seq > k.cursor WHERE k.queue = ? AND k.cursor IS NOT NULL LIMIT 1")
BROADCAST_READ = (
    "SELECT b.seq, b.exchange, b.payload FROM kombu_binding k JOIN kombu_broadcast b "
    "ON b.exchange = k.exchange AND b.seq > k.cursor WHERE k.queue = ? AND k.cursor IS NOT NULL "
    "ORDER BY b.seq LIMIT ?")
ROUTING_VERSION = "SELECT value FROM kombu_meta WHERE key = 'routing'"
ROUTING_BUMP = "UPDATE kombu_meta SET value = value + 1 WHERE key = 'routing'"
SWEEP = ("UPDATE kombu_message SET visible_at = NULL, claimed_by = NULL "
         "WHERE visible_at IS NOT NULL AND visible_at <= ?")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the broker's tables (idempotent, safe when processes race)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
