"""The ``rpc://`` result backend: results go back to the caller as messages.

Compatible with Celery's ``rpc://`` backend (``celery/backends/rpc.py``):

* Each client process reads results from one queue of its own, named by
  :attr:`RPCBackend.reply_to` (a uuid4), which the app puts in the
  ``reply_to`` of every task message it sends. The queue is declared as
  Celery declares it: durable, auto-delete, ``x-expires`` = ``result_expires``.
  It is declared the first time the name is asked for, so before the first
  task is sent.
* A worker sends each state of a task to the ``reply_to`` of its message,
  through the default exchange, with ``correlation_id`` = the task id and the
  meta document as body (the result serializer's content type), as transient
  messages (``delivery_mode`` 1, Celery's ``result_persistent = False``),
  with ``expiration`` = ``result_expires``. A message without ``reply_to``
  (sent by a client with another backend) gets no result.
* :meth:`~RPCBackend.get` and :meth:`~RPCBackend.wait` consume the reply
  queue; every message is kept in memory as the latest document of its task
  id (results of other tasks waited for later included), so ``get`` after
  ``wait`` works. A ``SUCCESS`` is never replaced by a later state.

What this design cannot do, as in Celery:

* Only the process that sent a task can read its result. Another process,
  or the same one after a restart, sees ``PENDING`` for ever.
* Results live in the broker queue until read, then only in this process's
  memory (at most :data:`CACHE_LIMIT` documents: the oldest go first).
  ``forget`` drops the copy in memory.
* ``get`` returns what has arrived by then: a state published a moment ago
  may not have reached this process yet. ``wait`` blocks until it has.
* ``store`` (without a request to reply to) keeps the document in this
  process's memory only; the worker uses :meth:`~RPCBackend.store_for`.
* No groups or chords (Celery's rpc backend has none either).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kombu
from celeriac.backend import Codec, ResultBackend
from celeriac.exceptions import BackendError, ConfigurationError
from celeriac.states import READY_STATES, SUCCESS

from .plugin import AMQP_SCHEMES, redacted, section_settings

if TYPE_CHECKING:
    from celeriac.config import Settings
    from celeriac.task import Context

__all__ = ["CACHE_LIMIT", "RPCBackend"]

logger = logging.getLogger(__name__)

CACHE_LIMIT = 10_000
"""Most task documents one process keeps in memory (oldest dropped first)."""

#: Celery's retry policy for result messages.
RETRY_POLICY = {"max_retries": 20, "interval_start": 0, "interval_step": 1, "interval_max": 1}

_READ_SLICE = 1.0
"""Longest single wait on the reply queue, so other waiting threads get turns."""


class RPCBackend(ResultBackend):
    """Results as messages to the caller's reply queue (``rpc://``).

    The URL carries nothing: the broker is ``broker_url``, which must be an
    AMQP URL (``amqp://``, ``pyamqp://``, ``amqps://``).
    """

    name = "rpc"

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        super().__init__(url, codec=codec, settings=settings, app_name=app_name)
        broker_url = settings.broker_url
        scheme = broker_url.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme not in AMQP_SCHEMES:
            raise ConfigurationError(
                f"result_backend = {url!r} sends results as AMQP messages through the broker, "
                f"but broker_url is {redacted(broker_url)!r}. Use an amqp:// broker, or another "
                f"result backend (redis://, sqlite://...).")
        self.broker_url = broker_url
        section = section_settings(settings)
        self._transport_options = {**settings.broker_transport_options,
                                   "confirm_publish": section.confirm_publish}
        self._connect_timeout = settings.broker_connection_timeout
        self._expires = settings.result_expires
        self._queue_name = str(uuid.uuid4())
        self._declared = False
        self._encoding = self._content_encoding(codec)
        # Documents by task id, each with the monotonic time it expires at.
        self._documents: OrderedDict[str, tuple[dict[str, Any], float | None]] = OrderedDict()
        self._cond = threading.Condition(threading.RLock())
        self._reading = False
        self._consumer_conn: kombu.Connection | None = None
        self._consumer: kombu.Consumer | None = None
        self._publish_lock = threading.Lock()
        self._publisher_conn: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None

    @staticmethod
    def _content_encoding(codec: Codec) -> str:
        serializer = getattr(codec, "serializer", None)
        encoding = getattr(codec, "content_encoding", None) or \
            getattr(serializer, "content_encoding", None)
        if encoding:
            return str(encoding)
        return "utf-8" if codec.content_type == "application/json" else "binary"

    # -- the reply queue -----------------------------------------------------------

    def _connection(self) -> kombu.Connection:
        return kombu.Connection(self.broker_url, transport_options=dict(self._transport_options),
                                connect_timeout=self._connect_timeout)

    @property
    def reply_queue(self) -> kombu.Queue:
        """The queue this process reads results from, declared as Celery does."""
        return kombu.Queue(self._queue_name, kombu.Exchange(""), routing_key=self._queue_name,
                           durable=True, auto_delete=True, expires=self._expires)

    @property  # type: ignore[override]
    def reply_to(self) -> str:
        """This process's reply queue name (declared on first use, so that it
        exists before the first task naming it is sent)."""
        if not self._declared:
            with self._publish_lock:
                if not self._declared:
                    try:
                        self.reply_queue(self._producer_channel()).declare()
                    except Exception as exc:
                        self._close_publisher()
                        raise BackendError(
                            f"cannot declare the rpc reply queue {self._queue_name} on "
                            f"{redacted(self.broker_url)}: {exc}") from exc
                    self._declared = True
        return self._queue_name

    @reply_to.setter
    def reply_to(self, value: str) -> None:
        """Read results from queue ``value`` instead (declared on next use)."""
        self._queue_name = value
        self._declared = False

    # -- sending results (the worker side) -------------------------------------------

    def _producer_channel(self) -> Any:
        if self._producer is None:
            conn = self._publisher_conn = self._connection()
            conn.ensure_connection(max_retries=self.settings.broker_connection_max_retries)
            self._producer = conn.Producer()
        return self._producer.channel

    def store_for(self, request: Context, document: Mapping[str, Any], *,
                  expires: float | None) -> bool:
        """Send ``document`` to the caller's reply queue (``request.reply_to``),
        with ``correlation_id`` = the task id. Returns ``True``: whether the
        caller already holds a ``SUCCESS`` is only known there."""
        reply_to = request.reply_to
        task_id = request.correlation_id or request.id or ""
        if not reply_to:
            logger.debug("task %s has no reply_to: its %s is not sent anywhere", task_id,
                         document.get("status"))
            return True
        properties: dict[str, Any] = {}
        if expires is not None:
            properties["expiration"] = max(0.0, expires)  # seconds: kombu writes ms
        body = self.codec.encode(document)
        with self._publish_lock:
            try:
                self._producer_channel()
                assert self._producer is not None
                self._producer.publish(
                    body, exchange="", routing_key=reply_to, correlation_id=task_id,
                    content_type=self.codec.content_type, content_encoding=self._encoding,
                    delivery_mode=1, retry=True, retry_policy=RETRY_POLICY, **properties)
            except Exception as exc:
                self._close_publisher()
                raise BackendError(f"cannot send the result of {task_id} to reply queue "
                                   f"{reply_to} on {redacted(self.broker_url)}: {exc}") from exc
        return True

    # -- keeping documents -------------------------------------------------------------

    def _keep(self, task_id: str, document: dict[str, Any], expires: float | None) -> bool:
        """Keep ``document`` as the latest of ``task_id`` unless a SUCCESS is kept."""
        with self._cond:
            current = self._current(task_id)
            if current is not None and current.get("status") == SUCCESS:
                return False
            deadline = None if expires is None else time.monotonic() + expires
            self._documents[task_id] = (document, deadline)
            self._documents.move_to_end(task_id)
            while len(self._documents) > CACHE_LIMIT:
                dropped, _ = self._documents.popitem(last=False)
                logger.debug("rpc backend keeps %d documents; dropped %s", CACHE_LIMIT, dropped)
            self._cond.notify_all()
            return True

    def _current(self, task_id: str) -> dict[str, Any] | None:
        entry = self._documents.get(task_id)
        if entry is None:
            return None
        document, deadline = entry
        if deadline is not None and deadline <= time.monotonic():
            del self._documents[task_id]
            return None
        return document

    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        """Keep ``document`` in this process's memory (there is no caller to
        send it to without a request; see :meth:`store_for`)."""
        return self._keep(task_id, dict(document), expires)

    # -- reading results (the client side) --------------------------------------------

    def _on_reply(self, message: Any) -> None:
        task_id = (message.properties or {}).get("correlation_id")
        body = message.body
        if isinstance(body, str):  # py-amqp decodes text bodies
            body = body.encode(message.content_encoding or "utf-8")
        try:
            document = self.codec.decode(body)
        except Exception:
            logger.warning("dropping a reply for task %s that cannot be decoded as %s",
                           task_id, self.codec.content_type, exc_info=True)
            return
        if not isinstance(document, dict):
            logger.warning("dropping a reply for task %s that is not a result document",
                           task_id)
            return
        task_id = task_id or document.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            logger.warning("dropping a reply with neither correlation_id nor task_id")
            return
        self._keep(task_id, document, self._expires)

    def _start_consumer(self) -> kombu.Connection:
        if self._consumer_conn is None:
            conn = self._connection()
            conn.ensure_connection(max_retries=self.settings.broker_connection_max_retries)
            channel = conn.channel()
            # Declared again on this connection: after a lost connection the
            # auto-delete queue is gone.
            queue = self.reply_queue.bind(channel)
            queue.declare()
            consumer = kombu.Consumer(channel, [queue], on_message=self._on_reply, no_ack=True,
                                      auto_declare=False)
            consumer.consume()
            self._consumer_conn, self._consumer = conn, consumer
        return self._consumer_conn

    def _read(self, timeout: float) -> None:
        """Take one delivery that reaches the reply queue within ``timeout``
        s, or with ``timeout`` 0 every delivery that is there now. Called by
        one thread at a time (see :meth:`_reader`)."""
        try:
            conn = self._start_consumer()
        except Exception as exc:
            raise BackendError(f"cannot read results from the rpc reply queue "
                               f"{self._queue_name} on {redacted(self.broker_url)}: "
                               f"{exc}") from exc
        try:
            if timeout > 0:
                conn.drain_events(timeout=timeout)
            else:
                while True:
                    conn.drain_events(timeout=0)
        except TimeoutError:
            return
        except conn.connection_errors + conn.channel_errors as exc:
            logger.warning("lost the rpc reply connection (%s); reconnecting. Results sent "
                           "while it was down may be lost (the queue is auto-delete).", exc)
            self._close_consumer()

    def _reader(self, timeout: float) -> bool:
        """Read for up to ``timeout`` s if no other thread is reading; ``False``
        if one is (its reads wake this thread's condition wait instead)."""
        with self._cond:
            if self._reading:
                return False
            self._reading = True
        try:
            self._read(timeout)
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()
        return True

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The latest document of ``task_id`` that reached this process."""
        self._reader(0.0)
        with self._cond:
            return self._current(task_id)

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Consume the reply queue until ``task_id`` is ready (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                document = self._current(task_id)
                if document is not None and document.get("status") in READY_STATES:
                    return document
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return document
                slice_ = _READ_SLICE if left is None else min(left, _READ_SLICE)
                if self._reading:
                    self._cond.wait(slice_)
                    continue
            self._reader(slice_)

    def forget(self, task_id: str) -> None:
        """Drop this process's copy (a later state of the task may still arrive)."""
        with self._cond:
            self._documents.pop(task_id, None)

    def cleanup(self) -> int:
        """Drop expired documents from memory; return how many."""
        now = time.monotonic()
        with self._cond:
            expired = [tid for tid, (_, deadline) in self._documents.items()
                       if deadline is not None and deadline <= now]
            for tid in expired:
                del self._documents[tid]
        return len(expired)

    # -- the rest ------------------------------------------------------------------------

    def describe(self) -> str:
        return f"rpc:// (replies through {redacted(self.broker_url)})"

    def _close_consumer(self) -> None:
        conn, self._consumer_conn, self._consumer = self._consumer_conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                logger.debug("error closing the rpc reply connection", exc_info=True)

    def _close_publisher(self) -> None:
        conn, self._publisher_conn, self._producer = self._publisher_conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                logger.debug("error closing the rpc publishing connection", exc_info=True)

    def close(self) -> None:
        """Close both connections. Results not read yet stay in the reply
        queue until its last consumer is gone (it is auto-delete)."""
        with self._publish_lock:
            self._close_publisher()
        with self._cond:
            while self._reading:
                self._cond.wait(_READ_SLICE)
            if self._consumer_conn is not None:
                # Closing the last consumer deletes the auto-delete queue.
                self._declared = False
            self._close_consumer()
