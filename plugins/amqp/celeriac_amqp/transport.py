"""The kombu transport: kombu's py-amqp transport plus what celeriac needs.

Everything RabbitMQ does itself (durable queues, persistent messages, acks,
priorities, fanout) is kombu's py-amqp transport, unchanged. On top of it:

* **Broker-side delay.** :meth:`Channel.basic_publish` sends a message whose
  ``eta`` header is in the future, published to the default exchange (how
  celeriac sends tasks), through Celery's delay exchanges instead
  (:mod:`celeriac_amqp.delay`). A message that arrives at a consumer with its
  ``eta`` still in the future (a Celery client that did not delay it, an ETA
  beyond the 8.5 years one trip can wait, a message sent to a named exchange)
  is published through the delay exchanges again and then acknowledged, once
  that publish is confirmed, so no worker holds it in memory. Both use the
  consumer's queue name (or the publish's routing key) as the destination.
* **Interrupt.** :meth:`Transport.interrupt` makes a ``drain_events`` blocked
  in another thread return: ``drain_events`` waits on the broker socket *and*
  a wake-up socket pair, and a wake-up that comes while nobody waits makes the
  next call return at once (sticky).
* **Batched confirms.** :meth:`Channel.publish_batch` publishes many messages
  and then waits once until RabbitMQ has confirmed all of them.
* **Delivery counts.** Deliveries from quorum queues carry ``delivery_count``
  in ``delivery_info`` (RabbitMQ's ``x-delivery-count`` + 1), which the worker
  uses to dead-letter messages that keep failing.

A delayed message arrives with its routing key still prefixed by the 28 delay
digits; the channel removes them (and reports exchange ``""``), so
``delivery_info`` says which queue the message is for, as for any other.
"""

from __future__ import annotations

import functools
import select
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import amqp
from amqp import spec
from amqp.exceptions import MessageNacked
from kombu.transport import pyamqp

from .delay import DelayedDelivery, EarlyDelivery, eta_ahead, headers_of, strip_delay_prefix

__all__ = ["Channel", "Connection", "SSLTransport", "Transport", "Waker"]


class Channel(pyamqp.Channel):
    """kombu's py-amqp channel, with broker-side delay, batched confirms and
    delivery counts (see the module docstring)."""

    connection: Connection
    _confirm_selected: bool

    def __init__(self, connection: Connection, channel_id: int | None = None,
                 auto_decode: bool = True, on_open: Any = None) -> None:
        super().__init__(connection, channel_id, auto_decode, on_open)
        # py-amqp installs basic_publish_confirm as an instance attribute when
        # confirms are on; the class's basic_publish below must run instead.
        self.__dict__.pop("basic_publish", None)
        self._publish_seq = 0
        self._settled_floor = 0
        self._settled_above: set[int] = set()
        self._nacked: set[int] = set()
        self.events["basic_ack"].add(functools.partial(self._on_confirm, nacked=False))
        self.events["basic_nack"].add(functools.partial(self._on_confirm, nacked=True))

    # -- publishing ------------------------------------------------------------

    def basic_publish(self, msg: amqp.Message, exchange: str = "", routing_key: str = "",
                      *args: Any, **kwargs: Any) -> Any:
        """Publish ``msg`` (through the delay exchanges if its ETA is ahead),
        waiting for the broker's confirm when ``confirm_publish`` is on."""
        exchange, routing_key = self.connection.delayed.route(msg, exchange, routing_key)
        if self.connection.confirm_publish:
            try:
                return self.basic_publish_confirm(msg, exchange, routing_key, *args, **kwargs)
            finally:
                self._forget_settled()
        return self._basic_publish(msg, exchange, routing_key, *args, **kwargs)

    def _basic_publish(self, *args: Any, **kwargs: Any) -> Any:
        result = super()._basic_publish(*args, **kwargs)
        if self._confirm_selected:
            # In confirm mode RabbitMQ numbers publishes 1, 2, ... per channel.
            self._publish_seq += 1
        return result

    def _on_confirm(self, delivery_tag: int, multiple: bool, *, nacked: bool) -> None:
        if multiple:
            if nacked:
                self._nacked.update(t for t in range(self._settled_floor + 1, delivery_tag + 1)
                                    if t not in self._settled_above)
            self._settled_floor = max(self._settled_floor, delivery_tag)
            self._settled_above = {t for t in self._settled_above if t > self._settled_floor}
        else:
            self._settled_above.add(delivery_tag)
            if nacked:
                self._nacked.add(delivery_tag)
        while self._settled_floor + 1 in self._settled_above:
            self._settled_floor += 1
            self._settled_above.discard(self._settled_floor)

    def _forget_settled(self) -> None:
        self._nacked = {t for t in self._nacked if t > self._settled_floor}

    def publish_batch(self, items: Iterable[tuple[amqp.Message, str, str]]) -> None:
        """Publish ``(message, exchange, routing_key)`` items in order.

        With ``confirm_publish`` on, all are sent first and then confirmed
        with a single wait (RabbitMQ acknowledges many at once); a message
        the broker refused raises :class:`amqp.exceptions.MessageNacked` after
        the wait. This is not a transaction: the others are delivered.
        """
        items = list(items)
        if not items:
            return
        if not self.connection.confirm_publish:
            for msg, exchange, routing_key in items:
                self.basic_publish(msg, exchange, routing_key)
            return
        if not self._confirm_selected:
            self._confirm_selected = True
            self.confirm_select()
        first = self._publish_seq + 1
        for msg, exchange, routing_key in items:
            exchange, routing_key = self.connection.delayed.route(msg, exchange, routing_key)
            self._basic_publish(msg, exchange, routing_key)
        last = self._publish_seq
        while self._settled_floor < last:
            self.wait([spec.Basic.Ack, spec.Basic.Nack])
        refused = sorted(t for t in self._nacked if first <= t <= last)
        self._forget_settled()
        if refused:
            raise MessageNacked(f"RabbitMQ refused {len(refused)} of the {len(items)} messages "
                                f"of a batch (positions {[t - first for t in refused]}); the "
                                f"others were delivered")

    # -- consuming -------------------------------------------------------------

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = True, nowait: bool = False,
                      arguments: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Declare a queue, remembering which ones are quorum queues."""
        result = super().queue_declare(queue, passive, durable, exclusive, auto_delete, nowait,
                                       arguments, *args, **kwargs)
        if arguments and arguments.get("x-queue-type") == "quorum":
            self.connection.quorum_queues.add(queue)
        return result

    def basic_consume(self, queue: str = "", consumer_tag: str = "", no_local: bool = False,
                      no_ack: bool = False, exclusive: bool = False, nowait: bool = False,
                      callback: Callable[[amqp.Message], Any] | None = None,
                      arguments: Any = None, on_cancel: Any = None, *args: Any,
                      **kwargs: Any) -> Any:
        """Start a consumer whose early deliveries are delayed on the broker."""
        if callback is not None:
            callback = functools.partial(self._on_delivery, queue, callback, no_ack)
            # Delayed messages for this queue (ours or a Celery client's) must
            # find it at the end of their wait.
            self.connection.delayed.bind_queue(queue)
        return super().basic_consume(queue, consumer_tag, no_local, no_ack, exclusive, nowait,
                                     callback, arguments, on_cancel, *args, **kwargs)

    def _on_delivery(self, queue: str, callback: Callable[[amqp.Message], Any], no_ack: bool,
                     msg: amqp.Message) -> None:
        info = msg.delivery_info
        routing_key = info.get("routing_key") or ""
        destination = strip_delay_prefix(routing_key)
        if destination != routing_key:
            info["routing_key"], info["exchange"] = destination, ""
        count = headers_of(msg).get("x-delivery-count")
        if isinstance(count, int) or queue in self.connection.quorum_queues:
            info["delivery_count"] = (count if isinstance(count, int) else 0) + 1
        delayed = self.connection.delayed
        if delayed.usable and eta_ahead(msg) is not None:
            delayed.defer(EarlyDelivery(self, msg, queue, callback, no_ack))
            return
        callback(msg)


class Connection(pyamqp.Connection):
    """A py-amqp connection with this module's channels and its delay topology.

    ``delayed_queue_type`` and ``confirm_publish`` are the ``[amqp]`` settings
    of those names (transport options), with the same defaults when the
    transport is used without celeriac's configuration; every other option is
    py-amqp's.
    """

    Channel = Channel

    def __init__(self, *args: Any, delayed_queue_type: str = "quorum",
                 confirm_publish: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, confirm_publish=confirm_publish, **kwargs)
        self.delayed = DelayedDelivery(self, delayed_queue_type)
        self.quorum_queues: set[str] = set()


class Waker:
    """A socket pair that makes a ``select`` return: :meth:`set` from any
    thread; the waiting thread polls :attr:`fileno` and calls :meth:`clear`.
    Stays set until cleared, so no wake-up is lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def _sockets(self) -> tuple[socket.socket, socket.socket]:
        with self._lock:
            if self._pair is None:
                reader, writer = socket.socketpair()
                reader.setblocking(False)
                writer.setblocking(False)
                self._pair = (reader, writer)
            return self._pair

    def fileno(self) -> int:
        return self._sockets()[0].fileno()

    def set(self) -> None:
        try:
            self._sockets()[1].send(b"\0")
        except OSError:
            pass  # the buffer is full (already set) or the pair was just closed

    def clear(self) -> bool:
        """Consume pending wake-ups; ``True`` if there were any."""
        reader = self._sockets()[0]
        woken = False
        while True:
            try:
                data = reader.recv(4096)
            except (BlockingIOError, InterruptedError):
                return woken
            except OSError:
                return woken
            if not data:
                return woken
            woken = True

    def close(self) -> None:
        with self._lock:
            pair, self._pair = self._pair, None
        if pair is not None:
            for sock in pair:
                sock.close()


def _buffered(connection: amqp.Connection) -> bool:
    """Whether py-amqp may already hold unread data (then do not wait in
    ``poll``: the socket would not show it). Unknown internals count as yes."""
    transport = connection.transport
    buffer = getattr(transport, "_read_buffer", None)
    if buffer is None or len(buffer):
        return True
    pending = getattr(transport.sock, "pending", None)  # TLS: decrypted bytes
    return bool(pending is not None and pending())


def _readable(fds: list[int], timeout: float | None) -> set[int]:
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return {fd for fd, _ in poller.poll(ms)}
    ready, _, _ = select.select(fds, [], [], timeout)
    return set(ready)


AMQPConnection = Connection
"""This module's connection class (``Transport.Connection`` names it too)."""


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport with this module's connections, and
    :meth:`interrupt`."""

    Connection = Connection

    def __init__(self, client: Any, default_port: int | None = None,
                 default_ssl_port: int | None = None, **kwargs: Any) -> None:
        super().__init__(client, default_port, default_ssl_port, **kwargs)
        self.waker = Waker()

    def interrupt(self) -> None:
        """Make a ``drain_events`` blocked in another thread return now, or
        the next one return at once (thread-safe)."""
        self.waker.set()

    def drain_events(self, connection: AMQPConnection, timeout: float | None = None,
                     **kwargs: Any) -> Any:
        """Wait up to ``timeout`` s for a frame and dispatch it; return early
        (without error) when :meth:`interrupt` is called. Raises
        :class:`TimeoutError` (``socket.timeout``) when the time passes first."""
        delayed = connection.delayed
        delayed.flush()
        result = self._drain(connection, timeout, **kwargs)
        # Early deliveries this call set aside (not after an error: the
        # broker gives unacknowledged ones out again on a new connection).
        delayed.flush()
        return result

    def _drain(self, connection: AMQPConnection, timeout: float | None, **kwargs: Any) -> Any:
        # py-amqp may hold bytes it has read but not parsed: then the socket
        # would not look readable, so read at once instead of polling.
        woken = self.waker.clear()
        if not woken and not _buffered(connection):
            waker = self.waker.fileno()
            ready = _readable([connection.sock.fileno(), waker], timeout)
            if waker in ready:
                woken = self.waker.clear() or True
            elif not ready:
                raise TimeoutError("timed out")
        if not woken:
            # One frame, not py-amqp's drain_events: that one keeps reading
            # until a method frame comes, so the broker's heartbeat frames
            # would hold it (and the worker's loop, which sends ours) forever.
            return connection.blocking_read(timeout)
        # Return at once, but take a frame that is already there: wake-ups in
        # quick succession must not keep deliveries unread.
        if _buffered(connection) or _readable([connection.sock.fileno()], 0):
            try:
                connection.drain_events(timeout=0)
            except TimeoutError:
                pass
        return None

    def close_connection(self, connection: AMQPConnection) -> None:
        """Close ``connection`` and the wake-up sockets (made again if the
        transport connects again)."""
        super().close_connection(connection)
        self.waker.close()


class SSLTransport(Transport):
    """The transport over TLS (``amqps://``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.client is not None and not self.client.ssl:
            self.client.ssl = True
