"""Revokes: what a worker remembers, and what is kept in the result backend.

A revoke is a fact about a task id that lasts ``worker_revoke_expires``
seconds (Celery's 3 hours). It lives in three places:

* the memory of every worker that heard it (:class:`Revoked`), as in Celery;
* the result backend, when it can keep revokes
  (:attr:`celeriac.backend.ResultBackend.stores_revokes`): clients and workers
  store each revoke there (:func:`remember`), and workers load the stored ones
  at start-up, so a revoke outlives every worker that heard it;
* the task's state: a task that has not started is marked ``REVOKED`` at once
  (:func:`mark_revoked`), as a Celery 5.7 worker does when a revoke reaches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .. import states

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger("celeriac.control")

#: States a revoke may replace with REVOKED: the task has not started.
NOT_STARTED = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})


def task_ids_of(value: Any) -> list[str]:
    """``task_id`` as a revoke gives it (one id or a list of ids), as a list.

    Raises ``ValueError`` for anything else, saying what was wrong.
    """
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, (list, tuple, set, frozenset)) or \
            not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"task_id must be a task id or a list of task ids, not {value!r}")
    return list(dict.fromkeys(ids))


class Revoked:
    """Revoked task ids with the time (Unix) each revoke expires.

    Not thread-safe: a worker uses it from its loop thread only.
    """

    #: Expired ids are swept after this many adds.
    SWEEP_EVERY = 1000

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self._until: dict[str, float] = {}
        self._adds = 0

    def add(self, task_ids: Iterable[str], until: float | None = None) -> None:
        """Revoke ``task_ids`` until ``until`` (default: ``expires`` from now);
        an id revoked again keeps the later expiry."""
        until = time.time() + self.expires if until is None else until
        for task_id in task_ids:
            if self._until.get(task_id, 0.0) < until:
                self._until[task_id] = until
            self._adds += 1
        if self._adds >= self.SWEEP_EVERY:
            self._adds = 0
            self.sweep()

    def merge(self, stored: Mapping[str, float]) -> None:
        """Add revokes read from the result backend (id -> expiry)."""
        for task_id, until in stored.items():
            self.add((task_id,), until)

    def sweep(self) -> None:
        """Forget the revokes that expired."""
        moment = time.time()
        for task_id in [i for i, until in self._until.items() if until <= moment]:
            del self._until[task_id]

    def __contains__(self, task_id: object) -> bool:
        until = self._until.get(task_id) if isinstance(task_id, str) else None
        return until is not None and until > time.time()

    def ids(self) -> list[str]:
        """The ids revoked now, oldest revoke first."""
        moment = time.time()
        return [i for i, until in self._until.items() if until > moment]

    def __len__(self) -> int:
        return len(self.ids())


def remember(app: App, task_ids: list[str]) -> bool:
    """Store a revoke of ``task_ids`` in the app's result backend when it can
    keep revokes; returns whether it did. Backend errors propagate."""
    backend = app.backend
    if not (backend.enabled and backend.stores_revokes):
        return False
    backend.revoke(task_ids, expires=app.conf.worker_revoke_expires)
    return True


def mark_revoked(app: App, task_ids: Iterable[str]) -> list[str]:
    """Store ``REVOKED`` for the tasks of ``task_ids`` that have not started
    (state PENDING, RECEIVED, RETRY or REJECTED), as a Celery 5.7 worker does
    when a revoke reaches it; a task that started or finished is left to the
    worker running it. Returns the ids marked. Backend errors propagate.
    """
    from ..exceptions import TaskRevokedError
    from ..serialization import exception_to_dict
    from ..timeutils import now, to_iso

    backend = app.backend
    if not backend.enabled:
        return []
    ids = list(task_ids)
    found = backend.get_many(ids)
    marked = []
    for task_id in ids:
        current = found.get(task_id)
        if current is not None and current.get("status") not in NOT_STARTED:
            continue
        document: dict[str, Any] = {"status": states.REVOKED,
                    "result": exception_to_dict(TaskRevokedError("revoked")),
                    "traceback": None, "children": [], "date_done": to_iso(now()),
                    "task_id": task_id}
        if backend.store(task_id, document, expires=app.conf.result_expires):
            marked.append(task_id)
    return marked
