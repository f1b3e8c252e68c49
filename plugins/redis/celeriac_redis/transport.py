"""A kombu Redis transport with leases, broker-side ETA and batched fetch/ack.

It is kombu's own Redis transport (same lists, same envelope, same bindings,
pub/sub fanout, Sentinel), so Celery clients and workers share queues with it;
what changes is how a consumer takes and settles messages:

* **Leases instead of a fixed visibility timeout.** A delivered message is
  recorded in kombu's ``unacked`` hash together with a lease deadline in the
  ``unacked_lease`` sorted set, in one atomic step with taking it off the
  queue. A thread renews the leases of the messages its process holds every
  quarter of ``visibility_timeout``, so a task may run for hours and is never
  handed to a second worker while its own lives; when a process dies its
  leases run out and any consumer puts the messages back within
  ``visibility_timeout`` (plus at most one sweep interval).
* **Countdown/ETA on the broker.** A message whose ``eta`` is in the future
  goes to the queue's delayed sorted set (``<queue>\\x06\\x16delayed``) and is
  moved to the head of its queue when due, so no worker holds it in memory
  and none gets it early. Celery clients publish ETA messages straight into
  the queue; the consumer that takes one early parks it in the same step.
  With ``delay_at_publish`` our clients put them in the delayed set directly
  (faster, but Celery workers never look there: only for fleets of celeriac
  workers).
* **Batched fetch and acknowledgements.** One script call takes up to the
  prefetch window at once and applies the pending acknowledgements in the
  same round trip.
* **Delivery count.** ``delivery_info["delivery_count"]`` is 1 on the first
  delivery, and ``redelivered`` is true after that.

Transport options (``broker_transport_options`` or the ``[redis]`` section):
``visibility_timeout`` (60 s: the lease length), ``fetch_batch`` (100),
``delay_at_publish`` (false), plus kombu's Redis options (``global_keyprefix``,
``priority_steps``, ``sep``, ``health_check_interval``...).

An idle consumer waits with ``BLMOVE key key RIGHT RIGHT`` (one connection
per list it consumes): that returns when the list has a message but leaves it
there, so, unlike kombu's ``BRPOP``, no message is ever popped and then lost
with the connection before it is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import select
import selectors
import threading
import time
import uuid
from queue import Empty
from typing import Any

import redis
from celeriac.timeutils import eta_epoch
from kombu.transport import redis as kredis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from . import _scripts

__all__ = ["Channel", "QoS", "SentinelChannel", "SentinelTransport", "Transport"]

logger = logging.getLogger(__name__)

LEASE_KEY = "unacked_lease"
DELIVERIES_KEY = "unacked_deliveries"
DELAYED_SUFFIX = "delayed"
#: A message whose ETA is less than this many seconds away is delivered and
#: held by the worker instead of parked.
PARK_THRESHOLD = 0.5
SWEEP_INTERVAL = 1.0
SWEEP_LIMIT = 1000
PROMOTE_LIMIT = 1000
#: Acknowledgements are written at the latest this long after the ack.
ACK_FLUSH_DELAY = 0.05
ACK_FLUSH_SIZE = 200

_json_loads = json.loads
_json_dumps = json.dumps
_time = time.time
_monotonic = time.monotonic


class QoS(kredis.QoS):
    """Prefetch accounting plus leases: acks are batched, requeues put the
    message back at the head of its queue, and fanout messages (which are
    not leased) are only tracked in memory."""

    restore_at_shutdown = True

    def append(self, message: Any, delivery_tag: str) -> None:
        count = self.channel._leased.get(delivery_tag)
        if count is not None:
            info = message.delivery_info
            info["delivery_count"] = count
            info["redelivered"] = count > 1
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.channel._settle(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.channel._requeue([delivery_tag])
        else:
            self.channel._settle(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> list[Any]:
        """Put back every message this channel holds (close, recover)."""
        tags = list(self._delivered)
        self._delivered.clear()
        try:
            self.channel._flush_acks()
            self.channel._requeue(tags)
        except Exception:
            logger.warning("could not requeue %d messages; they come back when their lease "
                           "runs out", len(tags), exc_info=True)
        return []

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Expired leases are swept by :class:`_Leases`; kombu's own index is
        left to kombu's consumers."""

    def held_tags(self) -> list[str]:
        """Delivery tags held and not yet settled (read from any thread)."""
        for _ in range(5):
            try:
                return [tag for tag in list(self._delivered) if tag in self.channel._leased]
            except RuntimeError:  # changed size during iteration
                continue
        return []


class _Scripts:
    """The Lua scripts, registered on a client (redis-py re-loads on NOSCRIPT)."""

    def __init__(self, client: redis.Redis) -> None:
        self.fetch = client.register_script(_scripts.FETCH)
        self.ack = client.register_script(_scripts.ACK)
        self.requeue = client.register_script(_scripts.REQUEUE)
        self.sweep = client.register_script(_scripts.SWEEP)
        self.park = client.register_script(_scripts.PARK)
        self.promote = client.register_script(_scripts.PROMOTE)


class LeasedChannelMixin:
    """What the transport adds to kombu's Redis channel (see the module docstring)."""

    QoS = QoS
    visibility_timeout: float = 60.0
    fetch_batch: int = 100
    delay_at_publish: bool = False
    lease_key = LEASE_KEY
    deliveries_key = DELIVERIES_KEY

    #: Our transport options, added to those of the kombu channel mixed in.
    own_transport_options = ("fetch_batch", "delay_at_publish", "lease_key", "deliveries_key")
    from_transport_options = (*kredis.Channel.from_transport_options, *own_transport_options)

    # Provided by kombu's channel:
    connection: Any
    global_keyprefix: str
    sep: str
    priority_steps: list[int]
    active_queues: set[str]
    _queue_cycle: Any
    pool: Any
    qos: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.visibility_timeout = float(self.visibility_timeout)
        self.fetch_batch = max(1, int(self.fetch_batch))
        self.delay_at_publish = _truthy(self.delay_at_publish)
        #: delivery tag -> delivery count, for the messages we leased.
        self._leased: dict[str, int] = {}
        self._acks: list[str] = []
        self._acks_since = 0.0
        self._ack_lock = threading.Lock()
        self._plain_client: redis.Redis | None = None
        #: (pool, client) that :meth:`conn_or_acquire` lends (kombu's client class).
        self._shared_client: tuple[Any, Any] | None = None
        self._scripts_: _Scripts | None = None
        self._steps = ",".join(str(step) for step in self.priority_steps)
        self._keys = [self._key(self.unacked_key), self._key(self.lease_key),  # type: ignore[attr-defined]
                      self._key(self.deliveries_key)]
        self._tag_prefix = f"celeriac-{uuid.uuid4().hex[:12]}-"
        #: list key -> [connection, BLMOVE in flight]
        self._waiters: dict[str, list[Any]] = {}
        #: Queues consumed with ``no_ack``: their messages are settled on delivery.
        self._noack_queues: set[str] = set()

    # -- plumbing -------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.global_keyprefix}{name}"

    @property
    def plain(self) -> redis.Redis:
        """A client on the channel's pool that does not add the key prefix
        (the scripts get their keys already prefixed)."""
        if self._plain_client is None:
            self._plain_client = redis.Redis(connection_pool=self.pool)
        return self._plain_client

    @property
    def scripts(self) -> _Scripts:
        if self._scripts_ is None:
            self._scripts_ = _Scripts(self.plain)
        return self._scripts_

    def _list_keys(self, queues: list[str]) -> tuple[list[str], list[str]]:
        keys, names = [], []
        for pri in self.priority_steps:
            for queue in queues:
                keys.append(self._key(self._q_for_pri(queue, pri)))  # type: ignore[attr-defined]
                names.append(queue)
        return keys, names

    def _deadline(self) -> float:
        return _time() + self.visibility_timeout

    # -- taking messages ------------------------------------------------------------

    def _room(self) -> int:
        qos = self.qos
        if not qos.prefetch_count:
            return self.fetch_batch
        return min(self.fetch_batch, qos.prefetch_count - (len(qos._delivered) - len(qos._dirty)))

    def fetch(self, limit: int | None = None) -> int:
        """Take up to the prefetch window from the consumed queues in one
        call (also writing pending acks); deliver them; return how many."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        room = self._room() if limit is None else limit
        if not queues or room <= 0:
            if self._acks:
                self._flush_acks()
            return 0
        deliveries = self._fetch_from(queues, room)
        deliver = self.connection._deliver
        for payload, queue in deliveries:
            self._queue_cycle.rotate(queue)
            deliver(payload, queue)
        return len(deliveries)

    def _fetch_from(self, queues: list[str], room: int) -> list[tuple[dict[str, Any], str]]:
        """Take and lease up to ``room`` messages (parking those not due);
        return the ``(payload, queue)`` to deliver."""
        keys, names = self._list_keys(queues)
        with self._ack_lock:
            acks, self._acks = self._acks, []
        forget = self._redelivered(acks)
        try:
            reply = self.scripts.fetch(
                keys=[*self._keys, *keys],
                args=[room, self._deadline(), self._tag_prefix + uuid.uuid4().hex[:8] + "-",
                      len(acks), *acks, len(forget), *forget, *names],
                client=self.plain)
        except BaseException:
            with self._ack_lock:
                self._acks[:0] = acks
            raise
        for tag in acks:
            self._leased.pop(tag, None)
        if not reply:
            return []
        parked: list[tuple[str, float]] = []
        deliveries = []
        for i in range(0, len(reply), 4):
            index, tag, count, raw = reply[i:i + 4]
            tag = bytes_to_str(tag)
            queue = names[int(index) - 1]
            payload = _payload(raw, tag)
            due = _due(payload)
            if due is not None:
                parked.append((tag, due))
                continue
            self._leased[tag] = int(count)
            deliveries.append((payload, queue))
            if queue in self._noack_queues:
                self._settle(tag)
        if parked:
            self._park(parked)
        return deliveries

    def _get(self, queue: str) -> dict[str, Any]:
        """``basic_get``: one message, taken and leased atomically."""
        for _ in range(3):  # (a message taken but parked is not one to return)
            got = self._fetch_from([queue], 1)
            if got:
                return got[0][0]
        raise Empty()

    # -- waiting --------------------------------------------------------------------

    def wait_sockets(self) -> dict[Any, Any]:
        """Have a blocking ``BLMOVE key key RIGHT RIGHT`` in flight on one
        connection per list key consumed, and return ``{socket: handler}``.

        ``BLMOVE`` from a list to itself takes the last element and puts it
        straight back: it waits until the list has a message *without taking
        it*, so no message is ever out of Redis unrecorded; the batched fetch
        then takes it atomically. (kombu's ``BRPOP`` takes the message and
        records it in a second command: lost if the connection drops in
        between.)"""
        waiters = self._waiters
        keys: list[str] = []
        if self.active_queues and self.qos.can_consume():
            queues = sorted(self.active_queues)
            keys = self._list_keys(queues)[0]
        for key in list(waiters):
            if key not in keys:
                self._drop_waiter(key)
        socks: dict[Any, Any] = {}
        # The server-side timeout only bounds how long a dead link goes
        # unnoticed; the caller's timeout is the select's.
        seconds = self.brpop_timeout or 1  # type: ignore[attr-defined]
        for key in keys:
            entry = waiters.get(key)
            if entry is None:
                conn = self.pool.get_connection()
                entry = waiters[key] = [conn, False]
            conn = entry[0]
            if not entry[1]:
                try:
                    conn.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", seconds)
                except BaseException:
                    self._drop_waiter(key)
                    raise
                entry[1] = True
            socks[conn._sock] = (self._on_waiter, key)
        if self.active_fanout_queues:  # type: ignore[attr-defined]
            sub = self.subclient  # type: ignore[attr-defined]
            if getattr(sub, "connection", None) is None:
                sub.connection = sub.connection_pool.get_connection()
            if sub.connection._sock is None:
                sub.connection.connect()
                self._in_listen = None
            if not getattr(self, "_in_listen", None):
                self._subscribe()  # type: ignore[attr-defined]
            if sub.connection is not None and sub.connection._sock is not None:
                socks[sub.connection._sock] = (self._on_fanout, None)
        return socks

    def _on_waiter(self, key: str) -> bool:
        entry = self._waiters.get(key)
        if entry is None:
            return False
        try:
            entry[0].read_response()
        except BaseException:
            self._drop_waiter(key)
            raise
        entry[1] = False
        return False  # a message is there: the next fetch takes it

    def _on_fanout(self, _key: Any) -> bool:
        return bool(self._receive())  # type: ignore[attr-defined]

    def _drop_waiter(self, key: str) -> None:
        entry = self._waiters.pop(key, None)
        if entry is None:
            return
        conn, in_flight = entry
        if in_flight:
            conn.disconnect()  # its pending reply must not reach the next user
        try:
            self.pool.release(conn)
        except Exception:
            conn.disconnect()

    def _drop_waiters(self) -> None:
        for key in list(self._waiters):
            self._drop_waiter(key)

    def _park(self, items: list[tuple[str, float]]) -> None:
        args: list[Any] = [self.sep, self.global_keyprefix]
        for tag, due in items:
            args += [tag, due]
        self.scripts.park(keys=self._keys[:2], args=args, client=self.plain)
        self.connection.delayed_changed()

    # -- settling -------------------------------------------------------------------

    def _settle(self, tag: str) -> None:
        """Acknowledge (or drop) a delivered message: batched, written with
        the next fetch or within ``ACK_FLUSH_DELAY``."""
        if tag not in self._leased:
            return
        with self._ack_lock:
            first = not self._acks
            if first:
                self._acks_since = _monotonic()
            self._acks.append(tag)
            full = len(self._acks) >= ACK_FLUSH_SIZE
        if full:
            self._flush_acks()
        elif first:
            self.connection.leases.poke(acks=True)

    def acks_overdue(self) -> bool:
        """Whether acks have waited longer than ``ACK_FLUSH_DELAY`` (the drain
        loop writes them with its next fetch; the lease thread writes them
        when the loop is busy elsewhere, e.g. running a task inline)."""
        return bool(self._acks) and _monotonic() - self._acks_since >= ACK_FLUSH_DELAY

    def _flush_acks(self) -> None:
        with self._ack_lock:
            acks, self._acks = self._acks, []
        if not acks:
            return
        forget = self._redelivered(acks)
        rest = [tag for tag in acks if self._leased.get(tag, 1) <= 1]
        try:
            self.scripts.ack(keys=self._keys, args=[len(forget), *forget, *rest],
                             client=self.plain)
        except BaseException:
            with self._ack_lock:
                self._acks[:0] = acks
            raise
        for tag in acks:
            self._leased.pop(tag, None)

    def _redelivered(self, tags: list[str]) -> list[str]:
        """Those of ``tags`` delivered more than once (their count is stored)."""
        leased = self._leased
        return [tag for tag in tags if leased.get(tag, 1) > 1]

    def _requeue(self, tags: list[str]) -> None:
        leased = [tag for tag in tags if tag in self._leased]
        if not leased:
            return
        self.scripts.requeue(keys=self._keys, args=[self.sep, self._steps, self.global_keyprefix, *leased],
                             client=self.plain)
        for tag in leased:
            self._leased.pop(tag, None)

    def renew(self, client: redis.Redis) -> int:
        """Push the lease deadline of every message still held (any thread)."""
        tags = self.qos.held_tags()
        if not tags:
            return 0
        deadline = self._deadline()
        client.zadd(self._keys[1], dict.fromkeys(tags, deadline), xx=True)
        return len(tags)

    def sweep(self, client: redis.Redis) -> int:
        """Requeue the messages of dead consumers (leases run out)."""
        return int(self.scripts.sweep(keys=self._keys,
                                      args=[_time(), SWEEP_LIMIT, self.sep, self._steps,
                                            self.global_keyprefix],
                                      client=client))

    def promote(self, client: redis.Redis) -> float | None:
        """Move due delayed messages of the consumed queues to their queues;
        return when the next one is due."""
        soonest = None
        for queue in self.active_queues:  # (kombu's: fanout queues left out)
            nxt = self.scripts.promote(
                keys=[self._key(f"{queue}{self.sep}{DELAYED_SUFFIX}")],
                args=[_time(), PROMOTE_LIMIT, self._key(queue), self.sep, self._steps],
                client=client)
            value = float(nxt)
            if value >= 0 and (soonest is None or value < soonest):
                soonest = value
        return soonest

    # -- publishing -----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        due = _due(message) if self.delay_at_publish else None
        if due is None:
            super()._put(queue, message, **kwargs)  # type: ignore[misc]
            return
        key = f"{queue}{self.sep}{DELAYED_SUFFIX}"
        batch = kwargs.get("_publish_batch")
        if batch is not None:
            batch.add("zadd", key, {dumps(message): due})
            return
        with self.conn_or_acquire() as client:  # (a kombu client adds the key prefix)
            client.zadd(key, {dumps(message): due})

    def publish_many(self, items: list[tuple[dict[str, Any], str, str]]) -> None:
        """Publish ``(message, exchange, routing_key)`` items in one pipeline:
        messages for the same list go in one ``LPUSH`` (in order)."""
        pipe = self.Client(connection_pool=self.pool).pipeline(transaction=False)  # type: ignore[attr-defined]
        groups: dict[str, list[str]] = {}
        self._pipe = pipe
        try:
            for message, exchange, routing_key in items:
                direct = not exchange and routing_key not in self._expires  # type: ignore[attr-defined]
                if not direct or (self.delay_at_publish and _due(message) is not None):
                    self.basic_publish(message, exchange, routing_key)  # type: ignore[attr-defined]
                    continue
                self._inplace_augment_message(message, exchange, routing_key)  # type: ignore[attr-defined]
                pri = self._get_message_priority(message, reverse=False)  # type: ignore[attr-defined]
                key = self._q_for_pri(routing_key, pri)  # type: ignore[attr-defined]
                groups.setdefault(key, []).append(_encode(message))
        finally:
            self._pipe = None
        for key, values in groups.items():
            pipe.lpush(key, *values)
        pipe.execute()

    _pipe: Any = None

    def conn_or_acquire(self, client: Any = None) -> Any:
        if client is not None:
            return super().conn_or_acquire(client)  # type: ignore[misc]
        pipe = self._pipe
        if pipe is not None:
            return _Borrowed(pipe)
        # kombu builds a client (and its table of response callbacks) per
        # call; one per pool does, as the pool hands out a connection per command.
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared[0] is not pool:
            shared = self._shared_client = (pool, self._create_client())  # type: ignore[attr-defined]
        return _Borrowed(shared[1])

    def _size(self, queue: str) -> int:
        size = super()._size(queue)  # type: ignore[misc]
        return int(size) + int(self.plain.zcard(self._key(f"{queue}{self.sep}{DELAYED_SUFFIX}")))

    def _purge(self, queue: str) -> int:
        count = super()._purge(queue)  # type: ignore[misc]
        key = self._key(f"{queue}{self.sep}{DELAYED_SUFFIX}")
        with self.plain.pipeline() as pipe:
            pipe.zcard(key)
            pipe.delete(key)
            delayed, _ = pipe.execute()
        return int(count) + int(delayed)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)  # type: ignore[misc]
        self.plain.delete(self._key(f"{queue}{self.sep}{DELAYED_SUFFIX}"))

    def basic_consume(self, queue: str, no_ack: bool = False, *args: Any, **kwargs: Any) -> Any:
        # A no-ack consumer's messages are settled as soon as they are taken
        # (see _fetch_from): nobody would ever acknowledge them, and their
        # leases would put them back on their list for ever.
        if no_ack:
            self._noack_queues.add(queue)
        tag = super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[misc]
        self.connection.leases.start()
        return tag

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)  # type: ignore[attr-defined]
        self._noack_queues.discard(queue)
        return super().basic_cancel(consumer_tag)  # type: ignore[misc]

    def close(self) -> None:
        try:
            if not getattr(self, "_closing", False):
                self._flush_acks()
        except Exception:
            logger.warning("could not write acknowledgements at close; those messages "
                           "come back when their lease runs out", exc_info=True)
        try:
            self._drop_waiters()
        finally:
            super().close()  # type: ignore[misc]


class _Borrowed:
    """``with``-able stand-in for kombu's ``conn_or_acquire``: lends a client
    or a pipeline being filled, and leaves it open."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __enter__(self) -> Any:
        return self.pipe

    def __exit__(self, *exc: Any) -> None:
        return None


class Channel(LeasedChannelMixin, kredis.Channel):  # type: ignore[misc]
    """kombu's Redis channel with leases, broker-side ETA and batching."""


class SentinelChannel(LeasedChannelMixin, kredis.SentinelChannel):  # type: ignore[misc]
    """The same over Redis Sentinel (``sentinel://`` URLs)."""

    from_transport_options = (*kredis.SentinelChannel.from_transport_options,
                              *LeasedChannelMixin.own_transport_options)


class _Leases:
    """The per-process thread that renews leases, sweeps expired ones and
    moves due delayed messages to their queues."""

    def __init__(self, transport: TransportMixin) -> None:
        self.transport = transport
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._pid = os.getpid()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="celeriac-redis-leases",
                                        daemon=True)
        self._thread.start()

    def poke(self, acks: bool = False) -> None:
        """Wake the thread: to look at the delayed sets now, or (``acks``)
        to write acknowledgements the drain loop has not written in time."""
        if not acks:
            self._delayed = True
        self._poke.set()

    _delayed = False

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._thread = None

    def _run(self) -> None:
        renew_at = sweep_at = 0.0
        next_due: float | None = None
        clients: dict[int, redis.Redis] = {}
        while not self._stop.is_set():
            channels = [c for c in list(self.transport.channels) if isinstance(c, LeasedChannelMixin)]
            now = _monotonic()
            try:
                if channels and now >= renew_at:
                    renew_at = now + max(0.05, min(c.visibility_timeout for c in channels) / 4)
                    for channel in channels:
                        channel.renew(_client(clients, channel))
                if channels and now >= sweep_at:
                    sweep_at = now + min(SWEEP_INTERVAL,
                                         max(0.05, min(c.visibility_timeout for c in channels) / 8))
                    for channel in channels:
                        channel.sweep(_client(clients, channel))
                    next_due = _promote(channels, clients)
                elif channels and next_due is not None and next_due <= _time():
                    next_due = _promote(channels, clients)
            except Exception as exc:
                logger.warning("Redis lease upkeep failed (%s); retrying", exc)
                clients.clear()
                self._stop.wait(0.5)
                continue
            pending = False
            for channel in channels:
                if channel.acks_overdue():
                    try:
                        channel._flush_acks()
                    except Exception as exc:
                        logger.warning("could not write acknowledgements (%s); retrying", exc)
                pending = pending or bool(channel._acks)
            wait = min(renew_at, sweep_at) - _monotonic()
            if next_due is not None:
                wait = min(wait, next_due - _time())
            if pending:
                wait = min(wait, ACK_FLUSH_DELAY)
            if self._poke.wait(max(0.0, min(wait, SWEEP_INTERVAL))):
                self._poke.clear()
                if self._delayed:
                    self._delayed = False
                    sweep_at = 0.0  # something was parked: look at the delayed sets now
                else:
                    self._stop.wait(ACK_FLUSH_DELAY)


def _promote(channels: list[LeasedChannelMixin],
             clients: dict[int, redis.Redis]) -> float | None:
    """Promote due delayed messages on every channel; the soonest next due time."""
    dues = [channel.promote(_client(clients, channel)) for channel in channels]
    return min((due for due in dues if due is not None), default=None)


def _client(clients: dict[int, redis.Redis], channel: LeasedChannelMixin) -> redis.Redis:
    client = clients.get(id(channel))
    if client is None:
        client = clients[id(channel)] = redis.Redis(connection_pool=channel.pool)
    return client


class TransportMixin:
    """The drain loop: batched fetch first; ``BRPOP`` (and pub/sub) only when idle."""

    channels: list[Any]
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leases = _Leases(self)
        self._interrupted = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def delayed_changed(self) -> None:
        self.leases.poke()

    def interrupt(self) -> None:
        """Make a ``drain_events`` blocked in another thread return (sticky)."""
        self._interrupted = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _clear_wake(self) -> None:
        # Read only while the pipe says it has bytes: a monkey-patched os.read
        # (eventlet) waits for data instead of raising BlockingIOError.
        try:
            while select.select([self._wake_r], [], [], 0)[0]:
                if not os.read(self._wake_r, 512):
                    return
        except (BlockingIOError, OSError, ValueError):
            pass

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver a batch of messages; when there is none, wait (without
        taking anything) until one of the consumed lists has a message, a
        fanout message arrives, :meth:`interrupt` is called, or ``timeout``
        passes (then :class:`TimeoutError`)."""
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            if self._interrupted:
                self._interrupted = False
                self._clear_wake()
                raise TimeoutError()
            delivered = 0
            channels = [c for c in list(self.channels) if isinstance(c, LeasedChannelMixin)
                        and not getattr(c, "_closing", False)]
            for channel in channels:
                if channel.active_queues and channel.qos.can_consume():
                    delivered += channel.fetch()
                elif channel._acks:
                    channel._flush_acks()
            if delivered:
                return
            left = None if deadline is None else deadline - _monotonic()
            if left is not None and left <= 0:
                raise TimeoutError()
            wait = 1.0 if left is None else left
            handlers: dict[Any, Any] = {}
            for channel in channels:
                handlers.update(channel.wait_sockets())
            if self._wait(handlers, wait):
                return

    def _wait(self, handlers: dict[Any, Any], timeout: float) -> bool:
        """Sleep on the waiters' sockets and the wake pipe; run the handlers
        of those ready. True when a handler delivered a message."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for sock, handler in handlers.items():
                selector.register(sock, selectors.EVENT_READ, handler)
            ready = selector.select(timeout)
        delivered = False
        for key, _ in ready:
            if key.data is None:
                continue  # the wake pipe: the loop above sees the flag
            fn, arg = key.data
            delivered = fn(arg) or delivered
        return delivered

    def close_connection(self, connection: Any) -> None:
        self.leases.stop()
        try:
            super().close_connection(connection)  # type: ignore[misc]
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_r = self._wake_w = -1


class Transport(TransportMixin, kredis.Transport):  # type: ignore[misc]
    """``redis://`` and ``rediss://``: see the module docstring."""

    Channel = Channel


class SentinelTransport(TransportMixin, kredis.SentinelTransport):  # type: ignore[misc]
    """``sentinel://``: the same through Redis Sentinel."""

    Channel = SentinelChannel


def _payload(raw: bytes, tag: str | None) -> dict[str, Any]:
    """The message envelope of ``raw``; an undecodable one becomes an
    envelope whose body is ``raw`` untouched and has no content type, so the
    worker moves it to the dead-letter queue instead of crashing on it."""
    try:
        text = bytes_to_str(raw)
        # kombu's decoder restores dates and such in headers but calls a hook
        # per object; the plain one is enough for the usual all-JSON envelope.
        payload = loads(text) if '"__type__"' in text else _json_loads(text)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
        props = payload.get("properties")
        if not isinstance(props, dict):
            props = payload["properties"] = {}
        info = props.get("delivery_info")
        if not isinstance(info, dict):
            props["delivery_info"] = {"exchange": "", "routing_key": ""}
        if not isinstance(payload.get("headers"), dict):
            payload["headers"] = {}
    except (ValueError, TypeError, UnicodeDecodeError):
        payload = {"body": raw if isinstance(raw, bytes) else str(raw).encode(),
                   "content-type": None, "content-encoding": "binary", "headers": {},
                   "properties": {"delivery_info": {"exchange": "", "routing_key": ""}}}
    if tag is not None:
        payload["properties"]["delivery_tag"] = tag
    return payload


def _encode(message: dict[str, Any]) -> str:
    # The plain encoder (C, no per-call set-up) handles the usual all-JSON
    # envelope; kombu's encoder is for headers holding dates, UUIDs and such.
    try:
        return _json_dumps(message)
    except TypeError:
        return dumps(message)


def _due(payload: dict[str, Any]) -> float | None:
    """When a message not due yet is due (``None``: deliver it now)."""
    due = eta_epoch(payload.get("headers"))
    if due is None or due - _time() < PARK_THRESHOLD:
        return None
    return due


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


