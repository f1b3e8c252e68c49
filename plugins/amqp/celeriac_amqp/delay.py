"""Countdown/ETA held on the broker: Celery's native delayed delivery on RabbitMQ.

RabbitMQ has no "deliver at" feature, so Celery (5.5+, kombu's
``native_delayed_delivery``) builds one from dead-lettering, and this module
builds the same topology, with the same names and arguments, so that Celery
and celeriac processes share it:

* 28 topic exchanges and queues ``celery_delayed_{level}``, level 27 down to 0.
  Queue ``level`` has ``x-message-ttl = 2**level * 1000`` ms and dead-letters
  to exchange ``celery_delayed_{level - 1}`` (level 0: to
  ``celery_delayed_delivery``). Arguments: ``x-queue-type`` (quorum or classic),
  ``x-overflow: reject-publish``, and for quorum ``x-dead-letter-strategy:
  at-least-once`` (no message lost between two levels).
* A delayed message is published to ``celery_delayed_27`` with the routing key
  ``b27.b26.….b0.<destination routing key>``: the delay in seconds as 28
  binary digits, most significant first. At each level the digit decides:
  ``1`` waits in that level's queue (binding ``*.….*.1.#``), ``0`` passes on
  at once through an exchange-to-exchange binding (``*.….*.0.#``) to the next
  level. The sum of the waits is the delay (at most 2**28 - 1 s, 8.5 years).
* ``celery_delayed_delivery`` (topic) finally routes by the part after the
  digits. Celery binds each queue's *exchange* there with ``#.<routing key>``;
  celeriac binds each *queue* directly with ``*.*.…(28 times).<queue name>``:
  that works for any exchange type (celeriac publishes tasks through the
  default exchange) and cannot match the tail of a longer name, as ``#.b``
  matches ``….a.b``. Messages Celery sends with ``<queue name>`` as routing
  key (its default) reach these bindings too.

The delay is rounded *up* to whole seconds, so a message never arrives before
its ETA by the broker's clock.

:class:`DelayedDelivery` is this topology as one connection uses it: declared
once, queues bound once, and early deliveries sent back to wait.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import amqp
from amqp.exceptions import ChannelError, MessageNacked, NotFound, PreconditionFailed
from celeriac.timeutils import eta_epoch

if TYPE_CHECKING:
    from .transport import Channel, Connection

__all__ = [
    "BITS",
    "DelayedDelivery",
    "EarlyDelivery",
    "DELIVERY_EXCHANGE",
    "ENTRY_EXCHANGE",
    "MAX_DELAY",
    "declare_topology",
    "delay_routing_key",
    "delivery_binding_key",
    "eta_ahead",
    "headers_of",
    "level_arguments",
    "level_name",
    "seconds_to_wait",
    "strip_delay_prefix",
]

logger = logging.getLogger(__name__)

BITS = 28
"""Binary digits in a delay routing key (levels 0..27)."""
MAX_LEVEL = BITS - 1
MAX_DELAY = 2 ** BITS - 1
"""Longest delay in seconds one trip through the levels gives (a longer ETA
is re-delayed when it arrives)."""
DELIVERY_EXCHANGE = "celery_delayed_delivery"
"""The topic exchange that routes a message whose delay is over to its queue."""

_PREFIX = re.compile(rf"^(?:[01]\.){{{BITS}}}")


def level_name(level: int) -> str:
    """``celery_delayed_{level}``: the exchange and queue of one level."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"delay level must be in 0..{MAX_LEVEL}, got {level}")
    return f"celery_delayed_{level}"


ENTRY_EXCHANGE = level_name(MAX_LEVEL)
"""Where delayed messages are published: ``celery_delayed_27``."""


def level_arguments(level: int, queue_type: str) -> dict[str, Any]:
    """The queue arguments of level ``level``, as Celery declares them."""
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"delay queue type must be 'classic' or 'quorum', got {queue_type!r}")
    arguments: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-overflow": "reject-publish",
        "x-message-ttl": 2 ** level * 1000,
        "x-dead-letter-exchange": level_name(level - 1) if level else DELIVERY_EXCHANGE,
    }
    if queue_type == "quorum":
        arguments["x-dead-letter-strategy"] = "at-least-once"
    return arguments


def seconds_to_wait(eta: float, now: float) -> int:
    """Whole seconds to delay a message due at ``eta`` (Unix time): rounded up,
    at least 1, at most :data:`MAX_DELAY`."""
    return max(1, min(MAX_DELAY, math.ceil(eta - now)))


def delay_routing_key(seconds: int, routing_key: str) -> str:
    """``b27.….b0.<routing_key>``: the routing key that delays a message by
    ``seconds`` on its way to ``routing_key``. An existing delay prefix on
    ``routing_key`` is replaced, not stacked."""
    if not 1 <= seconds <= MAX_DELAY:
        raise ValueError(f"delay must be 1..{MAX_DELAY} seconds, got {seconds}")
    if not routing_key:
        raise ValueError("a delayed message needs a non-empty routing key")
    digits = format(seconds, f"0{BITS}b")
    return ".".join(digits) + "." + strip_delay_prefix(routing_key)


def strip_delay_prefix(routing_key: str) -> str:
    """The destination routing key inside a delay routing key (else unchanged)."""
    return _PREFIX.sub("", routing_key, count=1)


def delivery_binding_key(queue: str) -> str:
    """How queue ``queue`` is bound to :data:`DELIVERY_EXCHANGE`: 28 ``*``
    words, then the queue name (which matches only that exact name)."""
    return "*." * BITS + queue


def declare_topology(open_channel: Callable[[], Any], queue_type: str) -> Any:
    """Declare the 28 levels and the delivery exchange; return the channel used.

    ``open_channel()`` returns a new py-amqp channel. A level queue that
    already exists with other arguments (another queue type, say) makes
    RabbitMQ close the channel with PRECONDITION_FAILED: the queue is then
    used as it is (checked to exist on a new channel) with a warning, since
    any queue with these names was declared by Celery or celeriac with the
    same TTLs and dead-letter targets. Any other error propagates.
    """
    channel = open_channel()
    for level in range(MAX_LEVEL, -1, -1):
        name = level_name(level)
        channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
        try:
            channel.queue_declare(name, durable=True, auto_delete=False,
                                  arguments=level_arguments(level, queue_type))
        except PreconditionFailed as exc:
            logger.warning("delay queue %s exists with other arguments than [amqp] "
                           "delayed_queue_type = %r asks for (%s); using it as it is",
                           name, queue_type, exc)
            channel = open_channel()
            channel.queue_declare(name, passive=True)
        # Digit 1 at this level: wait in this level's queue.
        channel.queue_bind(name, name, "*." * (MAX_LEVEL - level) + "1.#")
    for level in range(MAX_LEVEL, 0, -1):
        # Digit 0: pass straight on to the next level's exchange.
        channel.exchange_bind(destination=level_name(level - 1), source=level_name(level),
                              routing_key="*." * (MAX_LEVEL - level) + "0.#")
    channel.exchange_declare(DELIVERY_EXCHANGE, "topic", durable=True, auto_delete=False)
    channel.exchange_bind(destination=DELIVERY_EXCHANGE, source=level_name(0),
                          routing_key="*." * MAX_LEVEL + "0.#")
    return channel


#: Properties not copied when a message is published again to delay it:
#: a per-message TTL would let it leave a delay queue early, and RabbitMQ
#: checks ``user_id`` against the publishing connection's user.
_NOT_REPUBLISHED = frozenset({"expiration", "user_id"})


def headers_of(msg: amqp.Message) -> dict[str, Any]:
    """The application headers of a py-amqp message."""
    return msg.properties.get("application_headers") or {}


def eta_ahead(msg: amqp.Message) -> float | None:
    """The message's ETA (Unix time) if it is still in the future, else ``None``."""
    eta = eta_epoch(headers_of(msg))
    return eta if eta is not None and eta > time.time() else None


class EarlyDelivery:
    """A delivery that came too early, waiting to be sent through the delay
    exchanges (see :meth:`DelayedDelivery.flush`)."""

    __slots__ = ("callback", "channel", "msg", "no_ack", "queue")

    def __init__(self, channel: Channel, msg: amqp.Message, queue: str,
                 callback: Callable[[amqp.Message], Any], no_ack: bool) -> None:
        self.channel, self.msg, self.queue = channel, msg, queue
        self.callback, self.no_ack = callback, no_ack


class DelayedDelivery:
    """The delay topology as one connection uses it.

    The 28 levels are declared the first time this connection needs them (a
    delayed publish, or a consumer starting), then each destination queue is
    bound once. Declarations, bindings and re-delays use a channel of their
    own in confirm mode, so that a refused binding (a queue that does not
    exist) never closes a channel the application uses.
    """

    def __init__(self, connection: Connection, queue_type: str) -> None:
        self.connection = connection
        self.queue_type = queue_type
        self._channel: Any = None
        self._declared = False
        self._bound: set[str] = set()
        self._broken: str | None = None
        self._deferred: list[EarlyDelivery] = []
        self._flushing = False

    # -- topology --------------------------------------------------------------

    def _open_channel(self) -> Any:
        return self.connection.channel()

    def _topology_channel(self) -> Any:
        channel = self._channel
        if channel is None or not channel.is_open or channel.connection is None:
            if self._declared:
                channel = self._open_channel()
            else:
                channel = declare_topology(self._open_channel, self.queue_type)
                self._declared = True
            self._channel = channel
        return channel

    def bind_queue(self, queue: str) -> bool:
        """Make sure delayed messages for ``queue`` reach it; ``False`` when
        they cannot (the queue does not exist, or the broker refused the
        topology: then messages go undelayed and the worker holds them)."""
        if queue in self._bound:
            return True
        if self._broken is not None or not queue:
            return False
        try:
            channel = self._topology_channel()
            channel.queue_bind(queue, DELIVERY_EXCHANGE, delivery_binding_key(queue))
        except NotFound:
            # The queue does not exist: a delayed message would be dropped at
            # the end of its wait, exactly as an undelayed one is dropped now.
            self._channel = None
            logger.debug("queue %r does not exist: not delaying messages for it", queue)
            return False
        except ChannelError as exc:
            self._channel = None
            self._broken = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "cannot use RabbitMQ's delay exchanges (%s): countdown/ETA messages are "
                "delivered at once and held by the worker until due. Give this user the "
                "configure/write permissions on celery_delayed_* and %s.",
                self._broken, DELIVERY_EXCHANGE)
            return False
        self._bound.add(queue)
        return True

    # -- publishing ------------------------------------------------------------

    def route(self, msg: amqp.Message, exchange: str, routing_key: str) -> tuple[str, str]:
        """Where to publish ``msg``: through the delay exchanges when it is
        for the default exchange and its ETA is in the future, else unchanged."""
        if exchange or not routing_key:
            return exchange, routing_key
        eta = eta_ahead(msg)
        if eta is None or not self.bind_queue(routing_key):
            return exchange, routing_key
        msg.properties.pop("expiration", None)
        return ENTRY_EXCHANGE, delay_routing_key(seconds_to_wait(eta, time.time()), routing_key)

    # -- consuming -------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether early deliveries can be sent back through the delay exchanges."""
        return self._broken is None

    def defer(self, item: EarlyDelivery) -> None:
        """Keep an early delivery until :meth:`flush` (never re-entered from a
        frame callback: a confirm wait there would read frames meant for the
        wait that is already on the stack)."""
        self._deferred.append(item)

    def flush(self) -> None:
        """Send every deferred early delivery through the delay exchanges,
        each acknowledged once its publish is confirmed. A delivery whose ETA
        has passed meanwhile, or that cannot be delayed, goes to its consumer."""
        if self._flushing or not self._deferred:
            return
        self._flushing = True
        try:
            while self._deferred:
                self._redelay(self._deferred.pop(0))
        finally:
            self._flushing = False

    def _redelay(self, item: EarlyDelivery) -> None:
        msg = item.msg
        if not item.channel.is_open:
            return  # the broker gives the message out again
        eta = eta_ahead(msg)
        if eta is None or not self.bind_queue(item.queue):
            item.callback(msg)
            return
        properties = {k: v for k, v in msg.properties.items() if k not in _NOT_REPUBLISHED}
        copy = amqp.Message(msg.body, **properties)
        key = delay_routing_key(seconds_to_wait(eta, time.time()), item.queue)
        try:
            self._topology_channel().basic_publish_confirm(copy, ENTRY_EXCHANGE, key)
        except MessageNacked:
            logger.warning("RabbitMQ refused to delay message %s; handing it to the worker",
                           headers_of(msg).get("id"))
            item.callback(msg)
            return
        if not item.no_ack:
            item.channel.basic_ack(msg.delivery_tag)
