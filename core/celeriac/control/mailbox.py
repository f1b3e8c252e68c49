"""Celery's remote-control layout on the broker (PROTOCOL.md, section E).

Requests go to the fanout exchange ``<control_exchange>.pidbox``. Each worker
consumes its own queue ``<nodename>.<control_exchange>.pidbox`` bound to it.
A request that wants replies carries a ``ticket`` and a ``reply_to``: the
direct exchange ``reply.<control_exchange>.pidbox`` and the client's id as
routing key, which leads to the client's queue
``<id>.reply.<control_exchange>.pidbox``. Every entity is declared with the
arguments Celery 5.7 gives it (non-durable, auto-delete, exclusive, the
``control_queue_ttl`` message TTL and ``control_queue_expires`` expiry), so
Celery's tools and workers and ours share one mailbox.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kombu

    from ..config import Settings


def exchange(conf: Settings) -> kombu.Exchange:
    """The fanout exchange requests are broadcast on."""
    import kombu

    return kombu.Exchange(f"{conf.control_exchange}.pidbox", type="fanout", durable=False,
                          delivery_mode="transient")


def reply_exchange(conf: Settings, name: str | None = None) -> kombu.Exchange:
    """The direct exchange replies go to (``name``: the one a request named)."""
    import kombu

    return kombu.Exchange(name or f"reply.{conf.control_exchange}.pidbox", type="direct",
                          durable=False, delivery_mode="transient")


def node_queue(conf: Settings, hostname: str) -> kombu.Queue:
    """The queue of worker ``hostname``, bound to :func:`exchange`."""
    import kombu

    return kombu.Queue(f"{hostname}.{conf.control_exchange}.pidbox", exchange=exchange(conf),
                       durable=False, exclusive=True, auto_delete=True,
                       expires=conf.control_queue_expires, message_ttl=conf.control_queue_ttl)


def reply_queue(conf: Settings, oid: str) -> kombu.Queue:
    """The queue a client with id ``oid`` reads its replies from."""
    import kombu

    return kombu.Queue(f"{oid}.reply.{conf.control_exchange}.pidbox",
                       exchange=reply_exchange(conf), routing_key=oid, durable=False,
                       exclusive=True, auto_delete=True, expires=conf.control_queue_expires,
                       message_ttl=conf.control_queue_ttl)


def request(conf: Settings, method: str, arguments: dict[str, Any], *,
            destination: Sequence[str] | None = None, pattern: str | None = None,
            matcher: str | None = None, ticket: str | None = None,
            oid: str | None = None) -> dict[str, Any]:
    """The body of a request; ``ticket`` and ``oid`` when replies are wanted."""
    body: dict[str, Any] = {"method": method, "arguments": arguments,
                            "destination": list(destination) if destination else None,
                            "pattern": pattern, "matcher": matcher}
    if ticket is not None and oid is not None:
        body["ticket"] = ticket
        body["reply_to"] = {"exchange": reply_exchange(conf).name, "routing_key": oid}
    return body


def request_headers(clock: int, timeout: float | None) -> dict[str, Any]:
    """A request's headers: the sender's clock and when a reply is too late (0: never)."""
    return {"clock": clock, "expires": time.time() + timeout if timeout else 0}
