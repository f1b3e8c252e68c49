"""A kombu transport that keeps messages in a local SQLite file.

Use it through celeriac (``broker_url = "sqlite://"``), or from plain kombu or
Celery::

    import kombu.transport
    kombu.transport.TRANSPORT_ALIASES["sqlite"] = "celeriac_sqlite.transport:Transport"
    app = Celery(broker="sqlite:////var/lib/myapp/broker.sqlite3")

What it gives that kombu's own SQL and file transports do not:

* **Leases.** A delivered message stays in the file, leased to its channel
  until acknowledged (``DELETE``). A heartbeat thread renews the lease every
  quarter of ``visibility_timeout`` while the process lives, so a task may run
  for as long as it needs, and the messages of a killed process come back
  after at most ``visibility_timeout`` seconds. A requeue releases the lease
  in place; it never inserts a copy.
* **Native delay.** A message whose ``eta`` header is in the future is
  stored invisible until then; workers never hold it in memory.
* **Priorities** 0..9, higher first, FIFO within a priority.
* **Delivery count.** ``message.delivery_info["delivery_count"]`` is 1 on the
  first delivery; ``redelivered`` is true after that.
* **Prompt wake-up.** Publishers send a datagram to each consumer of the
  queue (a loopback UDP "doorbell"), so an idle consumer reacts within a
  millisecond without polling. ``poll_interval`` is only the fallback.
* **Shared routing.** Bindings and exchange types are stored in the file, so
  a producer that never declared a queue still routes to it; fanout
  exchanges append to a broadcast log each subscribed process reads.

Transport options (all optional): ``visibility_timeout`` (60 s),
``durability`` (``normal``/``full``), ``busy_timeout`` (5 s),
``claim_batch`` (100), ``broadcast_ttl`` (300 s), ``poll_interval`` (1 s; also
read as kombu's ``polling_interval``), ``ack_mode``
(``immediate``/``batched``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from queue import Empty
from typing import Any

from kombu.transport import virtual

from . import store as _store
from .channel import Channel, QoS
from .heartbeat import Doorbell
from .plugin import broker_path

__all__ = ["Channel", "QoS", "Transport"]

_time = time.time
_monotonic = time.monotonic

SWEEP_CHECK_INTERVAL = 0.5
"""While busy, how often the drain loop looks whether delayed or leased rows came due."""
MAINTENANCE_INTERVAL = 10.0


class Transport(virtual.Transport):
    """kombu transport for ``sqlite://`` URLs (see the module docstring)."""

    Channel = Channel

    can_parse_url = True
    default_port = None
    driver_type = "sqlite"
    driver_name = "sqlite"
    polling_interval = 1.0

    implements = virtual.Transport.implements.extend(
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    # A locked or unreadable file is a broker problem: kombu's retry logic
    # and Celery's reconnect key on these.
    connection_errors = (  # type: ignore[assignment]
        *virtual.Transport.connection_errors, sqlite3.OperationalError)
    channel_errors = (*virtual.Transport.channel_errors, sqlite3.DatabaseError)  # type: ignore[assignment]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        poll = options.get("poll_interval", options.get("polling_interval"))
        self.polling_interval = float(poll) if poll is not None else 1.0
        self.busy_timeout = float(options.get("busy_timeout", 5.0))
        self.durability = str(options.get("durability", "normal"))
        self.broadcast_ttl = float(options.get("broadcast_ttl", 300.0))
        url = client.hostname if isinstance(client.hostname, str) and "://" in client.hostname \
            else "sqlite://"
        self.path = broker_path(url)
        self.store: _store.BrokerStore | None = None
        self._bell: Doorbell | None = None
        self._listening: Counter[str] = Counter()
        self._next_due: float | None = None
        self._due_check_at = 0.0
        self._maintain_at = 0.0
        self._pid = os.getpid()

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def establish_connection(self) -> Transport:
        """Open (or share) the process's connection to the file."""
        if self.store is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            store = _store.acquire(self.path, busy_timeout=self.busy_timeout,
                                   durability=self.durability)
            try:
                with store.db:
                    pass  # open now, so a bad path fails here and not on first use
            except BaseException:
                _store.release(store)
                raise
            self.store = store
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        """Close the channels (releasing held messages), then the connection."""
        try:
            super().close_connection(connection)
        finally:
            store, self.store = self.store, None
            bell, self._bell = self._bell, None
            if store is not None:
                if bell is not None and os.getpid() == self._pid:
                    # (A forked child closing its copy leaves the parent's rows alone.)
                    store.heartbeat.unwatch(bell)
                    try:
                        store.unregister_waiter(bell.addr)
                    except sqlite3.Error:
                        pass  # stale waiters are ignored, then pruned
                _store.release(store)
            if bell is not None:
                bell.close()
            self._listening.clear()

    # -- waking ----------------------------------------------------------------------------

    def listen(self, keys: list[str]) -> None:
        """Have publishers to ``keys`` (queues, broadcast exchanges) ring this connection."""
        if self.store is None or os.getpid() != self._pid:
            return
        if self._bell is None:
            self._bell = Doorbell()
            self.store.heartbeat.watch(self._bell)
        new = [key for key in keys if not self._listening[key]]
        self._listening.update(keys)
        if new:
            self.store.register_waiter(new, self._bell.addr)

    def unlisten(self, keys: list[str]) -> None:
        """Stop being rung for ``keys`` once no consumer of this connection needs them."""
        if self.store is None or self._bell is None or os.getpid() != self._pid:
            return
        gone = []
        for key in keys:
            self._listening[key] -= 1
            if self._listening[key] <= 0:
                del self._listening[key]
                gone.append(key)
        if gone:
            self.store.unregister_waiter(self._bell.addr, gone)

    _interrupted = False
    _drain_thread: int | None = None

    def wake(self) -> None:
        """Have a ``drain_events`` sleeping in another thread look again
        (an ack freed a prefetch slot). Nothing to do from the draining thread."""
        drainer = self._drain_thread
        if self._bell is not None and drainer is not None and drainer != threading.get_ident():
            self._bell.ring()

    def interrupt(self) -> None:
        """Make a ``drain_events`` sleeping in another thread return (sticky:
        an interrupt while none sleeps makes the next one return at once)."""
        self._interrupted = True
        if self._bell is not None:
            self._bell.ring()

    # -- the drain loop --------------------------------------------------------------------

    def drain_events(self, connection: Any,  # type: ignore[override]
                     timeout: float | None = None) -> None:
        """Deliver one batch of messages; sleep on the doorbell until there is one.

        Raises :class:`socket.timeout` after ``timeout`` seconds (``None``:
        wait for ever), as kombu's transports do.
        """
        deadline = None if timeout is None else _monotonic() + timeout
        assert self.cycle is not None
        get = self.cycle.get
        self._drain_thread = threading.get_ident()
        bell = self._bell
        try:
            self._drain(get, timeout, deadline)
        finally:
            self._drain_thread = None
            if bell is not None and self.store is not None:
                self.store.flags.set(bell.port, False)

    def _can_consume(self) -> bool:
        return any(channel.qos.can_consume() for channel in self.channels
                   if getattr(channel, "_consumers", None))

    def _drain(self, get: Any, timeout: float | None, deadline: float | None) -> None:
        idle = False
        while True:
            bell = self._bell
            if bell is not None and bell.clear():
                self._due_check_at = 0.0  # a new ETA may be sooner than planned
            self._housekeeping()
            try:
                get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            bell = self._bell
            if bell is not None and self.store is not None:
                # Advertise that we are idle, then look once more (ListeningFlags).
                can = self._can_consume()
                if can != idle:
                    self.store.flags.set(bell.port, can)
                    idle = can
                    if can:
                        try:
                            get(self._deliver, timeout=timeout)
                            return
                        except Empty:
                            pass
            if self._interrupted:
                self._interrupted = False
                raise TimeoutError()
            wait = self.polling_interval
            next_due = self._next_due
            if next_due is not None:
                wait = min(wait, max(next_due - _time(), 0.0))
            if deadline is not None:
                left = deadline - _monotonic()
                if left <= 0:
                    raise TimeoutError()
                wait = min(wait, left)
            for channel in self.channels:
                channel.flush_acks()
            bell = self._bell
            if bell is None:
                time.sleep(wait)
                self._due_check_at = 0.0
            elif not bell.wait(wait):
                self._due_check_at = 0.0  # woke for a due row or the fallback poll

    def _housekeeping(self) -> None:
        store = self.store
        if store is None:
            return
        now = _monotonic()
        if now >= self._due_check_at:
            self._due_check_at = now + SWEEP_CHECK_INTERVAL
            next_due = store.next_due()
            if next_due is not None and next_due <= _time():
                store.sweep(_time())
                next_due = store.next_due()
            self._next_due = next_due
        if now >= self._maintain_at:
            self._maintain_at = now + MAINTENANCE_INTERVAL
            store.maintain(self.broadcast_ttl)
