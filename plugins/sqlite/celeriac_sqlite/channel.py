"""The channel and QoS of the SQLite transport: what kombu calls to publish,
claim, acknowledge and route. Every statement goes through the process's
:class:`~celeriac_sqlite.store.BrokerStore`; the drain loop that calls
:meth:`Channel._get_bulk` lives in :mod:`celeriac_sqlite.transport`.

Delivery tags are ``"<row id>.<delivery number>"``, made at each delivery
(kombu's own tag is made at publish time and stored with the message, so a
redelivered message would repeat it). Broadcasts, which are not leased, get
tags starting with ``b``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from queue import Empty
from typing import TYPE_CHECKING, Any

from celeriac.timeutils import eta_epoch
from kombu.transport import virtual
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from kombu.utils.scheduling import FairCycle

from . import store as _store

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["Channel", "QoS"]

logger = logging.getLogger(__name__)

_loads = json.loads
_dumps = json.dumps
_time = time.time


def _encode(message: dict[str, Any]) -> str:
    # The plain encoder (C, no per-call set-up) handles the usual all-JSON
    # envelope; kombu's encoder is for headers holding dates, UUIDs and such.
    try:
        return _dumps(message)
    except TypeError:
        return kombu_dumps(message)


def _delivered(payload: str, delivery_tag: str, deliveries: int) -> dict[str, Any]:
    """The stored message as delivered this time: its tag for this delivery,
    the delivery count, and the redelivered flag."""
    message = _decode(payload)
    props = message["properties"]
    props["delivery_tag"] = delivery_tag
    info = props.get("delivery_info")
    if info is None:
        info = props["delivery_info"] = {}
    info["delivery_count"] = deliveries
    info["redelivered"] = deliveries > 1
    return message


def _decode(payload: str) -> dict[str, Any]:
    # kombu's decoder restores dates and such in headers but calls a hook per
    # object; the plain decoder is enough for the usual all-JSON envelope.
    if '"__type__"' in payload:
        return kombu_loads(payload)
    return _loads(payload)


def _row_id(delivery_tag: str) -> int | None:
    """The message id in a delivery tag (``"<id>.<delivery>"``); None for broadcasts."""
    if delivery_tag[0] == "b":
        return None
    return int(delivery_tag.partition(".")[0])


class QoS(virtual.QoS):
    """Prefetch accounting plus the store's acknowledgements.

    kombu's base class only forgets acknowledged messages in memory and
    re-publishes a copy on requeue; with leases, an ack deletes the row and a
    requeue releases the lease of the row in place.
    """

    def _window_full(self) -> bool:
        pcount = self.prefetch_count
        return bool(pcount) and len(self._delivered) - len(self._dirty) >= pcount

    def ack(self, delivery_tag: str) -> None:
        """Delete the message (in ``batched`` mode: at the next claim)."""
        full = self._window_full()
        self.channel._settle(delivery_tag, delete=True)
        self._quick_ack(delivery_tag)
        if full:
            # The consumer may be asleep because its window was full; an ack
            # from another thread would otherwise only be seen at the next poll.
            self.channel._wake()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Requeue: release the lease (the row becomes ready, flagged redelivered
        when delivered again). Otherwise delete the message."""
        full = self._window_full()
        self.channel._settle(delivery_tag, delete=not requeue)
        self._quick_ack(delivery_tag)
        if full:
            self.channel._wake()

    def restore_unacked(self) -> list:
        """Release every message this channel holds (close, recover)."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        try:
            self.channel._release_tags(tags)
        except Exception:
            # Not lost: the leases run out and the sweep makes them ready.
            logger.warning("could not release %d messages; they come back after the "
                           "visibility timeout", len(tags), exc_info=True)
        return []

    def held_ids(self) -> list[int]:
        """Ids of the rows delivered and not yet settled (read from any thread)."""
        for _ in range(5):
            try:
                tags = list(self._delivered)
                dirty = set(self._dirty)
                break
            except RuntimeError:  # changed size during iteration
                continue
        else:
            return []
        return [int(tag.partition(".")[0]) for tag in tags
                if tag not in dirty and tag[0] != "b"]


class Channel(virtual.Channel):
    """A kombu virtual channel over the shared :class:`~celeriac_sqlite.store.BrokerStore`."""

    QoS = QoS
    supports_fanout = True
    do_restore = True
    #: ``None`` stores text bodies as they are, other bytes as base64 (see
    #: :meth:`encode_body`); set ``body_encoding`` to force kombu's base64.
    body_encoding: str | None = None  # type: ignore[assignment]

    visibility_timeout = 60.0
    claim_batch = 100
    broadcast_ttl = 300.0
    ack_mode = "immediate"

    from_transport_options = (  # type: ignore[assignment]
        *virtual.Channel.from_transport_options, "visibility_timeout", "claim_batch",
        "broadcast_ttl", "ack_mode")

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.visibility_timeout = float(self.visibility_timeout)
        self.claim_batch = max(int(self.claim_batch), 1)
        self.broadcast_ttl = float(self.broadcast_ttl)
        self.renew_interval = self.visibility_timeout / 4
        if connection.store is None:
            raise RuntimeError("the transport's connection is closed")
        self._store: _store.BrokerStore = connection.store
        self.token = uuid.uuid4().hex
        self._noack_queues: set[str] = set()
        self._fanout: dict[str, set[str]] = {}
        self._pending_acks: deque[int] = deque()  # appended from any thread
        self._holding = False
        #: Leases belong to the process that claimed them. A forked child runs
        #: its copy of the parent's finalizers and may close inherited
        #: connections; it must not release the parent's messages.
        self._pid = os.getpid()

    # -- publishing ------------------------------------------------------------------------

    def _next_delivery_tag(self) -> str:
        # The tag is set at each delivery ("<id>.<delivery>"); a uuid per
        # publish would only be thrown away.
        return ""

    def encode_body(self, body: Any, encoding: str | None = None) -> tuple[Any, str | None]:
        """Keep text (and UTF-8 bytes) as text; base64 only for other bytes."""
        if encoding is not None:
            return super().encode_body(body, encoding)
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                return bytes(body).decode("utf-8"), None
            except UnicodeDecodeError:
                return super().encode_body(bytes(body), "base64")
        return body, None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        """Insert ``message``; invisible until its ``eta`` header when that is ahead."""
        self._store.publish(*self._row(queue, message))

    def publish_many(self, items: list[tuple[dict[str, Any], str, str]]) -> None:
        """Publish prepared messages in one transaction (``TransportPlugin.publish_many``).

        Messages to the default exchange (how tasks travel) are inserted
        together; any other exchange is routed one message at a time as
        ``basic_publish`` does.
        """
        rows = []
        for message, exchange, routing_key in items:
            if exchange:
                self.basic_publish(message, exchange, routing_key)
                continue
            self._inplace_augment_message(message, exchange, routing_key)
            rows.append(self._row(routing_key, message))
        self._store.publish_many(rows)

    def _row(self, queue: str, message: dict[str, Any]) -> tuple[str, int, float | None,
                                                                 float | None, str]:
        """The ``kombu_message`` row of ``message`` in ``queue``."""
        now = _time()
        visible_at = None
        headers = message.get("headers")
        if headers and headers.get("eta"):
            eta = eta_epoch(headers)
            if eta is not None and eta > now:
                visible_at = eta
        expires_at = None
        expiration = message["properties"].get("expiration")
        if headers and headers.get("task"):
            # A task message carries its own ``expires`` header, which the
            # worker enforces and records (REVOKED), so a waiting caller
            # learns of it. Dropping it here as a broker TTL (Celery sets
            # ``expiration`` from ``expires``) would leave that caller waiting.
            expiration = None
        if expiration is not None:
            try:
                expires_at = now + float(expiration) / 1000.0
            except (TypeError, ValueError):
                pass
        else:
            ttl = self._store.queue_ttl(queue)
            if ttl is not None:
                expires_at = now + ttl
        return (queue, self._get_message_priority(message), visible_at, expires_at,
                _encode(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str,
                    **kwargs: Any) -> None:
        """Append to the broadcast log (every subscribed queue reads it once)."""
        self._store.broadcast(exchange, routing_key, _encode(message))

    # -- routing ---------------------------------------------------------------------------

    def exchange_declare(self, exchange: str | None = None, type: str = "direct",
                         durable: bool = False, auto_delete: bool = False,
                         arguments: Any = None, nowait: bool = False, passive: bool = False) -> None:
        """Declare ``exchange`` and record its type in the file."""
        if passive and exchange and exchange not in self.state.exchanges:
            found = self._store.exchange_type(exchange)
            if found is not None:
                self.state.exchanges[exchange] = {"type": found, "durable": durable,
                                                  "auto_delete": auto_delete,
                                                  "arguments": arguments or {}, "table": []}
        super().exchange_declare(exchange, type, durable, auto_delete, arguments, nowait, passive)
        if not passive:
            type = type or "direct"
            self._store.declare_exchange(exchange or f"amq.{type}", type)

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        """Forget ``exchange`` and its bindings; unlike kombu's base, keep its queues."""
        self.state.exchanges.pop(exchange, None)
        self._store.delete_exchange(exchange)

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        """The exchange type, from this process's declarations or else the file."""
        entry = self.state.exchanges.get(exchange)
        type_ = entry["type"] if entry is not None else (self._store.exchange_type(exchange)
                                                         or default)
        return self.exchange_types[type_]

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        """Bindings of ``exchange`` made by any process (every bind is stored)."""
        table = self._store.table(exchange)
        if table:
            return table
        entry = self.state.exchanges.get(exchange)
        return entry.get("table", []) if entry else []

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str | None, queue: str) -> None:
        fanout = self.typeof(exchange).type == "fanout"
        if fanout:
            self._store.declare_exchange(exchange, "fanout")
        self._store.bind(exchange, routing_key, pattern, queue, fanout=fanout)
        if fanout and exchange not in self._fanout.setdefault(queue, set()):
            self._fanout[queue].add(exchange)
            if queue in self._active_queues:
                self.connection.listen([_store.BROADCAST_KEY + exchange])

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: Any = None, **kwargs: Any) -> None:
        """Remove the binding here and in the file."""
        exchange = exchange or "amq.direct"
        self.state.binding_delete(queue, exchange, routing_key)
        typ = self.typeof(exchange)
        meta = typ.prepare_bind(queue, exchange, routing_key, arguments)
        entry = self.state.exchanges.get(exchange)
        if entry is not None:
            entry["table"] = [m for m in entry.get("table", []) if m != meta]
        fanout = typ.type == "fanout"
        self._store.unbind(exchange, routing_key, meta[1], queue, fanout=fanout)
        exchanges = self._fanout.get(queue)
        if fanout and exchanges is not None and exchange in exchanges:
            exchanges.discard(exchange)
            if queue in self._active_queues:
                self.connection.unlisten([_store.BROADCAST_KEY + exchange])

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """Turn ``Queue(message_ttl=...)`` into ``x-message-ttl`` (kombu's
        virtual channels drop it), which :meth:`_new_queue` stores."""
        from kombu.transport.base import to_rabbitmq_queue_arguments

        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        arguments = kwargs.get("arguments") or {}
        ttl = arguments.get("x-message-ttl")
        self._store.declare_queue(queue, float(ttl) / 1000.0 if ttl is not None else None)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self._store.has_queue(queue)

    def _size(self, queue: str) -> int:
        return self._store.size(queue)

    def _purge(self, queue: str) -> int:
        return self._store.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._store.delete_queue(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        """Delete ``queue`` with its messages and bindings, in every process."""
        if if_empty and self._size(queue):
            return
        for key in self.state.queue_index.get(queue, ()):
            entry = self.state.exchanges.get(key.exchange)
            if entry is not None:
                entry["table"] = [m for m in entry.get("table", []) if m[2] != queue]
        self.state.queue_bindings_delete(queue)
        self._fanout.pop(queue, None)
        self._store.delete_queue(queue)

    # -- consuming -------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str,
                      **kwargs: Any) -> None:
        """Consume ``queue`` and ask its publishers to wake this connection."""
        if no_ack:
            self._noack_queues.add(queue)
        # Bound to a fanout exchange by another connection, maybe another process.
        for exchange in self._store.fanout_exchanges(queue):
            self._fanout.setdefault(queue, set()).add(exchange)
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        self.connection.listen(self._listen_keys(queue))

    def basic_cancel(self, consumer_tag: str) -> None:
        """Stop consuming; the connection stops listening for the queue."""
        queue = self._tag_to_queue.get(consumer_tag) if consumer_tag in self._consumers else None
        super().basic_cancel(consumer_tag)
        if queue is not None:
            if queue not in self._active_queues:
                self._noack_queues.discard(queue)
            self.connection.unlisten(self._listen_keys(queue))

    def _listen_keys(self, queue: str) -> list[str]:
        return [queue, *(_store.BROADCAST_KEY + ex for ex in self._fanout.get(queue, ()))]

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message, or ``None``; ``no_ack`` deletes it at once."""
        try:
            payload = self._get(queue, no_ack=no_ack)
        except Empty:
            return None
        message = self.Message(payload, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None, no_ack: bool = False) -> dict:
        got: list[dict] = []
        self._fetch(queue, 1, lambda payload, _queue: got.append(payload), no_ack)
        if not got:
            raise Empty()
        return got[0]

    def _reset_cycle(self) -> None:
        self._cycle = FairCycle(self._get_bulk, self._active_queues, Empty)

    def _get_bulk(self, queue: str, callback: Any, timeout: float | None = None) -> None:
        """Claim up to the prefetch headroom (capped by ``claim_batch``) and deliver."""
        estimate = self.qos.can_consume_max_estimate()
        n = self.claim_batch if estimate is None else min(max(estimate, 1), self.claim_batch)
        if not self._fetch(queue, n, callback, queue in self._noack_queues):
            raise Empty()

    def _fetch(self, queue: str, n: int, callback: Any, no_ack: bool) -> int:
        delivered = 0
        if self._fanout.get(queue):
            delivered = self._fetch_broadcasts(queue, n, callback)
            n -= delivered
        if n <= 0:
            return delivered
        acks = self._take_pending_acks()
        rows = self._store.claim(queue, n, self.token, _time() + self.visibility_timeout,
                                 take=no_ack, acks=acks)
        if not rows:
            return delivered
        if not no_ack and not self._holding:
            self._holding = True
            self._store.heartbeat.hold(self)
        consumers = self.connection._callbacks if callback == self.connection._deliver else None
        return delivered + self._deliver_rows(queue, rows, callback, no_ack, consumers)

    def _deliver_rows(self, queue: str, rows: list[tuple], callback: Any, no_ack: bool,
                      consumers: dict | None) -> int:
        now = _time()
        expired: list[int] = []
        delivered = 0
        for index, (row_id, _priority, deliveries, expires_at, payload) in enumerate(rows):
            if consumers is not None and queue not in consumers and not no_ack:
                # Cancelled by a callback of this batch: the rest go back now.
                self._store.release([row[0] for row in rows[index:]], self.token)
                break
            if expires_at is not None and expires_at <= now:
                expired.append(row_id)
                continue
            message = _delivered(payload, f"{row_id}.{deliveries}", deliveries)
            try:
                callback(message, queue)
            except BaseException:
                # The rest were claimed but never handed over: give them back now
                # rather than after the visibility timeout.
                if not no_ack:
                    rest = [row[0] for row in rows[index + 1:]]
                    self._store.release(rest, self.token)
                raise
            delivered += 1
        if expired and not no_ack:
            self._store.ack_many(expired)
        return delivered

    def _fetch_broadcasts(self, queue: str, n: int, callback: Any) -> int:
        rows = self._store.take_broadcasts(queue, n)
        for seq, payload in rows:
            # Broadcasts are not leased: settling one changes nothing in the file.
            callback(_delivered(payload, f"b{seq}.{self.channel_id}.{queue}", 1), queue)
        return len(rows)

    # -- settling --------------------------------------------------------------------------

    def _settle(self, delivery_tag: str, *, delete: bool) -> None:
        row_id = _row_id(delivery_tag)
        if row_id is None:
            return
        if not delete:
            self._store.release([row_id], self.token)
        elif self.ack_mode == "batched":
            self._pending_acks.append(row_id)
        else:
            self._store.ack(row_id)

    def _release_tags(self, tags: list[str]) -> None:
        if os.getpid() != self._pid:
            return
        self.flush_acks()
        ids = [i for i in map(_row_id, tags) if i is not None]
        self._store.release(ids, self.token)

    def _take_pending_acks(self) -> list[int]:
        pending = self._pending_acks
        taken: list[int] = []
        while pending:
            try:
                taken.append(pending.popleft())
            except IndexError:
                break
        return taken

    def flush_acks(self) -> None:
        """Delete the messages acknowledged in ``batched`` mode and not yet deleted."""
        if self._pending_acks:
            self._store.ack_many(self._take_pending_acks())

    def _wake(self) -> None:
        connection = self.connection
        if connection is not None:
            connection.wake()

    def renew_leases(self) -> None:
        """Extend the leases of the messages this channel holds (heartbeat thread)."""
        self.flush_acks()
        qos = self._qos
        if qos is None or self.closed:
            return
        ids = qos.held_ids()
        if ids:
            self._store.renew(ids, self.token, _time() + self.visibility_timeout)

    def close(self) -> None:
        """Close: release what this channel holds and stop its heartbeat."""
        if not self.closed:
            try:
                super().close()
            finally:
                self.flush_acks()
                self._store.heartbeat.unhold(self)
