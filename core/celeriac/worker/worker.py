"""The worker's control loop: consume, hold, dispatch, acknowledge.

One thread (the one calling :meth:`Worker.start`) owns the broker connection:
it receives messages, decides what each one is (run it, hold it until its
ETA, store it as expired, or dead-letter it), hands runnable ones to the pool
as the pool has room, and acknowledges them when the pool reports back.
Pools call back from their own threads; those reports go through a queue so
the broker connection is only ever touched by its owner.

Messages are acknowledged after the task by default (``task_acks_late``), so
a worker that dies loses nothing: its messages come back to the broker.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import queue as queue_mod
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import _plugins, states
from ..control.node import RemoteControl
from ..control.revokes import Revoked
from ..events.worker import WorkerEvents
from ..exceptions import MessageError, NotRegistered, TaskRevokedError, WorkerLostError
from ..plugin import resolve
from ..pool import JobFailed, Pool, PoolOptions
from ..protocol import decode
from ..serialization import exception_to_dict
from ..task import Context
from ..trace import Outcome, Tracer
from . import deadletter, liveness
from .autoscale import Autoscaler, check_bounds, parse_autoscale
from .ratelimit import TokenBucket, parse_rate
from .request import Request, TaskJob

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger("celeriac.worker")

IDLE_DRAIN_TIMEOUT = 1.0
BUSY_DRAIN_TIMEOUT = 0.005


class Worker:
    """Consumes the given queues and runs their tasks.

    Options left ``None`` come from the app's settings (``worker_*``).
    """

    def __init__(self, app: App, *, queues: Iterable[str] | None = None, pool: str | None = None,
                 concurrency: int | None = None, hostname: str | None = None,
                 prefetch_multiplier: int | None = None, install_signal_handlers: bool = True,
                 ready_callback: Callable[[Worker], None] | None = None,
                 autoscale: str | Sequence[int] | None = None,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 task_events: bool | None = None) -> None:
        conf = app.conf
        self.app = app
        self.queue_names = list(queues or conf.worker_queues or [conf.task_default_queue])
        self.pool_name = pool or conf.worker_pool
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.hostname = hostname or conf.worker_hostname or f"celeriac@{socket.gethostname()}"
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        self.install_signal_handlers = install_signal_handlers
        self.ready_callback = ready_callback
        record = _plugins.load_driver("pool", self.pool_name)
        pool_cls: type[Pool] = resolve(record.pool_class)
        if not (concurrency or conf.worker_concurrency) and pool_cls.default_concurrency:
            self.concurrency = pool_cls.default_concurrency
        bounds = self._autoscale_bounds(autoscale, pool_cls)
        if bounds is not None:
            self.concurrency = max(1, bounds[1])
        self.pool = pool_cls(self.concurrency, PoolOptions(
            max_tasks_per_child=conf.worker_max_tasks_per_child if max_tasks_per_child is None
            else max_tasks_per_child,
            max_memory_per_child=conf.worker_max_memory_per_child if max_memory_per_child is None
            else max_memory_per_child,
            soft_time_limit=conf.task_soft_time_limit, time_limit=conf.task_time_limit,
            settings=conf))
        self.concurrency = self.pool.concurrency
        #: Follows the demand when autoscale is on (``--autoscale``, :meth:`set_autoscale`).
        self.autoscaler: Autoscaler | None = None
        if bounds is not None:
            self.autoscaler = Autoscaler(*bounds, keepalive=conf.worker_autoscale_keepalive)
        self.prefetch_multiplier = multiplier
        self.prefetch_limit = multiplier * self._prefetch_base() if multiplier else None
        self.transport = app.transport
        self._interrupt = self.transport.interrupt
        self.tracer = Tracer(app, self.hostname)
        try:
            parse_rate(conf.task_default_rate_limit)
        except ValueError as exc:
            from ..exceptions import ConfigurationError

            raise ConfigurationError(f"task_default_rate_limit: {exc}") from None
        self.hooks = app.plugins.hooks

        self.reserved: deque[Request] = deque()
        #: Messages of rate-limited task types waiting for a token, per type.
        self.throttled: dict[str, deque[Request]] = {}
        self._buckets: dict[str, TokenBucket | None] = {}
        self.active: dict[int, Request] = {}
        self.held: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()
        self._completions: queue_mod.SimpleQueue[tuple[Request, Any]] = queue_mod.SimpleQueue()
        self._calls: queue_mod.SimpleQueue[Callable[[], Any]] = queue_mod.SimpleQueue()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._cold = False
        self._warned_limits: set[str] = set()
        self.ready = threading.Event()
        self.stats: dict[str, int] = {}
        self.connection: Any = None
        self._next_heartbeat_check = 0.0
        self._producer: Any = None
        #: Events (``-E``); remote control switches task events with ``enable()``/``disable()``.
        self.events = WorkerEvents(
            self, enabled=conf.worker_send_task_events if task_events is None else task_events,
            heartbeat_interval=conf.worker_heartbeat_interval)
        #: ``time.monotonic()`` when the loop last turned, and whether it is
        #: connecting: what the liveness probe reads.
        self.loop_turned_at = time.monotonic()
        self.connecting = False
        self.liveness: liveness.LivenessMonitor | None = None
        #: Revoked task ids, kept up to date by remote control and the result backend.
        self.revoked = Revoked(conf.worker_revoke_expires)
        self.remote_control = RemoteControl(self)

    # -- control -------------------------------------------------------------------

    def stop(self, cold: bool = False) -> None:
        """Ask the loop to stop: warm (finish running tasks) or cold."""
        self._cold = self._cold or cold
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        """Wake the loop thread, wherever it waits (thread-safe)."""
        self._wakeup.set()
        if self._interrupt is not None and self.connection is not None:
            try:
                self._interrupt(self.connection)
            except Exception:
                logger.debug("transport interrupt failed", exc_info=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop.is_set():
            logger.warning("second %s: cold shutdown, running tasks go back to the broker",
                           signal.Signals(signum).name)
            self.stop(cold=True)
            if self.pool.inline:
                raise SystemExit(128 + signum)
        else:
            logger.warning("%s: warm shutdown (a second signal stops at once)",
                           signal.Signals(signum).name)
            self.stop()

    # -- start-up ------------------------------------------------------------------

    def start(self) -> None:
        """Run until stopped (by :meth:`stop` or SIGTERM/SIGINT)."""
        self.hooks.call("celeriac_worker_start", worker=self)
        self.app.nodename = self.hostname
        self.app.import_modules()
        previous = {}
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        self.pool.start()
        try:
            self.liveness = liveness.start_monitor(self)
            self._connect()
            self.remote_control.start()
            logger.info("%s", self.banner())
            self.ready.set()
            self.hooks.call("celeriac_worker_ready", worker=self)
            if self.ready_callback:
                self.ready_callback(self)
            self._loop()
        finally:
            try:
                self._shutdown()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _connect(self) -> None:
        import kombu

        self.connecting = True
        self.connection = self.app.connection(heartbeat=self.app.conf.broker_heartbeat)
        self.connection.ensure_connection(max_retries=self.app.conf.broker_connection_max_retries)
        self._next_heartbeat_check = 0.0
        channel = self.connection.channel()
        queues = [self.app.queue(name) for name in self.queue_names]
        self.consumer = kombu.Consumer(channel, queues, on_message=self._on_message, no_ack=False)
        if self.prefetch_limit:
            self.consumer.qos(prefetch_count=self.prefetch_limit)
        self.consumer.consume()
        self._producer = self.connection.Producer()
        self._dead_letter_queue = self.app.queue(self.app.conf.worker_dead_letter_queue)
        self._dead_letter_queue(self._producer.channel).declare()
        self.events.connect(self.connection)
        self.connecting = False

    def banner(self) -> str:
        import celeriac

        target = self.app.broker_target
        # The built-in canvas tasks (celery.map, celery.chunks...) are not the user's.
        tasks = "\n".join(f"  . {name}" for name in sorted(self.app.tasks)
                          if not name.startswith("celery.")) or "  (none)"
        limits = f"\n  note: {self.pool.limitation}" if self.pool.limitation else ""
        scaling = (f", autoscale {self.autoscaler.max_concurrency},{self.autoscaler.min_concurrency}"
                   if self.autoscaler else "")
        return (
            f"\n celeriac {celeriac.__version__}  {self.hostname}  pid {os.getpid()}\n"
            f"  app:         {self.app.name}\n"
            f"  broker:      {self.transport.name} ({target.display or target.url})\n"
            f"  results:     {self.app.backend.describe()}\n"
            f"  pool:        {self.pool_name} (concurrency {self.concurrency}{scaling}){limits}\n"
            f"  prefetch:    {self.prefetch_limit or 'unlimited'}\n"
            f"  queues:      {', '.join(self.queue_names)}\n"
            f"  dead letters: {self.app.conf.worker_dead_letter_queue}\n"
            f"  remote control: {self.remote_control.describe()}\n"
            f"  tasks:\n{tasks}\n"
        )

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        errors = tuple(self.connection.connection_errors)
        limit_held = self.app.conf.worker_eta_holding_limit
        while not self._stop.is_set():
            self.loop_turned_at = time.monotonic()
            self._check_heartbeat()
            self._drain_completions()
            self._run_calls()
            self._autoscale()
            self._release_due()
            self._release_throttled()
            self._dispatch()
            self.events.tick()
            if self._stop.is_set():
                break
            outstanding = len(self.reserved) + len(self.active) + \
                sum(len(q) for q in self.throttled.values())
            full = (self.prefetch_limit is not None and outstanding >= self.prefetch_limit) or \
                len(self.held) >= limit_held
            wait = min(self._until_next_held(), self._until_next_token())
            if full:
                self._wakeup.wait(min(wait, 0.5))
                self._wakeup.clear()
                continue
            busy = (self.active or self.reserved) and self._interrupt is None
            timeout = BUSY_DRAIN_TIMEOUT if busy else min(wait, IDLE_DRAIN_TIMEOUT)
            try:
                self.connection.drain_events(timeout=timeout)
            except TimeoutError:
                pass
            except errors as exc:
                logger.error("lost the broker connection (%s); reconnecting", exc)
                self._reconnect()
            except Exception:
                # A transport failing to build a message must not kill the worker.
                logger.exception("error while receiving messages; continuing")
                time.sleep(0.1)

    def _check_heartbeat(self) -> None:
        """Send and check broker heartbeats when they are due (AMQP); a missed
        one raises a connection error, which the loop turns into a reconnect."""
        conn = self.connection
        if not conn.supports_heartbeats or not conn.heartbeat:
            return
        moment = time.monotonic()
        if moment < self._next_heartbeat_check:
            return
        rate = max(1.0, self.app.conf.broker_heartbeat_checkrate)
        self._next_heartbeat_check = moment + conn.heartbeat / rate
        try:
            conn.heartbeat_check(rate=rate)
        except tuple(conn.connection_errors) as exc:
            logger.error("broker heartbeats missed (%s); reconnecting", exc)
            self._reconnect()

    def _until_next_held(self) -> float:
        if not self.held:
            return IDLE_DRAIN_TIMEOUT
        return max(0.0, self.held[0][0] - time.time())

    def _until_next_token(self) -> float:
        waits = [bucket.wait_time() for name, queue in self.throttled.items() if queue
                 and (bucket := self._buckets.get(name)) is not None]
        return min(waits, default=IDLE_DRAIN_TIMEOUT)

    def _reconnect(self) -> None:
        # Unacknowledged deliveries die with the connection; the broker gives them out again.
        self.reserved.clear()
        self.held.clear()
        self.throttled.clear()
        try:
            self.connection.release()
        except Exception:
            pass
        self._connect()

    # -- receiving -----------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        try:
            self._receive(message)
        except Exception as exc:
            logger.exception("unexpected error handling a message; moving it to the dead-letter queue")
            self._dead_letter(message, "error", f"{type(exc).__name__}: {exc}")

    def _receive(self, message: Any) -> None:
        app = self.app
        count = (message.delivery_info or {}).get("delivery_count")
        if isinstance(count, int) and count > app.conf.worker_max_deliveries:
            detail = (f"delivered {count} times (worker_max_deliveries is "
                      f"{app.conf.worker_max_deliveries}); it may crash the workers that run it")
            self._dead_letter(message, "redelivered", detail,
                              fail=MessageError(detail, reason="redelivered"))
            return
        serializers = app.serializers
        try:
            tm = decode(message.body, message.content_type, message.headers, message.properties,
                        serializer_for=serializers.for_content_type,
                        compressor_for=serializers.compressor_for)
        except MessageError as exc:
            self._dead_letter(message, exc.reason, str(exc), fail=exc)
            return
        task = app.tasks.get(tm.name)
        if task is None:
            missing = NotRegistered(tm.name)
            h = tm.headers
            self._dead_letter(message, missing.reason,
                              f"task {tm.name!r} is not registered in this worker (is the module "
                              f"in imports, and is every worker on this queue up to date?)",
                              fail=missing,
                              context=Context(id=h.id, task=h.task, group=h.group,
                                              group_index=h.group_index, root_id=h.root_id,
                                              parent_id=h.parent_id, chord=tm.embed.chord,
                                              is_eager=False))
            return
        request = Request.build(message, tm, task, self.hostname)
        if request.is_expired():
            self._revoke(request, "expired")
            return
        if request.id in self.revoked:
            self._revoke(request, "revoked")
            return
        self.hooks.call("celeriac_message_received", worker=self, request=request)
        if self.autoscaler is not None:
            self.autoscaler.task_received()
        self.events.task_received(request)
        if request.eta is not None and request.eta > time.time():
            heapq.heappush(self.held, (request.eta, next(self._seq), request))
            return
        self.reserved.append(request)

    def _dead_letter(self, message: Any, reason: str, detail: str, fail: BaseException | None = None,
                     context: Context | None = None) -> None:
        headers = message.headers or {}
        logger.error("dead-lettering message %s: %s (%s)", headers.get("id", "<no id>"), detail, reason)
        try:
            deadletter.publish_dead_letter(
                self._producer, self._dead_letter_queue, message,
                deadletter.dead_letter_headers(message, reason, detail, self.hostname))
        except Exception:
            logger.exception("could not move the message to the dead-letter queue; it goes back "
                             "to its queue")
            message.reject(requeue=True)
            return
        task_id = headers.get("id")
        if isinstance(task_id, str) and task_id and fail is not None:
            # With the decoded context (when there is one), a chord the task
            # belongs to fails instead of waiting for it for ever.
            self.tracer.store(context or Context(id=task_id, task=headers.get("task")), None,
                              states.FAILURE, exception_to_dict(fail), None, [])
        message.ack()
        self.events.task_dead_lettered(task_id, fail)
        self.hooks.call("celeriac_message_rejected", worker=self, message=message, reason=reason,
                        detail=detail)

    def _revoke(self, request: Request, why: str) -> None:
        logger.info("task %s[%s] %s: not run", request.name, request.id, why)
        self.tracer.store(request.context, request.task, states.REVOKED,
                          exception_to_dict(TaskRevokedError(why)), None, [])
        request.ack()
        self.events.task_revoked(request, expired=why == "expired")

    def _release_due(self) -> None:
        moment = time.time()
        while self.held and self.held[0][0] <= moment:
            _, _, request = heapq.heappop(self.held)
            self.reserved.append(request)

    # -- running -------------------------------------------------------------------

    def _dispatch(self) -> None:
        # Our own count of jobs whose on_done has not come back is the gate: a
        # pool may report a job done before its own bookkeeping says so.
        while self.reserved and not self._stop.is_set() and len(self.active) < self.concurrency:
            request = self.reserved.popleft()
            if request.is_expired():
                self._revoke(request, "expired")
                continue
            if not request.admitted and not self._admit(request):
                continue
            if not request.task.option("acks_late"):
                request.ack()
            hard, soft = request.time_limits()
            self._check_limits(request, hard, soft)
            request.time_start = time.time()
            self.active[id(request)] = request
            self.events.task_started(request)
            job = TaskJob(request, self.tracer, time_limit=hard, soft_time_limit=soft)
            self.pool.submit(job, functools.partial(self._on_done, request))
            if self.pool.inline:
                self._drain_completions()

    def bucket(self, task_name: str) -> TokenBucket | None:
        """The rate-limit bucket of a task type (None: not limited)."""
        if task_name not in self._buckets:
            task = self.app.tasks.get(task_name)
            rate = parse_rate(task.option("rate_limit")) if task is not None else None
            self._buckets[task_name] = TokenBucket(rate) if rate else None
        return self._buckets[task_name]

    def set_rate_limit(self, task_name: str, rate_limit: str | float | None) -> None:
        """Change a task type's rate limit in this worker (``None``: no limit).

        Safe from any thread: the change is made by the loop thread. A bad
        limit raises ``ValueError`` here.
        """
        rate = parse_rate(rate_limit)
        self.call_soon(lambda: self._set_bucket(task_name, rate))

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the loop thread at its next turn (thread-safe)."""
        self._calls.put(fn)
        self._wake()

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue_mod.Empty:
                return
            try:
                fn()
            except Exception:
                logger.exception("error in a call scheduled on the worker loop")

    def _set_bucket(self, task_name: str, rate: float | None) -> None:
        self._buckets[task_name] = TokenBucket(rate) if rate else None
        if rate is None:
            for request in self.throttled.pop(task_name, ()):
                request.admitted = True
                self.reserved.append(request)

    def _admit(self, request: Request) -> bool:
        """Take a token for ``request``, or set it aside until there is one."""
        bucket = self.bucket(request.name)
        waiting = self.throttled.get(request.name)
        if bucket is None or (not waiting and bucket.take()):
            request.admitted = True
            return True
        self.throttled.setdefault(request.name, deque()).append(request)
        return False

    def _release_throttled(self) -> None:
        for name, waiting in self.throttled.items():
            bucket = self._buckets.get(name)
            while waiting and (bucket is None or bucket.take()):
                request = waiting.popleft()
                request.admitted = True
                self.reserved.appendleft(request)

    def _check_limits(self, request: Request, hard: float | None, soft: float | None) -> None:
        missing = (hard is not None and not self.pool.hard_time_limits) or \
            (soft is not None and not self.pool.soft_time_limits)
        if missing and request.name not in self._warned_limits:
            self._warned_limits.add(request.name)
            logger.warning("task %s has a time limit the %s pool cannot enforce: %s",
                           request.name, self.pool_name, self.pool.limitation or "not supported")

    def _on_done(self, request: Request, outcome: Any) -> None:
        # Called from pool threads: only hand over, the loop thread acks.
        self._completions.put((request, outcome))
        if not self.pool.inline:
            self._wake()

    def _drain_completions(self) -> None:
        finished = []
        completions = self._completions
        while not completions.empty():  # (this thread is the only reader: get_nowait cannot fail)
            request, outcome = completions.get_nowait()
            self.active.pop(id(request), None)
            self.stats[request.name] = self.stats.get(request.name, 0) + 1
            finished.append((request, outcome))
        if finished and not self.pool.inline:
            # Hand the freed slots their next jobs first: the pool then runs
            # them while these acknowledgements are written.
            self._dispatch()
        for request, outcome in finished:
            try:
                self._settle(request, outcome)
            except Exception as exc:
                lost = self.connection is not None and \
                    isinstance(exc, tuple(self.connection.connection_errors))
                if not lost:
                    logger.exception("could not acknowledge task %s[%s]", request.name, request.id)
                    continue
                # Its delivery died with the connection: the broker gives the
                # message out again, so the task may run a second time.
                logger.warning("could not acknowledge task %s[%s]: the broker connection was "
                               "lost (%s); the broker will deliver it again", request.name,
                               request.id, exc)

    def _settle(self, request: Request, outcome: Any) -> None:
        if isinstance(outcome, Outcome):
            self.events.task_finished(request, outcome)
            if outcome.ack:
                request.ack()
            else:
                request.requeue()
            return
        failed = outcome if isinstance(outcome, JobFailed) else JobFailed("error", outcome)
        if failed.reason == "worker-lost" and request.task.option("reject_on_worker_lost"):
            logger.error("the process running %s[%s] died; the task goes back to the queue",
                         request.name, request.id)
            self.events.task_requeued(request)
            request.requeue()
            return
        revoked = failed.reason == "terminated"  # by a revoke with terminate=True
        exc = failed.exception or (TaskRevokedError("terminated") if revoked else
                                   WorkerLostError(f"task ended without a result: {failed.reason}"))
        self.events.task_lost(request, failed, exc)
        if revoked:
            self.tracer.store(request.context, request.task, states.REVOKED,
                              exception_to_dict(exc), None, [])
            request.ack()
            return
        # A time limit or a lost process fails the task as if it had raised
        # (Celery does the same): errbacks run, the rest of its chain is
        # marked failed, a chord it belongs to fails.
        ended = self.tracer.fail(request.task, request.context, exc,
                                        f"{type(exc).__name__}: {exc}")
        if ended.ack:
            request.ack()
        else:
            request.requeue()

    # -- pool size -----------------------------------------------------------------

    def _autoscale_bounds(self, autoscale: str | Sequence[int] | None,
                          pool_cls: type[Pool]) -> tuple[int, int] | None:
        from ..exceptions import ConfigurationError

        source = "--autoscale" if autoscale is not None else "worker_autoscale"
        try:
            bounds = parse_autoscale(autoscale if autoscale is not None
                                     else self.app.conf.worker_autoscale)
        except ValueError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        if bounds is not None and not pool_cls.resizable:
            raise ConfigurationError(
                f"{source} needs a pool that can be resized, and the {self.pool_name} pool "
                f"cannot; use one that can (e.g. -P prefork) or drop {source}")
        return bounds

    def _prefetch_base(self) -> int:
        # With autoscale the window is sized for the largest pool, else the
        # pool could never see enough waiting work to grow (Celery does the same).
        return self.autoscaler.max_concurrency if self.autoscaler else self.concurrency

    def _demand(self) -> int:
        return len(self.active) + len(self.reserved)

    def _autoscale(self) -> None:
        if self.autoscaler is not None:
            change = self.autoscaler.decide(self._demand(), self.pool.concurrency)
            if change:
                self._resize(change)

    def _resize(self, change: int) -> None:
        """Grow (``change`` > 0) or shrink the pool; keep the dispatch gate and
        the prefetch window in step (loop thread)."""
        before = self.pool.concurrency
        try:
            if change > 0:
                self.pool.grow(change)
            elif change < 0:
                self.pool.shrink(-change)
        except Exception:
            logger.exception("could not resize the %s pool by %+d", self.pool_name, change)
        self.concurrency = self.pool.concurrency
        if self.concurrency != before:
            logger.info("pool %s from %d to %d", "grown" if self.concurrency > before
                        else "shrunk", before, self.concurrency)
        self._update_prefetch()

    def _update_prefetch(self) -> None:
        if not self.prefetch_multiplier:
            return
        limit = self.prefetch_multiplier * self._prefetch_base()
        if limit == self.prefetch_limit:
            return
        self.prefetch_limit = limit
        if self.connection is not None:
            try:
                self.consumer.qos(prefetch_count=limit)
            except Exception:
                logger.exception("could not change the prefetch count to %d", limit)

    def _check_resizable(self) -> None:
        if not self.pool.resizable:
            raise NotImplementedError(f"the {self.pool_name} pool cannot be resized")

    @staticmethod
    def _count(n: Any, what: str) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{what} takes a whole number of at least 1, got {n!r}")
        return n

    def grow_pool(self, n: int) -> None:
        """Add ``n`` to the pool's concurrency (remote control ``pool_grow``).

        Safe from any thread: checked here (``NotImplementedError`` when the
        pool cannot be resized, ``ValueError`` for a bad ``n``), done by the
        loop thread. With autoscale on, its maximum rises with the pool when
        needed, as in Celery.
        """
        self._check_resizable()
        n = self._count(n, "grow_pool")
        self.call_soon(lambda: self._grow(n))

    def _grow(self, n: int) -> None:
        if self.autoscaler is not None:
            self.autoscaler.update(max(self.autoscaler.max_concurrency, self.pool.concurrency + n),
                                   self.autoscaler.min_concurrency)
        self._resize(n)

    def shrink_pool(self, n: int) -> None:
        """Take ``n`` from the pool's concurrency, never below 1 (remote
        control ``pool_shrink``); running tasks finish first.

        Checked and done as :meth:`grow_pool`. With autoscale on, its minimum
        falls with the pool when needed.
        """
        self._check_resizable()
        n = self._count(n, "shrink_pool")
        self.call_soon(lambda: self._shrink(n))

    def _shrink(self, n: int) -> None:
        n = min(n, self.pool.concurrency - 1)
        if n <= 0:
            logger.info("the pool is at its smallest (1); not shrunk")
            return
        if self.autoscaler is not None:
            self.autoscaler.update(self.autoscaler.max_concurrency,
                                   min(self.autoscaler.min_concurrency, self.pool.concurrency - n))
        self._resize(-n)

    def set_autoscale(self, max: int, min: int) -> None:  # noqa: A002 - Celery's names
        """Turn autoscale on with these bounds, or change them (remote control
        ``autoscale``); the pool is brought within them at once.

        Checked here (``NotImplementedError`` when the pool cannot be resized,
        ``ValueError`` for bad bounds), done by the loop thread.
        """
        self._check_resizable()
        bounds = check_bounds(max, min)
        self.call_soon(lambda: self._set_autoscale(*bounds))

    def _set_autoscale(self, high: int, low: int) -> None:
        if self.autoscaler is None:
            self.autoscaler = Autoscaler(high, low,
                                         keepalive=self.app.conf.worker_autoscale_keepalive)
        else:
            self.autoscaler.update(high, low)
        logger.info("autoscale: at most %d, at least %d", high, low)
        current = self.pool.concurrency
        if current > high:
            self._resize(high - current)
        elif current < max(low, 1):
            self._resize(max(low, 1) - current)
        else:
            self._update_prefetch()

    # -- shutdown ------------------------------------------------------------------

    def _shutdown(self) -> None:
        conf = self.app.conf
        self._safe(self.remote_control.stop)
        if self.connection is not None:
            try:
                self.consumer.cancel()
            except Exception:
                logger.debug("cancel failed", exc_info=True)
            self._drain_completions()
            # Prefetched but not started: back to the broker at once.
            throttled = [r for queue in self.throttled.values() for r in queue]
            for request in list(self.reserved) + [r for _, _, r in self.held] + throttled:
                self._safe(request.requeue)
            self.reserved.clear()
            self.held.clear()
            self.throttled.clear()
            deadline = time.monotonic() + conf.worker_shutdown_timeout
            while self.active and not self._cold and time.monotonic() < deadline:
                self._wakeup.wait(0.05)
                self._wakeup.clear()
                self._drain_completions()
        # Jobs still running are handed back (no on_done will come for them):
        # their messages are requeued below.
        self.pool.stop(0)
        self._drain_completions()
        for request in list(self.active.values()):
            logger.warning("task %s[%s] did not finish before shutdown; it goes back to the queue",
                           request.name, request.id)
            self._safe(request.requeue)
        self._safe(self.events.stop)
        self.hooks.call("celeriac_worker_stop", worker=self)
        if self.connection is not None:
            self._safe(self.connection.release)
        self.app.close()
        logger.info("worker %s stopped", self.hostname)
        if self.liveness is not None:
            self._safe(self.liveness.stop)

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            logger.debug("ignored error during shutdown", exc_info=True)
