"""The worker's end of remote control: its mailbox, and the replies.

A worker whose transport can broadcast (:attr:`TransportPlugin.broadcast
<celeriac.plugin.TransportPlugin.broadcast>`) and whose
``worker_enable_remote_control`` is on consumes its mailbox queue
(:func:`celeriac.control.mailbox.node_queue`) on a broker connection of its
own, in a thread of its own, so that requests are received even while the
worker's loop is not fetching (its prefetch window is full) and never wait
behind a backlog of task messages. That thread only receives: each request
meant for this node is handed to the loop thread (``Worker.call_soon``),
which runs the command (so commands see and change the worker's state without
locks) and publishes the reply on the worker's connection. A worker whose loop
is inside a task (the solo pool) answers when the task ends, as Celery's does.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import mailbox
from .inspecting import jsonable
from .registry import NO_REPLY, all_commands, nok

if TYPE_CHECKING:
    from ..worker.request import Request
    from ..worker.worker import Worker

logger = logging.getLogger("celeriac.control")

#: Longest wait between two reconnection attempts of the mailbox connection.
MAX_RECONNECT_DELAY = 30.0


class RemoteControl:
    """Remote control of one worker: started and stopped by the worker.

    Commands (:mod:`celeriac.control.registry`) get it as their first
    argument: ``worker``, ``app``, ``hostname``, ``clock`` (the node's Lamport
    clock), ``started`` (monotonic time) and :meth:`discard_waiting`.
    """

    def __init__(self, worker: Worker) -> None:
        from ..events.dispatcher import clock_for

        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.clock = clock_for(self.app)  # the node's one clock: its events stamp it too
        self.started = time.monotonic()
        conf = self.app.conf
        self.enabled = bool(conf.worker_enable_remote_control and worker.transport.broadcast)
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._revokes_loaded = threading.Event()
        self._connected = False  # this connection of the mailbox thread is listening
        self._thread: threading.Thread | None = None
        self._connection: Any = None  # the mailbox thread's
        self._producer: Any = None  # replies, on the worker's connection
        self._producer_connection: Any = None
        self._declared: set[str] = set()

    def describe(self) -> str:
        """How the worker banner shows remote control."""
        if self.enabled:
            return f"on ({self.app.conf.control_exchange}.pidbox)"
        if not self.app.conf.worker_enable_remote_control:
            return "off (worker_enable_remote_control is false)"
        return f"off (the {self.worker.transport.name} transport cannot broadcast)"

    # -- start and stop (the worker's loop thread) ---------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start listening (waiting up to ``timeout`` s until the mailbox is
        bound), then load the stored revokes: the worker calls this before it
        takes its first task, so that no revoked task runs. Says at start-up
        what does not work with this broker or result backend."""
        conf = self.app.conf
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"celeriac-remote-control-{self.hostname}")
            self._thread.start()
            if not self._listening.wait(timeout):
                logger.warning("remote control is not listening yet (the broker does not "
                               "answer); it keeps trying")
        elif not conf.worker_enable_remote_control:
            logger.info("remote control is off (worker_enable_remote_control is false): "
                        "inspect, control, status and broadcast revokes do not reach this worker")
        else:
            logger.warning("remote control is off: the %s transport cannot broadcast, so "
                           "inspect, control, status and broadcast revokes do not reach this "
                           "worker (revokes stored in the result backend are still read at "
                           "start-up)", self.worker.transport.name)
        backend = self.app.backend
        if not (backend.enabled and backend.stores_revokes):
            logger.warning("the result backend (%s) cannot store revokes: a revoke lasts only "
                           "while a worker that received it runs", backend.describe())
        self.load_stored_revokes()
        self._revokes_loaded.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening (replies in flight are dropped)."""
        self._stop.set()
        connection, interrupt = self._connection, self.worker.transport.interrupt
        if connection is not None and interrupt is not None:
            try:
                interrupt(connection)
            except Exception:
                logger.debug("could not interrupt the remote-control connection", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the remote-control thread did not stop within %s s", timeout)
        self._producer = self._producer_connection = None

    # -- revokes (the loop thread) -------------------------------------------------

    def load_stored_revokes(self) -> None:
        """Merge the revokes stored in the result backend into the worker's,
        and settle the tasks it holds that they name."""
        backend = self.app.backend
        if not (backend.enabled and backend.stores_revokes):
            return
        try:
            stored = backend.revoked()
        except Exception as exc:
            logger.error("could not read the stored revokes from %s (%s); tasks revoked while "
                         "this worker was not listening may run", backend.describe(), exc)
            return
        if stored:
            self.worker.revoked.merge(stored)
            self.discard_waiting(stored)
            logger.info("%d stored revoke(s) loaded", len(stored))

    def discard_waiting(self, task_ids: Iterable[str]) -> list[str]:
        """Settle the tasks of ``task_ids`` the worker holds and has not
        started (reserved, rate-limited, waiting for their ETA): acknowledged
        and stored as REVOKED, never run. Returns their ids."""
        wanted = set(task_ids)
        worker = self.worker
        found: list[Request] = []

        def take_from(requests: deque[Request]) -> None:
            if any(request.id in wanted for request in requests):
                kept = [request for request in requests if request.id not in wanted]
                found.extend(request for request in requests if request.id in wanted)
                requests.clear()
                requests.extend(kept)

        take_from(worker.reserved)
        for waiting in worker.throttled.values():
            take_from(waiting)
        if any(entry[2].id in wanted for entry in worker.held):
            found.extend(entry[2] for entry in worker.held if entry[2].id in wanted)
            worker.held[:] = [entry for entry in worker.held if entry[2].id not in wanted]
            heapq.heapify(worker.held)
        for request in found:
            worker._revoke(request, "revoked")
        return [request.id for request in found]

    # -- the mailbox thread --------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:
                if self._stop.is_set():
                    break
                if self._connected:
                    delay, self._connected = 1.0, False
                logger.warning("remote control lost its broker connection (%s); reconnecting "
                               "in %.0f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
            finally:
                self._close_connection()

    def _listen(self) -> None:
        import kombu

        conf = self.app.conf
        connection = self._connection = self.app.connection()
        connection.ensure_connection(max_retries=1)
        consumer = kombu.Consumer(connection.channel(), [mailbox.node_queue(conf, self.hostname)],
                                  no_ack=True, accept=conf.accept_content,
                                  callbacks=[self._on_request],
                                  on_decode_error=self._on_decode_error)
        consumer.consume()
        # A first turn binds the queue on transports that subscribe lazily (Redis pub/sub).
        self._drain(connection, 0.01)
        if self._revokes_loaded.is_set():
            # Broadcasts sent while this connection was down were lost.
            self.worker.call_soon(self.load_stored_revokes)
        self._listening.set()
        self._connected = True
        while not self._stop.is_set():
            self._drain(connection, 1.0)

    @staticmethod
    def _drain(connection: Any, timeout: float) -> None:
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:
                logger.debug("error closing the remote-control connection", exc_info=True)

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error("refused a remote-control message (content type %s): %s",
                     getattr(message, "content_type", "?"), exc)

    def _on_request(self, body: Any, message: Any) -> None:
        self.clock.adjust((message.headers or {}).get("clock") or 0)
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            logger.error("ignored a remote-control message that is not a request: %.200r", body)
            return
        if self._is_for_me(body):
            self.worker.call_soon(functools.partial(self.dispatch, body))

    def _is_for_me(self, body: dict[str, Any]) -> bool:
        destination = body.get("destination")
        if destination:
            return self.hostname in destination
        pattern, matcher = body.get("pattern"), body.get("matcher")
        if pattern and matcher:
            from kombu.matcher import match

            try:
                # kombu annotates bytes but matches text (Celery passes text too).
                return bool(match(self.hostname, pattern, matcher))  # type: ignore[arg-type]
            except Exception as exc:
                logger.error("ignored a remote-control request with matcher %r: %s", matcher, exc)
                return False
        return True

    # -- running commands (the loop thread) ----------------------------------------

    def dispatch(self, body: dict[str, Any]) -> Any:
        """Run the request ``body``'s command and reply when asked; return the reply."""
        method, arguments = body["method"], body.get("arguments") or {}
        spec = all_commands().get(method)
        if spec is None:
            logger.error("unknown remote-control command %r", method)
            reply: Any = nok(f"unknown command {method!r}; this worker knows "
                             f"{', '.join(sorted(all_commands()))}")
        elif not isinstance(arguments, dict):
            reply = nok(f"{method}: arguments must be an object, not {type(arguments).__name__}")
        else:
            logger.debug("remote-control command %s %r", method, arguments)
            try:
                reply = spec.handler(self, **arguments)
            except Exception as exc:
                logger.exception("remote-control command %s failed", method)
                reply = nok(f"{method}: {type(exc).__name__}: {exc}")
        if reply is NO_REPLY:
            return None
        reply_to = body.get("reply_to")
        if reply_to:
            self._reply(reply_to, body.get("ticket"), {self.hostname: jsonable(reply)})
        return reply

    def _reply(self, reply_to: Any, ticket: Any, data: dict[str, Any]) -> None:
        from kombu.exceptions import InconsistencyError

        if not isinstance(reply_to, dict) or not reply_to.get("routing_key"):
            logger.error("cannot reply to %.200r: not a reply address", reply_to)
            return
        exchange = mailbox.reply_exchange(self.app.conf, reply_to.get("exchange"))
        try:
            producer = self._reply_producer()
            producer.publish(data, exchange=exchange, routing_key=reply_to["routing_key"],
                             declare=[] if exchange.name in self._declared else [exchange],
                             headers={"ticket": ticket, "clock": self.clock.forward()},
                             serializer="json", retry=True, retry_policy={"max_retries": 2})
            self._declared.add(exchange.name)
        except InconsistencyError:
            # The client stopped waiting and its reply queue is gone.
            logger.debug("no one waits for the reply to %s any more", reply_to["routing_key"])
        except Exception as exc:
            logger.warning("could not send a remote-control reply: %s", exc)

    def _reply_producer(self) -> Any:
        import kombu

        connection = self.worker.connection
        if self._producer is None or self._producer_connection is not connection:
            self._producer = kombu.Producer(connection.channel(), auto_declare=False)
            self._producer_connection = connection
            self._declared.clear()
        return self._producer
