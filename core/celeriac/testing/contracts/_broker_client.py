"""The broker client the transport contract tests use: connections built as
the kernel builds them, fresh queue names, raw publishing, and bounded
consuming. :class:`~celeriac.testing.contracts.TransportContract` inherits it,
so a plugin's own extra tests in the subclass can use the same methods.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import kombu
import pytest

from celeriac.config import Settings
from celeriac.plugin import TransportPlugin, resolve

__all__ = ["CONTENT_TYPE", "BrokerClient"]

CONTENT_TYPE = "application/x-celeriac-contract"
"""Content type of the raw bodies the tests publish."""


class BrokerClient:
    """Talks to the broker at ``url`` through the transport of ``record``."""

    transport_options: ClassVar[Mapping[str, Any]] = {}
    """Merged over the record's own options (e.g. a short visibility timeout)."""
    wait_timeout: ClassVar[float] = 30.0
    """Upper bound for a message that must arrive."""
    empty_wait: ClassVar[float] = 0.5
    """How long a consumer watches a queue that must stay empty."""

    record: TransportPlugin
    url: str

    def open_client(self, record: TransportPlugin, url: str) -> None:
        """Start talking to ``url`` through ``record``'s transport."""
        self.record = record
        self.url = url
        self._connections: list[kombu.Connection] = []
        self._entities: list[Any] = []
        self._producer: kombu.Connection | None = None

    def close_all(self) -> None:
        """Close every connection and delete what :meth:`make_queue` declared."""
        for conn in self._connections:
            try:
                conn.close()
            except Exception:
                pass
        try:
            with self.connect() as conn:
                channel = conn.channel()
                for entity in reversed(self._entities):
                    try:
                        entity(channel).delete()
                    except Exception:
                        pass
        except Exception:
            pass

    def connect(self) -> kombu.Connection:
        """A new connection, built as the kernel builds it; closed at teardown."""
        target = self.record.target(self.url, Settings(), "contract")
        conn = kombu.Connection(
            target.url,
            transport=resolve(self.record.kombu_transport),
            transport_options={**target.transport_options, **self.transport_options},
        )
        self._connections.append(conn)
        return conn

    @property
    def producer_connection(self) -> kombu.Connection:
        """The connection tests publish on (consumers use their own)."""
        if self._producer is None:
            self._producer = self.connect()
        return self._producer

    def fresh_name(self, kind: str = "q") -> str:
        return f"celeriac-contract-{kind}-{uuid.uuid4().hex[:12]}"

    def make_queue(self, *, exchange: kombu.Exchange | None = None,
                   max_priority: int | None = None) -> kombu.Queue:
        """Declare a new queue (on its own direct exchange unless given one)."""
        name = self.fresh_name()
        if exchange is None:
            exchange = kombu.Exchange(name, type="direct")
        # Fanout ignores routing keys in AMQP, but kombu's Redis transport
        # matches them by pattern: bind with "" as Celery's broadcast does.
        routing_key = "" if exchange.type == "fanout" else name
        q = kombu.Queue(name, exchange, routing_key=routing_key, max_priority=max_priority)
        q(self.producer_connection.default_channel).declare()
        self._entities.append(q)
        if exchange.name not in (e.name for e in self._entities if isinstance(e, kombu.Exchange)):
            self._entities.insert(0, exchange)
        return q

    def publish(self, q: kombu.Queue | kombu.Exchange, body: bytes, *,
                headers: dict[str, Any] | None = None, priority: int | None = None,
                **properties: Any) -> None:
        """Publish raw ``body`` bytes to a queue's exchange (or an exchange)."""
        exchange = q if isinstance(q, kombu.Exchange) else q.exchange
        routing_key = "" if isinstance(q, kombu.Exchange) else q.routing_key
        producer = kombu.Producer(self.producer_connection.default_channel)
        producer.publish(body, exchange=exchange, routing_key=routing_key,
                         content_type=CONTENT_TYPE, content_encoding="binary",
                         headers=headers or {}, priority=priority, **properties)

    def wait_until_stored(self, q: kombu.Queue, count: int) -> None:
        """Give a server time to hold ``count`` published messages before
        ordering tests consume (publishing may be asynchronous)."""
        deadline = time.monotonic() + self.wait_timeout
        channel = self.producer_connection.default_channel
        while time.monotonic() < deadline:
            try:
                if q(channel).queue_declare(passive=True).message_count >= count:
                    return
            except Exception:
                return
            time.sleep(0.01)

    def receive_stamped(self, queues: kombu.Queue | Sequence[kombu.Queue], count: int = 1, *,
                        conn: kombu.Connection | None = None,
                        timeout: float | None = None) -> list[tuple[float, Any]]:
        """Consume ``count`` messages without acking them, each with the
        ``time.time()`` it arrived; fail if fewer arrive within the bound.

        Each call consumes on a new channel with a prefetch of ``count``, so
        messages still unacked from earlier calls do not close the window.
        """
        conn = conn or self.connect()
        queues = [queues] if isinstance(queues, kombu.Queue) else list(queues)
        got: list[tuple[float, Any]] = []
        consumer = kombu.Consumer(conn.channel(), queues, no_ack=False, prefetch_count=count,
                                  on_message=lambda m: got.append((time.time(), m)))
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        with consumer:
            while len(got) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    conn.drain_events(timeout=left)
                except TimeoutError:
                    pass
        if len(got) < count:
            pytest.fail(f"expected {count} message(s) from {[q.name for q in queues]}, "
                        f"got {len(got)} within {timeout or self.wait_timeout} s")
        return got

    def receive(self, queues: kombu.Queue | Sequence[kombu.Queue], count: int = 1, *,
                conn: kombu.Connection | None = None, timeout: float | None = None) -> list[Any]:
        """Like :meth:`receive_stamped`, without the stamps."""
        return [m for _, m in self.receive_stamped(queues, count, conn=conn, timeout=timeout)]

    def expect_nothing(self, queues: kombu.Queue | Sequence[kombu.Queue],
                       wait: float | None = None) -> None:
        """A new consumer watching ``queues`` for a while gets no message."""
        conn = self.connect()
        queues = [queues] if isinstance(queues, kombu.Queue) else list(queues)
        got: list[Any] = []
        with kombu.Consumer(conn.channel(), queues, no_ack=False, on_message=got.append):
            try:
                conn.drain_events(timeout=self.empty_wait if wait is None else wait)
            except TimeoutError:
                pass
        assert not got, f"expected no message, got {[m.body for m in got]}"
        conn.close()
