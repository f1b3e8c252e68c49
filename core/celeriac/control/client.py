"""``app.control``: Celery's remote-control client (``inspect``, ``revoke``, ...).

Requests are broadcast on the control exchange and every worker whose name
matches runs the command (see :mod:`celeriac.control.mailbox` for the layout
and :mod:`celeriac.control.registry` for the commands). Methods that want
replies wait up to ``timeout`` seconds in all (Celery waits that long after
each reply), or until ``limit`` replies came (the number of destinations
when ``destination`` is given), and return them as Celery does: a list of
``{nodename: reply}`` dicts. ``Inspect`` methods merge them into one dict.

Each call uses a connection and reply queue of its own, so threads may share
one ``Control``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import mailbox, revokes

if TYPE_CHECKING:
    import kombu

    from ..app import App

logger = logging.getLogger("celeriac.control")

Replies = list[dict[str, Any]]


def _destination(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"destination must be a node name or a list of node names, "
                         f"not {value!r}")
    return list(value)


def flatten_reply(replies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``[{node: reply}, ...]`` as one ``{node: reply}`` dict; a node name
    that replied twice is logged (two workers share it)."""
    nodes: dict[str, Any] = {}
    for item in replies:
        for name in item:
            if name in nodes:
                logger.warning("two workers replied as %s: give each worker its own name "
                               "(-n name@%%h)", name)
        nodes.update(item)
    return nodes


class Control:
    """Remote control of the workers of ``app`` (``app.control``)."""

    def __init__(self, app: App) -> None:
        from ..events.dispatcher import clock_for

        self.app = app
        self.clock = clock_for(app)  # the app's clock, which its events stamp too

    def inspect(self, destination: str | Sequence[str] | None = None, timeout: float = 1.0,
                callback: Callable[[dict[str, Any]], None] | None = None,
                limit: int | None = None, pattern: str | None = None,
                matcher: str | None = None) -> Inspect:
        """An :class:`Inspect` asking the workers named by ``destination``
        (all when ``None``), or whose name matches ``pattern`` with
        ``matcher`` (``"glob"``, ``"pcre"``)."""
        return Inspect(self, destination, timeout, callback, limit, pattern, matcher)

    # -- sending -------------------------------------------------------------------

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: str | Sequence[str] | None = None,
                  connection: kombu.Connection | None = None, reply: bool = False,
                  timeout: float = 1.0, limit: int | None = None,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  pattern: str | None = None, matcher: str | None = None,
                  **extra_arguments: Any) -> Replies | None:
        """Send ``command`` with ``arguments`` (plus ``extra_arguments``) to
        the workers; with ``reply``, wait for their replies (see the module
        docstring) and return them, calling ``callback`` on each as it comes.

        Raises :class:`~celeriac.exceptions.ConfigurationError` when the
        transport cannot broadcast.
        """
        import kombu

        from ..exceptions import ConfigurationError

        transport = self.app.transport
        if not transport.broadcast:
            raise ConfigurationError(
                f"the {transport.name} transport cannot broadcast, so remote control "
                f"({command}) is not available with this broker")
        nodes = _destination(destination)
        if limit is None and nodes:
            limit = len(nodes)
        conf = self.app.conf
        owned = connection is None
        conn = self.app.connection() if connection is None else connection
        channel = None
        try:
            channel = conn.channel()
            ticket = oid = queue = None
            if reply:
                ticket, oid = str(uuid.uuid4()), str(uuid.uuid4())
                queue = mailbox.reply_queue(conf, oid)(channel)
                queue.declare()
            body = mailbox.request(conf, command, {**(arguments or {}), **extra_arguments},
                                   destination=nodes, pattern=pattern, matcher=matcher,
                                   ticket=ticket, oid=oid)
            exchange = mailbox.exchange(conf)
            kombu.Producer(channel).publish(
                body, exchange=exchange.name, declare=[exchange], serializer="json",
                headers=mailbox.request_headers(self.clock.forward(), timeout if reply else None),
                retry=True, retry_policy={"max_retries": conf.broker_connection_max_retries})
            if queue is None or ticket is None:
                return None
            return self._collect(conn, channel, queue, ticket, limit, timeout, callback)
        finally:
            if owned:
                conn.release()
            elif channel is not None:
                channel.close()

    def _collect(self, conn: kombu.Connection, channel: Any, queue: kombu.Queue, ticket: str,
                 limit: int | None, timeout: float,
                 callback: Callable[[dict[str, Any]], None] | None) -> Replies:
        import kombu

        replies: Replies = []

        def on_reply(body: Any, message: Any) -> None:
            message.ack()
            headers = message.headers or {}
            self.clock.adjust(headers.get("clock") or 0)
            if headers.get("ticket", ticket) != ticket or not isinstance(body, dict):
                return
            if callback is not None:
                callback(body)
            replies.append(body)

        # Acknowledged one by one rather than no_ack: a transport that leases
        # what it delivers would otherwise give the replies back later.
        consumer = kombu.Consumer(channel, [queue], accept=self.app.conf.accept_content,
                                  callbacks=[on_reply])
        deadline = time.monotonic() + timeout
        try:
            with consumer:
                while limit is None or len(replies) < limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        conn.drain_events(timeout=left)
                    except TimeoutError:
                        break
        finally:
            try:
                channel.after_reply_message_received(queue.name)
            except Exception:
                logger.debug("could not delete the reply queue %s", queue.name, exc_info=True)
        return replies

    # -- commands ------------------------------------------------------------------

    def ping(self, destination: str | Sequence[str] | None = None, timeout: float = 1.0,
             **kwargs: Any) -> Replies:
        """Ping the workers: ``[{"w1@host": {"ok": "pong"}}, ...]``."""
        return self.broadcast("ping", {}, destination, reply=True, timeout=timeout,
                              **kwargs) or []

    def revoke(self, task_id: str | Sequence[str], destination: str | Sequence[str] | None = None,
               terminate: bool = False, signal: str | int = "SIGTERM",
               **kwargs: Any) -> Replies | None:
        """Revoke tasks by id (one or a list): a task that has not started
        never runs; with ``terminate`` a running one is ended (by pools that
        can end a running task; the signal is for pools of processes).

        The revoke is stored in the result backend (when it can keep revokes,
        see :attr:`celeriac.backend.ResultBackend.stores_revokes`) for
        ``worker_revoke_expires`` seconds, so workers started later honour it
        too; a task that has not started is marked ``REVOKED`` at once; then
        the running workers are told (``destination`` limits which are told
        now; the stored revoke is for all). A broker that cannot broadcast
        gets only the first two (logged). Raises ``ValueError`` for a bad id
        or signal, and the result backend's error when it cannot store the
        revoke (nothing is broadcast then).
        """
        from .controlling import signal_number

        ids = revokes.task_ids_of(task_id)
        if terminate:
            signal_number(signal)  # a bad name fails here, not in every worker
        revokes.remember(self.app, ids)
        revokes.mark_revoked(self.app, ids)
        transport = self.app.transport
        if not transport.broadcast:
            logger.warning("the %s transport cannot broadcast: running workers are not told of "
                           "the revoke of %s", transport.name, ", ".join(ids))
            return [] if kwargs.get("reply") else None
        return self.broadcast("revoke", {"task_id": task_id, "terminate": terminate,
                                         "signal": signal}, destination, **kwargs)

    def terminate(self, task_id: str | Sequence[str],
                  destination: str | Sequence[str] | None = None,
                  signal: str | int = "SIGTERM", **kwargs: Any) -> Replies | None:
        """:meth:`revoke` with ``terminate=True``."""
        return self.revoke(task_id, destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(self, task_name: str, rate_limit: str | float | None,
                   destination: str | Sequence[str] | None = None,
                   **kwargs: Any) -> Replies | None:
        """Set the rate limit of a task type in the workers (``"10/s"``, ``"5/m"``; ``None``: none)."""
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit},
                              destination, **kwargs)

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: str | Sequence[str] | None = None,
                   **kwargs: Any) -> Replies | None:
        """Set the time limits of a task type in the workers."""
        return self.broadcast("time_limit", {"task_name": task_name, "hard": hard, "soft": soft},
                              destination, **kwargs)

    def shutdown(self, destination: str | Sequence[str] | None = None,
                 **kwargs: Any) -> Replies | None:
        """Warm shutdown of the workers (they do not reply)."""
        return self.broadcast("shutdown", {}, destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: str | Sequence[str] | None = None,
                  **kwargs: Any) -> Replies | None:
        """Add ``n`` to the pools' concurrency."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(self, n: int = 1, destination: str | Sequence[str] | None = None,
                    **kwargs: Any) -> Replies | None:
        """Take ``n`` from the pools' concurrency."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def autoscale(self, max: int, min: int,  # noqa: A002 - Celery's names
                  destination: str | Sequence[str] | None = None,
                  **kwargs: Any) -> Replies | None:
        """Let the pools' concurrency follow the load between ``min`` and ``max``."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, **kwargs)

    def add_consumer(self, queue: str, exchange: str | None = None,
                     exchange_type: str = "direct", routing_key: str | None = None,
                     options: dict[str, Any] | None = None,
                     destination: str | Sequence[str] | None = None,
                     **kwargs: Any) -> Replies | None:
        """Make the workers consume ``queue`` too."""
        return self.broadcast("add_consumer", {"queue": queue, "exchange": exchange,
                                               "exchange_type": exchange_type,
                                               "routing_key": routing_key, **(options or {})},
                              destination, **kwargs)

    def cancel_consumer(self, queue: str, destination: str | Sequence[str] | None = None,
                        **kwargs: Any) -> Replies | None:
        """Make the workers stop consuming ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def enable_events(self, destination: str | Sequence[str] | None = None,
                      **kwargs: Any) -> Replies | None:
        """Make the workers send task events."""
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(self, destination: str | Sequence[str] | None = None,
                       **kwargs: Any) -> Replies | None:
        """Make the workers stop sending task events."""
        return self.broadcast("disable_events", {}, destination, **kwargs)


class Inspect:
    """Questions to the workers (``app.control.inspect()``); each method
    returns ``{nodename: reply}``, the reply of the one node when
    ``destination`` is a single name, or ``None`` when no worker replied."""

    def __init__(self, control: Control, destination: str | Sequence[str] | None = None,
                 timeout: float = 1.0, callback: Callable[[dict[str, Any]], None] | None = None,
                 limit: int | None = None, pattern: str | None = None,
                 matcher: str | None = None) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _request(self, command: str, **arguments: Any) -> Any:
        replies = self.control.broadcast(command, arguments, self.destination, reply=True,
                                         timeout=self.timeout, limit=self.limit,
                                         callback=self.callback, pattern=self.pattern,
                                         matcher=self.matcher)
        if not replies:
            return None
        by_node = flatten_reply(replies)
        if isinstance(self.destination, str):
            return by_node.get(self.destination)
        return by_node

    def ping(self, destination: str | Sequence[str] | None = None) -> Any:
        """``{node: {"ok": "pong"}}``."""
        if destination:
            self.destination = destination
        return self._request("ping")

    def active(self, safe: bool | None = None) -> Any:
        """Tasks running now, per node."""
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> Any:
        """Tasks received and waiting to run, per node."""
        return self._request("reserved")

    def scheduled(self, safe: bool | None = None) -> Any:
        """Tasks waiting in the worker for their ETA, per node."""
        return self._request("scheduled")

    def revoked(self) -> Any:
        """Revoked task ids each node knows of."""
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> Any:
        """Task names each node knows (with the given task attributes)."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> Any:
        """Statistics of each node."""
        return self._request("stats")

    def conf(self, with_defaults: bool = False) -> Any:
        """Settings of each node (secrets hidden)."""
        return self._request("conf", with_defaults=with_defaults)

    def query_task(self, *ids: str | Sequence[str]) -> Any:
        """``{node: {task_id: [state, info]}}`` for tasks the nodes hold."""
        flat: list[Any] = list(ids[0]) if len(ids) == 1 and not isinstance(ids[0], str) \
            else list(ids)
        return self._request("query_task", ids=flat)

    def active_queues(self) -> Any:
        """The queues each node consumes."""
        return self._request("active_queues")

    def clock(self) -> Any:
        """The logical clock of each node."""
        return self._request("clock")

    def report(self) -> Any:
        """Versions and drivers of each node."""
        return self._request("report")
