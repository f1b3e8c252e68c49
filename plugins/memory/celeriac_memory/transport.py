"""An in-process kombu transport that behaves like a real broker.

Unlike kombu's own ``memory`` transport it keeps a message until it is
acknowledged (unacked messages come back on ``reject(requeue=True)`` and when
their channel or connection closes), counts deliveries, honours the ``eta``
header and priorities, supports fanout, and wakes a blocked
``drain_events`` the moment a message is published instead of polling.

Every connection in the process that names the same broker shares one
:class:`Broker`. The broker's name is the URL after ``memory://`` (``memory://``
is ``""``, ``memory://other`` is ``"other"``), so tests isolate themselves by
picking a name and calling :func:`reset`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from queue import Empty
from typing import Any

from celeriac.timeutils import eta_epoch
from kombu.transport import virtual

__all__ = ["Broker", "Channel", "QoS", "Transport", "broker", "reset"]

_registry_lock = threading.Lock()
_brokers: dict[str, Broker] = {}


class _Entry:
    """One stored message in one queue."""

    __slots__ = ("seq", "priority", "eta", "payload", "deliveries")

    def __init__(self, seq: int, priority: int, eta: float | None, payload: dict[str, Any]) -> None:
        self.seq = seq
        self.priority = priority
        self.eta = eta
        self.payload = payload
        self.deliveries = 0


class _Queue:
    """Ready messages by (priority desc, publish order) and delayed ones by eta."""

    __slots__ = ("ready", "delayed")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Entry]] = []
        self.delayed: list[tuple[float, int, _Entry]] = []

    def push(self, entry: _Entry, now: float) -> None:
        if entry.eta is not None and entry.eta > now:
            heapq.heappush(self.delayed, (entry.eta, entry.seq, entry))
        else:
            heapq.heappush(self.ready, (-entry.priority, entry.seq, entry))

    def pop(self, now: float) -> _Entry | None:
        while self.delayed and self.delayed[0][0] <= now:
            entry = heapq.heappop(self.delayed)[2]
            heapq.heappush(self.ready, (-entry.priority, entry.seq, entry))
        if not self.ready:
            return None
        return heapq.heappop(self.ready)[2]

    def __len__(self) -> int:
        return len(self.ready) + len(self.delayed)

    def clear(self) -> int:
        count = len(self)
        self.ready.clear()
        self.delayed.clear()
        return count


class Broker:
    """The state of one named in-memory broker: queues, unacknowledged
    messages, and exchanges and bindings (a kombu ``BrokerState`` shared by
    every connection, so fanout works across connections).

    ``changed`` is notified on every change that could let a waiting consumer
    proceed (a publish, a requeue, an ack freeing a prefetch slot).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.changed = threading.Condition(threading.RLock())
        self.state = virtual.BrokerState()
        self.queues: dict[str, _Queue] = {}
        self.unacked: dict[str, tuple[str, _Entry, int]] = {}
        self.version = 0
        self._seq = itertools.count()

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def declare(self, queue: str) -> None:
        with self.changed:
            self.queues.setdefault(queue, _Queue())

    def has_queue(self, queue: str) -> bool:
        with self.changed:
            return queue in self.queues

    def put(self, queue: str, payload: dict[str, Any], priority: int) -> None:
        """Store a copy of ``payload`` (the same dict may go to several queues)."""
        payload = dict(payload)
        payload["properties"] = dict(payload.get("properties") or {})
        payload["headers"] = dict(payload.get("headers") or {})
        eta = eta_epoch(payload["headers"])
        with self.changed:
            entry = _Entry(next(self._seq), priority, eta, payload)
            self.queues.setdefault(queue, _Queue()).push(entry, time.time())
            self._bump()

    def take(self, queue: str, owner: int, track: bool) -> dict[str, Any]:
        """The next visible message of ``queue`` as a delivery payload, or
        raise :class:`queue.Empty`. With ``track`` it stays stored, unacked,
        under ``owner`` until settled or released."""
        with self.changed:
            stored = self.queues.get(queue)
            entry = stored.pop(time.time()) if stored is not None else None
            if entry is None:
                raise Empty()
            entry.deliveries += 1
            # A fresh tag per delivery: fanout copies share the publisher's
            # tag, and a redelivery must not collide with a stale ack.
            tag = uuid.uuid4().hex
            if track:
                self.unacked[tag] = (queue, entry, owner)
        payload = dict(entry.payload)
        properties = dict(payload["properties"])
        delivery_info = dict(properties.get("delivery_info") or {})
        redelivered = entry.deliveries > 1
        delivery_info.update(delivery_count=entry.deliveries, redelivered=redelivered)
        properties.update(delivery_info=delivery_info, delivery_tag=tag)
        payload.update(properties=properties, headers=dict(payload["headers"]),
                       redelivered=redelivered)
        return payload

    def settle(self, tag: str) -> None:
        """Forget an unacked delivery for good (ack, or reject without requeue)."""
        with self.changed:
            if self.unacked.pop(tag, None) is not None:
                self._bump()

    def release(self, tags: Any) -> None:
        """Put unacked deliveries back where they were in their queues."""
        with self.changed:
            now = time.time()
            for tag in tags:
                found = self.unacked.pop(tag, None)
                if found is None:
                    continue
                queue, entry, _owner = found
                if queue in self.queues:
                    self.queues[queue].push(entry, now)
            self._bump()

    def release_owner(self, owner: int) -> None:
        """Put back everything a closed channel had not settled."""
        with self.changed:
            self.release([tag for tag, (_, _, o) in self.unacked.items() if o == owner])

    def size(self, queue: str) -> int:
        """Messages waiting in ``queue``, including those not yet due."""
        with self.changed:
            stored = self.queues.get(queue)
            return len(stored) if stored is not None else 0

    def purge(self, queue: str) -> int:
        with self.changed:
            stored = self.queues.get(queue)
            return stored.clear() if stored is not None else 0

    def delete(self, queue: str) -> None:
        with self.changed:
            self.queues.pop(queue, None)
            self.state.queue_bindings_delete(queue)
            # kombu leaves the queue in exchange routing tables, where a
            # later publish would bring it back to life.
            for exchange in (self.state.exchanges or {}).values():
                table = exchange.get("table") or []
                table[:] = [meta for meta in table if meta[2] != queue]

    def next_due(self) -> float | None:
        """The earliest eta of a delayed message, as Unix time."""
        dues = [q.delayed[0][0] for q in self.queues.values() if q.delayed]
        return min(dues) if dues else None

    def wait_for_change(self, seen: int, deadline: float | None) -> bool:
        """Block until the version moves past ``seen`` or a delayed message
        falls due (True), or the monotonic ``deadline`` passes (False)."""
        with self.changed:
            while self.version == seen:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                due = self.next_due()
                if due is not None:
                    until_due = due - time.time()
                    if until_due <= 0:
                        return True
                    wait = until_due if wait is None else min(wait, until_due)
                self.changed.wait(wait)
            return True

    def clear(self) -> None:
        with self.changed:
            self.queues.clear()
            self.unacked.clear()
            self.state.clear()
            self._bump()


def broker(name: str = "") -> Broker:
    """The process-wide broker called ``name`` (created on first use)."""
    with _registry_lock:
        found = _brokers.get(name)
        if found is None:
            found = _brokers[name] = Broker(name)
        return found


def reset(vhost: str | None = None) -> None:
    """Empty the broker named ``vhost`` (``"other"`` for ``memory://other``),
    or every broker when ``None``. Connections stay usable."""
    with _registry_lock:
        targets = list(_brokers.values()) if vhost is None else [_brokers.get(vhost.strip("/"))]
    for target in targets:
        if target is not None:
            target.clear()


def _broker_name(client: Any) -> str:
    host = client.hostname or ""
    vhost = (client.virtual_host or "").strip("/")
    name = f"{host}/{vhost}" if vhost else host
    return name.strip("/")


class QoS(virtual.QoS):
    """Settles and releases in the broker, which keeps a message until then."""

    def ack(self, delivery_tag: str) -> None:
        self.channel.broker.settle(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.channel.broker.release([delivery_tag])
        else:
            self.channel.broker.settle(delivery_tag)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        # The base re-publishes copies, which would duplicate messages the
        # broker still holds; releasing by tag puts the originals back.
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        self.channel.broker.release(tags)
        return []


_owners = itertools.count(1)


class Channel(virtual.Channel):
    """A channel onto the shared :class:`Broker` of its connection."""

    QoS = QoS
    supports_fanout = True
    # Bodies stay as the bytes the producer gave; nothing leaves the process.
    body_encoding = None  # type: ignore[assignment]

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        self.broker = connection.broker
        self._owner = next(_owners)
        self._no_ack_queues: set[str] = set()
        super().__init__(connection, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.broker.declare(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.broker.has_queue(queue)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.broker.put(queue, message, self._get_message_priority(message))

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str,
                    **kwargs: Any) -> None:
        for queue in self._lookup(exchange, routing_key):
            self._put(queue, message)

    # Exchanges and bindings are shared by every connection, which may live
    # in other threads: change them under the broker's lock.
    def exchange_declare(self, *args: Any, **kwargs: Any) -> Any:
        with self.broker.changed:
            return super().exchange_declare(*args, **kwargs)

    def queue_bind(self, *args: Any, **kwargs: Any) -> Any:
        with self.broker.changed:
            return super().queue_bind(*args, **kwargs)

    def queue_unbind(self, *args: Any, **kwargs: Any) -> Any:
        with self.broker.changed:
            return super().queue_unbind(*args, **kwargs)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        """Bindings already live in the shared ``BrokerState``."""

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self.broker.take(queue, self._owner, track=queue not in self._no_ack_queues)

    def _size(self, queue: str) -> int:
        return self.broker.size(queue)

    def _purge(self, queue: str) -> int:
        return self.broker.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.broker.delete(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        """Delete ``queue``, bound or not (the base only deletes bound queues)."""
        if if_empty and self._size(queue):
            return
        super().queue_delete(queue, if_unused=if_unused, if_empty=if_empty, **kwargs)
        self.broker.delete(queue)

    def _restore(self, message: Any) -> None:
        self.broker.release([message.delivery_tag])

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        self._no_ack_queues.discard(self._tag_to_queue.get(consumer_tag))
        return super().basic_cancel(consumer_tag)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            raw = self.broker.take(queue, self._owner, track=not no_ack)
        except Empty:
            return None
        message = self.Message(raw, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def after_reply_message_received(self, queue: str) -> None:
        """Keep reply queues; kombu's default deletes them after one reply."""

    def close(self) -> None:
        super().close()
        self.broker.release_owner(self._owner)


class Transport(virtual.Transport):
    """kombu transport class (``celeriac_memory.transport:Transport``)."""

    Channel = Channel
    driver_type = "memory"
    driver_name = "celeriac-memory"
    polling_interval = None  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.broker = broker(_broker_name(client))
        self.state = self.broker.state

    def driver_version(self) -> str:
        return "1"

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Deliver one message, sleeping on the broker's condition (not a
        polling loop) until one is there; ``socket.timeout`` at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self.cycle is not None  # made by the base constructor
        while True:
            seen = self.broker.version
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            if self._interrupted:
                self._interrupted = False
                raise TimeoutError()
            if not self.broker.wait_for_change(seen, deadline):
                raise TimeoutError()

    _interrupted = False

    def interrupt(self) -> None:
        """Make a ``drain_events`` blocked in another thread return (sticky:
        a wake while none is blocked makes the next one return at once)."""
        self._interrupted = True
        with self.broker.changed:
            self.broker._bump()

