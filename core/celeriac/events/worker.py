"""A worker's events: task events (``-E``) and its online, heartbeat and
offline announcements, in Celery's format.

Every event is sent by the worker's loop thread, on a channel of the
worker's own broker connection (which only that thread touches): the worker
calls the ``task_*`` methods where a task is received, started, settled,
revoked or dead-lettered, and :meth:`WorkerEvents.tick` once per turn of its
loop. So events work the same with every pool: a pool of processes reports
an :class:`~celeriac.trace.Outcome` back to the loop, which announces it.
Task events are buffered during a turn and sent as one ``task.multi``
message when the turn ends (before the loop waits), as a Celery worker does.

Worker events follow the loop too: heartbeats are sent every
``worker_heartbeat_interval`` seconds while the loop turns (it turns at
least once a second), so a loop that stalls also stops its heartbeats and
monitors see the worker go offline. With the solo pool the loop runs the
task itself, so no heartbeat goes out while a task runs (as with Celery's
solo pool).

When events are off the cost is one attribute test per call: no channel,
no exchange, no message.
"""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING, Any

from .. import states
from .dispatcher import EventDispatcher, clock_for

if TYPE_CHECKING:
    import kombu

    from ..pool import JobFailed
    from ..trace import Outcome
    from ..worker.request import Request
    from ..worker.worker import Worker

#: ``sw_ident`` of celeriac workers (Celery's are ``py-celery``).
SOFTWARE_IDENT = "py-celeriac"


def _repr(value: Any) -> str:
    from ..app import _saferepr

    return _saferepr(value)


def load_average() -> list[float]:
    """``[1, 5, 15]``-minute load averages, rounded as Celery sends them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return [0.0, 0.0, 0.0]


class WorkerEvents:
    """The events of one worker, attached as ``worker.events``.

    ``enabled`` says whether task events are sent. :meth:`enable` and
    :meth:`disable` switch them at run time (remote control's
    ``enable_events`` / ``disable_events``) and are safe from any thread:
    they only set what the loop reads at its next turn. The first
    :meth:`enable` also announces the worker (``worker-online``) and starts
    its heartbeats; :meth:`disable` stops task events only, so monitors keep
    seeing the worker, as with Celery.
    """

    def __init__(self, worker: Worker, *, enabled: bool, heartbeat_interval: float) -> None:
        self.worker = worker
        self.enabled = enabled
        self.heartbeat_interval = heartbeat_interval
        self._connection: kombu.Connection | None = None
        self._dispatcher: EventDispatcher | None = None
        self._online = False
        self._next_heartbeat = 0.0
        self._heartbeat_wanted = False

    # -- switches (any thread) -------------------------------------------------------

    def enable(self) -> bool:
        """Send task events from now on; False if they already were."""
        changed = not self.enabled
        self.enabled = True
        return changed

    def disable(self) -> bool:
        """Stop sending task events (heartbeats go on); False if already off."""
        changed = self.enabled
        self.enabled = False
        return changed

    def request_heartbeat(self) -> None:
        """Send a heartbeat at the loop's next turn (remote control's
        ``heartbeat``, which monitors broadcast when they start)."""
        self._heartbeat_wanted = True

    # -- the loop thread -------------------------------------------------------------

    def connect(self, connection: kombu.Connection) -> None:
        """The worker (re)connected: send on ``connection`` from now on."""
        self._connection = connection
        self._dispatcher = None

    def tick(self) -> None:
        """Once per loop turn: announce, heartbeat when due, send buffered events."""
        if not self.enabled and not self._online:
            return
        now = time.monotonic()
        if not self._online:
            self._online = True
            self._worker_event("worker-online")
            self._next_heartbeat = now + self.heartbeat_interval
        elif now >= self._next_heartbeat or self._heartbeat_wanted:
            self._heartbeat_wanted = False
            self._worker_event("worker-heartbeat")
            self._next_heartbeat = now + self.heartbeat_interval
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.pending:
            dispatcher.flush()

    def stop(self) -> None:
        """The worker stops: send what is buffered, then ``worker-offline``."""
        if self._dispatcher is None and not self._online:
            return
        if self._online:
            self._worker_event("worker-offline")
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._dispatcher = None

    def _get(self) -> EventDispatcher | None:
        if self._dispatcher is None and self._connection is not None:
            app = self.worker.app
            self._dispatcher = EventDispatcher(
                self._connection, self.worker.hostname, exchange=app.conf.event_exchange,
                clock=clock_for(app), buffered=("task",))
        return self._dispatcher

    def _send(self, event_type: str, **fields: Any) -> None:
        dispatcher = self._get()
        if dispatcher is not None:
            dispatcher.send(event_type, **fields)

    def _worker_event(self, event_type: str) -> None:
        import celeriac

        worker = self.worker
        dispatcher = self._get()
        if dispatcher is None:
            return
        dispatcher.flush()  # task events first: they happened before
        dispatcher.send(event_type, freq=self.heartbeat_interval, active=len(worker.active),
                        processed=sum(worker.stats.values()), loadavg=load_average(),
                        sw_ident=SOFTWARE_IDENT, sw_ver=celeriac.__version__,
                        sw_sys=platform.system())

    # -- task events (the loop thread) -----------------------------------------------

    def task_received(self, request: Request) -> None:
        """A valid message will be run (or held until its ETA)."""
        if not self.enabled:
            return
        h = request.task_message.headers
        ctx = request.context
        self._send("task-received", uuid=h.id, name=h.task,
                   args=h.argsrepr if h.argsrepr is not None else _repr(ctx.args),
                   kwargs=h.kwargsrepr if h.kwargsrepr is not None else _repr(ctx.kwargs),
                   root_id=h.root_id, parent_id=h.parent_id, retries=h.retries, eta=h.eta,
                   expires=h.expires)

    def task_started(self, request: Request) -> None:
        """The request was handed to the pool."""
        if not self.enabled:
            return
        self._send("task-started", uuid=request.id)
        if self.worker.pool.inline and self._dispatcher is not None:
            self._dispatcher.flush()  # the loop runs the task now: say so first

    def task_finished(self, request: Request, outcome: Outcome) -> None:
        """The pool returned ``outcome``; its message is acknowledged, or
        requeued when ``outcome.ack`` is false (then ``task-rejected``)."""
        if not self.enabled:
            return
        if not outcome.ack:
            self._send("task-rejected", uuid=request.id, requeue=True)
        elif outcome.state == states.SUCCESS:
            runtime = time.time() - request.time_start if request.time_start else 0.0
            self._send("task-succeeded", uuid=request.id, result=_repr(outcome.retval),
                       runtime=runtime)
        elif outcome.state == states.RETRY:
            reason = getattr(outcome.exception, "exc", None) or outcome.exception
            self._send("task-retried", uuid=request.id, exception=_repr(reason),
                       traceback=outcome.traceback or "")
        else:
            self._send("task-failed", uuid=request.id, exception=_repr(outcome.exception),
                       traceback=outcome.traceback or "")

    def task_lost(self, request: Request, failed: JobFailed, exc: BaseException) -> None:
        """The job ended without an outcome (time limit, lost process) and
        ``exc`` is its failure; a job ended by revoke with ``terminate`` is
        announced as ``task-revoked``."""
        if not self.enabled:
            return
        if failed.reason == "terminated":
            self._send("task-revoked", uuid=request.id, terminated=True, signum=None,
                       expired=False)
        else:
            self._send("task-failed", uuid=request.id, exception=_repr(exc), traceback="")

    def task_requeued(self, request: Request) -> None:
        """The message went back to its queue without an outcome (its process died)."""
        if self.enabled:
            self._send("task-rejected", uuid=request.id, requeue=True)

    def task_revoked(self, request: Request, *, expired: bool) -> None:
        """The task will not run: it expired, or it was revoked."""
        if self.enabled:
            self._send("task-revoked", uuid=request.id, terminated=False, signum=None,
                       expired=expired)

    def task_dead_lettered(self, task_id: Any, failure: BaseException | None) -> None:
        """The message was moved to the dead-letter queue (FAILURE stored
        when ``failure`` is given): ``task-failed`` then ``task-rejected``."""
        if not self.enabled or not isinstance(task_id, str) or not task_id:
            return
        if failure is not None:
            self._send("task-failed", uuid=task_id, exception=_repr(failure), traceback="")
        self._send("task-rejected", uuid=task_id, requeue=False)
