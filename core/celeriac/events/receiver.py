"""Receiving events from every node (celeriac and Celery alike)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .dispatcher import LamportClock, clock_for, event_exchange, utcoffset

if TYPE_CHECKING:
    import kombu

    from ..app import App

logger = logging.getLogger("celeriac.events")

Handler = Callable[[dict[str, Any]], Any]

#: Where ``task-sent`` events sit on the clock: clients do not keep their
#: clock in step with the cluster, so their value is not used (as in Celery).
CLIENT_CLOCK_SKEW = -1


class EventReceiver:
    """Receives the events published on ``app``'s broker.

    It declares a queue of its own, ``celeryev.<uuid>`` (auto-delete,
    exclusive; its messages expire after ``queue_ttl`` seconds and the queue
    after ``queue_expires`` seconds unused, as Celery's receivers declare
    theirs), bound to the event exchange with ``routing_key`` (``#``: every
    event; ``worker.#``: worker events only, where the exchange is a topic).

    Each event goes to ``handlers[type]``, or ``handlers["*"]``, as a dict: the
    event as sent, with ``local_received`` (this host's clock when it
    arrived) added and ``timestamp`` moved into this host's time zone. A list
    body (``task.multi``) is taken apart. A handler's exception is logged and
    does not stop the receiver. Like any kombu consumer, a receiver belongs to
    the thread that calls :meth:`capture` (or :meth:`drain`); :meth:`stop` is
    safe from any thread.
    """

    def __init__(self, app: App, handlers: Mapping[str, Handler] | None = None, *,
                 routing_key: str = "#", connection: kombu.Connection | None = None,
                 queue_ttl: float = 5.0, queue_expires: float = 60.0,
                 clock: LamportClock | None = None) -> None:
        self.app = app
        self.handlers = dict(handlers or {})
        self.routing_key = routing_key
        self.queue_ttl = queue_ttl
        self.queue_expires = queue_expires
        self.node_id = str(uuid.uuid4())
        self.clock = clock or clock_for(app)
        self._own_connection = connection is None
        self.connection = connection if connection is not None else app.connection()
        self._consumer: Any = None
        self._stopped = False
        self._count = 0

    @property
    def queue_name(self) -> str:
        return f"celeryev.{self.node_id}"

    def consume(self) -> None:
        """Declare the queue and start consuming: every event sent after this
        returns is received (:meth:`capture` calls it; call it first to be
        sure nothing sent in between is missed)."""
        if self._consumer is not None:
            return
        import kombu

        exchange = event_exchange(self.connection, self.app.conf.event_exchange)
        queue = kombu.Queue(self.queue_name, exchange, routing_key=self.routing_key,
                            durable=False, auto_delete=True, exclusive=True,
                            message_ttl=self.queue_ttl, expires=self.queue_expires)
        self._consumer = kombu.Consumer(self.connection.channel(), [queue],
                                        on_message=self._on_message, no_ack=True)
        self._consumer.consume()
        try:
            # Some transports subscribe to a fanout exchange only when they
            # first wait for messages (Redis: PSUBSCRIBE); do it now.
            self.connection.drain_events(timeout=0.01)
        except TimeoutError:
            pass

    def drain(self, timeout: float) -> int:
        """Handle the events that arrive within ``timeout`` seconds; returns
        how many were handled."""
        return self.capture(timeout=timeout)

    def capture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """Handle events until ``limit`` were handled (a list body is handled
        whole, so a few more may be), ``timeout`` seconds have passed (None:
        no limit), or :meth:`stop` is called. Returns the count."""
        self.consume()
        self._count = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped and (limit is None or self._count < limit):
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                break
            try:
                self.connection.drain_events(timeout=step)
            except TimeoutError:
                pass
        return self._count

    def stop(self) -> None:
        """Make :meth:`capture` return (from any thread, within a second)."""
        self._stopped = True

    def close(self) -> None:
        """Stop consuming (the queue goes away) and release an own connection."""
        consumer, self._consumer = self._consumer, None
        try:
            if consumer is not None:
                consumer.cancel()
        except Exception:
            logger.debug("cancelling the event consumer failed", exc_info=True)
        finally:
            if self._own_connection:
                self.connection.release()

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- decoding ------------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        try:
            body = message.body
            if isinstance(body, (bytes, bytearray, memoryview)):
                body = bytes(body).decode(message.content_encoding or "utf-8")
            if message.content_type not in (None, "", "application/json"):
                raise ValueError(f"content type {message.content_type!r} (events are JSON)")
            payload = json.loads(body)
        except Exception as exc:
            logger.warning("ignoring an event message that cannot be read: %s", exc)
            return
        for event in payload if isinstance(payload, list) else [payload]:
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                self.process(self.event_from_message(event))
            else:
                logger.warning("ignoring an event without a type: %r", event)

    def event_from_message(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add ``local_received``, adjust the clock, localize ``timestamp``
        (as Celery's receiver does); returns the same dict."""
        if event["type"] == "task-sent":
            event["clock"] = (self.clock.value or 1) + CLIENT_CLOCK_SKEW
            self.clock.adjust(event["clock"])
        elif isinstance(event.get("clock"), int):
            self.clock.adjust(event["clock"])
        else:
            event["clock"] = self.clock.forward()
        offset, timestamp = event.get("utcoffset"), event.get("timestamp")
        if isinstance(offset, (int, float)) and isinstance(timestamp, (int, float)):
            event["timestamp"] = timestamp - (offset - utcoffset()) * 3600
        event["local_received"] = time.time()
        return event

    def process(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to its handler."""
        self._count += 1
        handler = self.handlers.get(event["type"]) or self.handlers.get("*")
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            logger.exception("event handler for %s failed", event["type"])
