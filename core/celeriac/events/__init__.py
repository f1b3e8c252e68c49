"""Events in Celery's format: sending, receiving, and the cluster state they show.

* :class:`EventDispatcher` publishes events (a worker's are sent by
  :class:`celeriac.events.worker.WorkerEvents`, attached as ``worker.events``;
  a publisher sends ``task-sent`` when ``task_send_sent_event`` is on).
* :class:`EventReceiver` receives them from every node, celeriac or Celery.
* :class:`State` keeps workers (alive or not) and tasks by state.

``celeriac events`` is the terminal view built on them; see
``docs/monitoring.md``.
"""

from __future__ import annotations

from .dispatcher import EventDispatcher, LamportClock, clock_for, event_exchange
from .receiver import EventReceiver
from .state import State, TaskState, WorkerState

__all__ = ["EventDispatcher", "EventReceiver", "LamportClock", "State", "TaskState",
           "WorkerState", "clock_for", "event_exchange"]
