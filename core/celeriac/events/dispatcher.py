"""Sending events in Celery's format (PROTOCOL.md D).

An event is a JSON object with a ``type`` (``task-succeeded``,
``worker-heartbeat``...) and the fields every event carries: ``hostname``,
``utcoffset``, ``pid``, ``clock`` (a Lamport clock) and ``timestamp``. It is
published, transient, on the ``celeryev`` exchange with the type as routing
key, dashes turned into dots (``task.succeeded``). Task events may be
buffered and sent together as one JSON list with the routing key
``task.multi``, as a Celery worker does; receivers accept both.

The exchange is a topic exchange, except on the transports whose kombu
``driver_type`` is one that Celery 5.7 turns into fanout (Redis: pub/sub), so
that Celery's receivers (``celery events``, Flower) and ours bind to the same
thing on the same broker.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kombu

    from ..app import App
    from ..protocol import TaskMessage

logger = logging.getLogger("celeriac.events")

#: kombu driver types on which Celery makes the event exchange fanout
#: (``celery.events.event.get_exchange``). Receivers of both kinds must agree.
FANOUT_DRIVER_TYPES = frozenset({"redis", "gcpubsub"})

#: Most task events kept before a buffered dispatcher sends them (Celery's figure).
BUFFER_LIMIT = 24

CONTENT_TYPE = "application/json"


def utcoffset() -> float:
    """The local offset from UTC in hours, as Celery writes it (west of UTC
    is positive: ``time.timezone / 3600``)."""
    if time.localtime().tm_isdst:
        return time.altzone / 3600
    return time.timezone / 3600


def routing_key_of(event_type: str) -> str:
    """``task-succeeded`` -> ``task.succeeded``."""
    return event_type.replace("-", ".")


def group_of(event_type: str) -> str:
    """``task-succeeded`` -> ``task``."""
    return event_type.split("-", 1)[0]


def event_exchange(connection: kombu.Connection, name: str) -> kombu.Exchange:
    """The event exchange ``name`` as Celery declares it on ``connection``'s broker."""
    import kombu

    kind = "fanout" if connection.transport.driver_type in FANOUT_DRIVER_TYPES else "topic"
    return kombu.Exchange(name, type=kind, durable=True, delivery_mode=1)


class LamportClock:
    """A logical clock (Lamport): :meth:`forward` before sending,
    :meth:`adjust` with the clock of what was received. Thread-safe."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        with self._lock:
            self.value = max(self.value, int(other)) + 1
            return self.value


_clocks: weakref.WeakKeyDictionary[Any, LamportClock] = weakref.WeakKeyDictionary()
_clocks_lock = threading.Lock()


def clock_for(app: App) -> LamportClock:
    """The Lamport clock of ``app`` (one per app and process): events, and
    anything else that stamps a ``clock``, share it."""
    with _clocks_lock:
        clock = _clocks.get(app)
        if clock is None:
            clock = _clocks[app] = LamportClock()
        return clock


class EventDispatcher:
    """Publishes events on a broker connection, on a channel of its own.

    Not thread-safe: only the thread that owns ``connection`` may call
    :meth:`send`, :meth:`flush` and :meth:`close` (kombu connections are not
    thread-safe). Publishing never retries and never raises: an event that
    cannot be sent is dropped and logged (events are transient by design;
    the first failure is a warning, later ones are debug lines until one
    succeeds again). The channel is opened at the first send and opened again
    after a failure.

    ``buffered``: event groups (``"task"``) whose events are kept until
    :meth:`flush`, or until :data:`BUFFER_LIMIT` have built up, and then sent
    as one list with the routing key ``<group>.multi``.
    """

    def __init__(self, connection: kombu.Connection, hostname: str, *, exchange: str = "celeryev",
                 clock: LamportClock | None = None, buffered: Iterable[str] = ()) -> None:
        self.connection = connection
        self.hostname = hostname
        self.exchange = event_exchange(connection, exchange)
        self.clock = clock or LamportClock()
        self.pid = os.getpid()
        self.buffered = frozenset(buffered)
        self._buffer: dict[str, list[dict[str, Any]]] = {group: [] for group in self.buffered}
        self._producer: Any = None
        self._failing = False

    def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """The event ``event_type`` with the common fields filled in (clock forwarded)."""
        body = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": self.pid,
                "clock": self.clock.forward(), **fields}
        body.setdefault("timestamp", time.time())
        body["type"] = event_type
        return body

    def send(self, event_type: str, **fields: Any) -> None:
        """Send one event (or buffer it, when its group is buffered)."""
        body = self.event(event_type, **fields)
        buffer = self._buffer.get(group_of(event_type))
        if buffer is None:
            self._publish(body, routing_key_of(event_type))
            return
        buffer.append(body)
        if len(buffer) >= BUFFER_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send the buffered events, one list per group."""
        for group, events in self._buffer.items():
            if events:
                batch = list(events)
                events.clear()
                self._publish(batch, f"{group}.multi")

    @property
    def pending(self) -> int:
        """How many buffered events wait for :meth:`flush`."""
        return sum(len(events) for events in self._buffer.values())

    def _publish(self, body: Any, routing_key: str) -> None:
        try:
            if self._producer is None:
                import kombu

                self._producer = kombu.Producer(self.connection.channel(), auto_declare=False)
            self._producer.publish(
                json.dumps(body), exchange=self.exchange, routing_key=routing_key,
                declare=[self.exchange], content_type=CONTENT_TYPE, content_encoding="utf-8",
                headers={"hostname": self.hostname}, delivery_mode=1, retry=False)
        except Exception as exc:
            self._drop_channel()
            log = logger.debug if self._failing else logger.warning
            log("could not send event %s (%s: %s); events are dropped until the broker takes "
                "them again", routing_key, type(exc).__name__, exc)
            self._failing = True
        else:
            self._failing = False

    def _drop_channel(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.channel.close()
            except Exception:
                logger.debug("closing the event channel failed", exc_info=True)

    def close(self) -> None:
        """Send what is buffered and close the channel (not the connection)."""
        self.flush()
        self._drop_channel()


# -- task-sent, from publishers ------------------------------------------------------------

_publishers: weakref.WeakKeyDictionary[Any, EventDispatcher] = weakref.WeakKeyDictionary()


def send_task_sent(app: App, connection: kombu.Connection,
                   sent: Iterable[tuple[TaskMessage, str, str, str]]) -> None:
    """Send a ``task-sent`` event for each ``(message, queue, exchange,
    routing_key)`` just published on ``connection`` (``task_send_sent_event``).

    Called by the publishing thread, which owns ``connection``.
    """
    dispatcher = _publishers.get(connection)
    if dispatcher is None:
        dispatcher = _publishers[connection] = EventDispatcher(
            connection, app.origin, exchange=app.conf.event_exchange, clock=clock_for(app))
    dispatcher.hostname = app.origin  # a worker's node name once it runs
    for message, queue, exchange, routing_key in sent:
        h = message.headers
        dispatcher.send("task-sent", uuid=h.id, root_id=h.root_id, parent_id=h.parent_id,
                        name=h.task, args=h.argsrepr, kwargs=h.kwargsrepr, retries=h.retries,
                        eta=h.eta, expires=h.expires, queue=queue, exchange=exchange,
                        routing_key=routing_key)
