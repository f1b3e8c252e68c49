"""The cluster as events show it: workers (alive or not) and tasks by state.

Feed every received event to :meth:`State.event` (an
:class:`~celeriac.events.EventReceiver` handler ``{"*": state.event}``).
The rules are Celery's (``celery.events.state``): a worker is alive while
its last heartbeat is younger than twice its heartbeat interval; a task's
state follows its events in order of *precedence*, so an event that arrives
late (a ``task-received`` after the ``task-succeeded``) adds its fields but
does not move the state back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any

import attrs

from .. import states

#: A worker is gone when no heartbeat came for this share of its interval.
HEARTBEAT_EXPIRE_WINDOW = 2.0

#: Task event -> state.
TASK_EVENT_STATES = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": states.REJECTED,
}

#: Celery's order: earlier in the list wins over later (None: custom states).
PRECEDENCE = [states.SUCCESS, states.FAILURE, None, states.REVOKED, states.STARTED,
              states.RECEIVED, states.REJECTED, states.RETRY, states.PENDING]

#: Fields a late event of this state may still set (from ``task-received``).
MERGE_FIELDS = {states.RECEIVED: frozenset({"name", "args", "kwargs", "parent_id", "root_id",
                                            "retries", "eta", "expires"})}

_COMMON = frozenset({"type", "hostname", "utcoffset", "pid", "clock", "timestamp",
                     "local_received"})


def precedence(state: str | None) -> int:
    """Position of ``state`` in :data:`PRECEDENCE` (lower wins)."""
    try:
        return PRECEDENCE.index(state)
    except ValueError:
        return PRECEDENCE.index(None)


@attrs.define
class WorkerState:
    """One node, from its ``worker-*`` events (and the task events it sent)."""

    hostname: str
    pid: int | None = None
    freq: float = 60.0
    heartbeat: float | None = None
    """``local_received`` of its last worker event (None after ``worker-offline``)."""
    clock: int = 0
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None

    def alive(self, now: float | None = None) -> bool:
        """A heartbeat came within ``freq`` × :data:`HEARTBEAT_EXPIRE_WINDOW` seconds."""
        if self.heartbeat is None:
            return False
        return (now or time.time()) < self.heartbeat + self.freq * HEARTBEAT_EXPIRE_WINDOW


@attrs.define
class TaskState:
    """One task, from its events."""

    uuid: str
    state: str = states.PENDING
    name: str | None = None
    args: str | None = None
    kwargs: str | None = None
    retries: int | None = None
    eta: str | None = None
    expires: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    worker: str | None = None
    """Node name of the worker that sent its last worker-side event."""
    client: str | None = None
    """Node name of the client that sent it (``task-sent``)."""
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    timestamp: float | None = None
    """When it entered its current state."""
    clock: int = 0
    events: dict[str, float] = attrs.field(factory=dict)
    """Event type -> its timestamp (``task-received`` -> when it was received...)."""
    extra: dict[str, Any] = attrs.field(factory=dict)
    """Other fields of its events (``requeue``, ``expired``, ``terminated``...)."""


class State:
    """Workers and tasks, updated by :meth:`event`; safe to read from another
    thread (take :attr:`lock` to read several things consistently).

    At most ``max_tasks`` tasks are kept; the least recently updated go first.
    ``rate_window``: seconds over which :meth:`rates` counts events.
    """

    def __init__(self, *, max_tasks: int = 10000, rate_window: float = 10.0) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()
        self.max_tasks = max_tasks
        self.rate_window = rate_window
        self.event_count = 0
        self.lock = threading.RLock()
        self._recent: deque[tuple[float, str]] = deque()

    def event(self, event: dict[str, Any]) -> None:
        """Apply one event (as an :class:`EventReceiver` hands it over)."""
        kind = event.get("type", "")
        received = event.get("local_received") or time.time()
        with self.lock:
            self.event_count += 1
            self._recent.append((received, kind))
            self._forget_old(received)
            hostname = event.get("hostname")
            if kind.startswith("worker-"):
                self._worker_event(kind, event, received)
            elif kind.startswith("task-") and isinstance(event.get("uuid"), str):
                self._task_event(kind, event)
            if isinstance(hostname, str) and kind != "task-sent":
                worker = self.workers.get(hostname)
                if worker is None:
                    worker = self.workers[hostname] = WorkerState(hostname)
                worker.clock = max(worker.clock, int(event.get("clock") or 0))
                if kind.startswith("task-"):
                    worker.heartbeat = received  # a worker's task event is a sign of life

    def _worker_event(self, kind: str, event: dict[str, Any], received: float) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        worker = self.workers.get(hostname) or WorkerState(hostname)
        self.workers[hostname] = worker
        for name in ("pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver",
                     "sw_sys"):
            if name in event:
                setattr(worker, name, event[name])
        worker.heartbeat = None if kind == "worker-offline" else received

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        task_id = event["uuid"]
        task = self.tasks.pop(task_id, None) or TaskState(task_id)
        self.tasks[task_id] = task
        while len(self.tasks) > self.max_tasks:
            self.tasks.popitem(last=False)
        timestamp = event.get("timestamp")
        state = TASK_EVENT_STATES.get(kind, kind[len("task-"):].upper())
        if isinstance(timestamp, (int, float)):
            task.events[kind] = float(timestamp)
        fields = {k: v for k, v in event.items() if k not in _COMMON and k != "uuid"}
        if kind == "task-sent":
            task.client = event.get("hostname")
        else:
            task.worker = event.get("hostname")
        late = (state != states.RETRY and task.state != states.RETRY
                and precedence(state) > precedence(task.state))
        if late:
            keep = MERGE_FIELDS.get(state, frozenset())
            fields = {k: v for k, v in fields.items() if k in keep}
        else:
            task.state = state
            task.timestamp = timestamp if isinstance(timestamp, (int, float)) else None
            task.clock = int(event.get("clock") or 0)
        for name, value in fields.items():
            if name in _TASK_FIELDS:
                setattr(task, name, value)
            else:
                task.extra[name] = value

    def _forget_old(self, now: float) -> None:
        horizon = now - self.rate_window
        recent = self._recent
        while recent and recent[0][0] < horizon:
            recent.popleft()

    # -- reading ---------------------------------------------------------------------

    def alive_workers(self, now: float | None = None) -> list[WorkerState]:
        with self.lock:
            return [w for w in self.workers.values() if w.alive(now)]

    def tasks_by_state(self) -> Counter[str]:
        """How many known tasks are in each state."""
        with self.lock:
            return Counter(task.state for task in self.tasks.values())

    def rates(self, now: float | None = None) -> dict[str, float]:
        """Events per second of each type over the last :attr:`rate_window` seconds."""
        with self.lock:
            self._forget_old(now or time.time())
            counts = Counter(kind for _, kind in self._recent)
        return {kind: count / self.rate_window for kind, count in counts.items()}


_TASK_FIELDS = frozenset(f.name for f in attrs.fields(TaskState)) - {"uuid", "events", "extra"}
