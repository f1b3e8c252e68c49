"""Task results: :class:`AsyncResult` (read from the result backend) and
:class:`EagerResult` (a task run in the caller)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from . import _state, states
from .exceptions import TaskRevokedError, TimeoutError
from .serialization import exception_from_dict
from .timeutils import parse_iso

if TYPE_CHECKING:
    from .app import App

_PENDING = {"status": states.PENDING, "result": None, "traceback": None, "children": None,
            "date_done": None}


class AsyncResult:
    """The state and return value of a task, by id.

    Reading a property fetches the task's document from the result backend
    (once it is ready the document is cached: a ready state never changes).
    """

    def __init__(self, id: str, app: App | None = None, task_name: str | None = None,
                 parent: AsyncResult | None = None) -> None:
        if app is None:
            from .app import current_app

            app = current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None

    # -- fetching ------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        doc = self.app.backend.get(self.id) or _PENDING
        if doc.get("status") in states.READY_STATES:
            self._cache = doc
        return doc

    def get(self, timeout: float | None = None, propagate: bool = True,
            disable_sync_subtasks: bool = True, **_: Any) -> Any:
        """Wait for the task to finish and return its value.

        Raises :class:`celeriac.exceptions.TimeoutError` after ``timeout``
        seconds; re-raises the task's exception when it failed (and
        :class:`TaskRevokedError` when it was revoked) unless ``propagate`` is
        false, in which case the exception is returned.
        """
        if disable_sync_subtasks and _state.current() is not None:
            raise RuntimeError(
                "Never call result.get() within a task: it can deadlock the worker. "
                "Chain the tasks instead, or pass disable_sync_subtasks=False if you must."
            )
        doc = self._cache
        if doc is None:
            doc = self.app.backend.wait(self.id, timeout=timeout)
            if doc is None or doc.get("status") not in states.READY_STATES:
                raise TimeoutError(f"task {self.id} did not finish within {timeout} s "
                                   f"(state {(doc or _PENDING).get('status')})")
            self._cache = doc
        return self._value(doc, propagate)

    wait = get

    @staticmethod
    def _value(doc: dict[str, Any], propagate: bool) -> Any:
        status = doc.get("status")
        if status in states.EXCEPTION_STATES:
            exc = exception_from_dict(doc.get("result"))
            if status == states.REVOKED and not isinstance(exc, TaskRevokedError):
                exc = TaskRevokedError(str(exc))
            if propagate:
                raise exc
            return exc
        return doc.get("result")

    # -- properties ----------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._document().get("status", states.PENDING)

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception when the task failed."""
        doc = self._document()
        return self._value(doc, propagate=False) if doc.get("status") in states.EXCEPTION_STATES \
            else doc.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        return self._document().get("traceback")

    @property
    def date_done(self) -> dt.datetime | None:
        value = self._document().get("date_done")
        return parse_iso(value) if isinstance(value, str) else value

    @property
    def children(self) -> list[AsyncResult]:
        out = []
        for child in self._document().get("children") or []:
            try:
                out.append(AsyncResult(child[0][0], app=self.app, parent=self))
            except (TypeError, IndexError):
                continue
        return out

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def forget(self) -> None:
        """Remove the result from the backend."""
        self._cache = None
        self.app.backend.forget(self.id)

    def as_tuple(self) -> list[Any]:
        return [[self.id, self.parent.as_tuple() if self.parent else None], None]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"


class EagerResult(AsyncResult):
    """The result of a task run in the caller (``task.apply()`` or eager mode)."""

    def __init__(self, id: str, retval: Any, state: str, traceback: str | None = None,
                 app: App | None = None, task_name: str | None = None) -> None:
        super().__init__(id, app=app, task_name=task_name)
        self._cache = {"status": state, "result": retval, "traceback": traceback,
                       "children": [], "date_done": None, "task_id": id}
        self._retval = retval

    def _document(self) -> dict[str, Any]:
        assert self._cache is not None
        return self._cache

    def get(self, timeout: float | None = None, propagate: bool = True,
            disable_sync_subtasks: bool = True, **_: Any) -> Any:
        state = self._cache["status"]  # type: ignore[index]
        if state in states.EXCEPTION_STATES:
            if propagate:
                raise self._retval
            return self._retval
        return self._retval

    @property
    def result(self) -> Any:
        return self._retval

    info = result

    def forget(self) -> None:
        pass
