"""The dead-letter queue: where messages that cannot be run are kept, with why.

A message is moved here (copied with its body untouched, then acknowledged)
when it cannot be decoded, has the wrong shape, names an unknown task, has a
content type outside ``accept_content``, or was delivered more than
``worker_max_deliveries`` times. Nothing is dropped: if the copy cannot be
published, the original goes back to its queue.

The queue is an ordinary queue (``worker_dead_letter_queue``) on the same
broker, so every transport supports it. ``celeriac dead-letter list | requeue
| purge`` works on it through the functions below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ..timeutils import now, to_iso

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger("celeriac.worker")

PREFIX = "x-dead-letter-"
REASON, DETAIL, QUEUE, EXCHANGE, AT, WORKER, DELIVERIES, CONTENT_TYPE = (
    PREFIX + s for s in ("reason", "detail", "queue", "exchange", "at", "worker",
                         "deliveries", "content-type"))


@attrs.frozen
class DeadLetter:
    """One dead-lettered message, as ``celeriac dead-letter list`` shows it."""

    task_id: str | None
    task: str | None
    reason: str
    detail: str
    queue: str
    at: str | None
    worker: str | None
    content_type: str | None
    body_preview: str
    headers: dict[str, Any]


def dead_letter_headers(message: Any, reason: str, detail: str, hostname: str) -> dict[str, Any]:
    info = message.delivery_info or {}
    headers = dict(message.headers or {})
    headers.update({
        REASON: reason, DETAIL: detail, QUEUE: info.get("routing_key") or "",
        EXCHANGE: info.get("exchange") or "", AT: to_iso(now()), WORKER: hostname,
        DELIVERIES: info.get("delivery_count"), CONTENT_TYPE: message.content_type,
    })
    return headers


def publish_dead_letter(producer: Any, queue: Any, message: Any, headers: dict[str, Any]) -> None:
    """Copy ``message`` to the dead-letter queue (body bytes untouched)."""
    body = message.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    props = message.properties or {}
    producer.publish(
        body if body is not None else b"", exchange="", routing_key=queue.name, declare=[queue],
        content_type=message.content_type or "application/octet-stream",
        content_encoding=message.content_encoding or "binary", headers=headers,
        correlation_id=props.get("correlation_id"), priority=props.get("priority"),
        delivery_mode=2,
    )


def _record(message: Any) -> DeadLetter:
    h = dict(message.headers or {})
    body = message.body
    preview = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return DeadLetter(
        task_id=h.get("id") if isinstance(h.get("id"), str) else None,
        task=h.get("task") if isinstance(h.get("task"), str) else None,
        reason=str(h.get(REASON, "?")), detail=str(h.get(DETAIL, "")), queue=str(h.get(QUEUE, "")),
        at=h.get(AT), worker=h.get(WORKER), content_type=h.get(CONTENT_TYPE),
        body_preview=preview[:200], headers=h,
    )


def _walk(app: App, visit: Callable[[Any, DeadLetter], None], limit: int | None = None) -> None:
    """Take every dead letter without acknowledging, let ``visit`` ack some,
    and give the rest back when the connection closes."""
    import socket

    queue = app.queue(app.conf.worker_dead_letter_queue)
    with app.connection() as conn:
        channel = conn.channel()
        bound = queue(channel)
        bound.declare()
        seen = 0
        while limit is None or seen < limit:
            message = bound.get(no_ack=False)
            if message is None:
                break
            seen += 1
            visit(message, _record(message))
        try:
            channel.close()
        except (OSError, socket.error):  # noqa: UP024 - kombu may raise either
            pass


def list_dead_letters(app: App, limit: int | None = None) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    _walk(app, lambda _m, rec: found.append(rec), limit)
    return found


def requeue_dead_letters(app: App, task_ids: Iterable[str] | None = None) -> list[DeadLetter]:
    """Send dead letters (all, or those with these task ids) back to their queue."""
    wanted = None if task_ids is None else set(task_ids)
    moved: list[DeadLetter] = []

    def visit(message: Any, rec: DeadLetter) -> None:
        if wanted is not None and rec.task_id not in wanted:
            return
        headers = {k: v for k, v in rec.headers.items() if not k.startswith(PREFIX)}
        target = rec.queue or app.conf.task_default_queue
        with app.connection() as conn:
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            conn.Producer().publish(
                body, exchange="", routing_key=target, declare=[app.queue(target)],
                content_type=rec.content_type or "application/octet-stream",
                content_encoding=message.content_encoding or "binary", headers=headers,
                delivery_mode=2, **{k: v for k, v in (message.properties or {}).items()
                                    if k in ("correlation_id", "reply_to", "priority")},
            )
        message.ack()
        moved.append(rec)

    _walk(app, visit)
    return moved


def purge_dead_letters(app: App, task_ids: Iterable[str] | None = None) -> int:
    """Delete dead letters for good (all, or those with these task ids)."""
    wanted = None if task_ids is None else set(task_ids)
    count = 0

    def visit(message: Any, rec: DeadLetter) -> None:
        nonlocal count
        if wanted is None or rec.task_id in wanted:
            message.ack()
            count += 1

    _walk(app, visit)
    return count
