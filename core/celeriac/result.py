"""Task results: :class:`AsyncResult` (read from the result backend),
:class:`EagerResult` (a task run in the caller), and the results of many tasks:
:class:`ResultSet` and :class:`GroupResult` (a group's, which can be saved in
the result backend and restored by id).

A result can name its parent (the task whose success sent it: the previous
step of a chain, the header of a chord) and its children (what it sent, as
stored with its result). Results travel as Celery's tuples
(``[[id, parent], children]``, PROTOCOL.md C.2): :meth:`AsyncResult.as_tuple`
and :func:`result_from_tuple`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
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
        self._parent: AsyncResult | GroupResult | None = parent
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
            disable_sync_subtasks: bool = True, follow_parents: bool = True,
            **_: Any) -> Any:
        """Wait for the task to finish and return its value.

        Raises :class:`celeriac.exceptions.TimeoutError` after ``timeout``
        seconds; re-raises the task's exception when it failed (and
        :class:`TaskRevokedError` when it was revoked) unless ``propagate`` is
        false, in which case the exception is returned. With
        ``follow_parents`` (and ``propagate``), a parent that already failed
        (an earlier step of its chain, its chord's header) is raised first,
        as Celery does.
        """
        if disable_sync_subtasks:
            _check_not_in_task()
        if propagate and follow_parents:
            self._maybe_reraise_parent_error()
        doc = self._cache
        if doc is None:
            doc = self.app.backend.wait(self.id, timeout=timeout)
            if doc is None or doc.get("status") not in states.READY_STATES:
                raise TimeoutError(f"task {self.id} did not finish within {timeout} s "
                                   f"(state {(doc or _PENDING).get('status')})")
            self._cache = doc
        return self._value(doc, propagate)

    wait = get

    def _maybe_reraise_parent_error(self) -> None:
        """Raise the error of the first failed parent, from the root down
        (only parents the result was built with: no lookups by stored id)."""
        parents = []
        node = self._parent
        while node is not None:
            parents.append(node)
            node = node._parent if isinstance(node, AsyncResult) else node.parent
        for parent in reversed(parents):
            parent.maybe_throw()

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the task's exception if it has failed (or was revoked)."""
        doc = self._document()
        if propagate and doc.get("status") in states.PROPAGATE_STATES:
            self._value(doc, True)

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
    def parent(self) -> AsyncResult | GroupResult | None:
        """The result this one follows: the one it was built with (a chain's
        previous step, a chord's header GroupResult), else the task named by
        the stored ``parent_id`` (the task that sent this one), else None."""
        if self._parent is None and self.app.backend.enabled:
            parent_id = self._document().get("parent_id")
            if parent_id and parent_id != self.id:  # a retried task names itself
                self._parent = AsyncResult(parent_id, app=self.app)
        return self._parent

    @parent.setter
    def parent(self, value: AsyncResult | GroupResult | None) -> None:
        self._parent = value

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        """What the task sent (callbacks, the next chain step, tasks it
        called), from its stored result; empty until it has finished."""
        out = []
        for child in self._document().get("children") or []:
            try:
                out.append(result_from_tuple(child, self.app))
            except (TypeError, IndexError, ValueError):
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

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | int | None = None,
               wait: bool = False, timeout: float | None = None) -> Any:
        """Revoke the task (``app.control.revoke``): it never runs if it has
        not started; ``terminate`` ends it if it runs. ``wait`` returns the
        workers' replies, collected for ``timeout`` seconds (default 1)."""
        return self.app.control.revoke(self.id, connection=connection, terminate=terminate,
                                       signal=signal or "SIGTERM", reply=wait,
                                       timeout=1.0 if timeout is None else timeout)

    def as_tuple(self) -> list[Any]:
        """``[[id, parent tuple or None], None]``: Celery's form (only a parent
        the result was built with is included: no backend read)."""
        return [[self.id, self._parent.as_tuple() if self._parent is not None else None], None]

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
            disable_sync_subtasks: bool = True, follow_parents: bool = True,
            **_: Any) -> Any:
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


def _check_not_in_task() -> None:
    if _state.current() is not None:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Chain the tasks instead (a chord waits for a group), or pass "
            "disable_sync_subtasks=False if you must.")


class ResultSet:
    """The results of several tasks, in order (Celery's ``ResultSet``).

    ``get``/``join`` return their values as a list in that order;
    ``ready``, ``successful``, ``failed``, ``waiting`` and
    ``completed_count`` read every member's state in one backend call
    (``get_many``) where the members are plain task results.
    """

    def __init__(self, results: Iterable[Any] | None = None, app: App | None = None,
                 **_: Any) -> None:
        self._app = app
        self.results: list[Any] = results if isinstance(results, list) else list(results or ())

    @property
    def app(self) -> App:
        if self._app is None:
            if self.results:
                self._app = self.results[0].app
            else:
                from .app import current_app

                self._app = current_app()
        return self._app

    @app.setter
    def app(self, app: App) -> None:
        self._app = app

    @property
    def backend(self) -> Any:
        return self.app.backend

    @property
    def supports_native_join(self) -> bool:
        """``get`` uses :meth:`join_native` (batched reads and the backend's
        own waiting); every enabled backend can, through its contract."""
        return bool(self.backend.enabled)

    # -- membership --------------------------------------------------------------

    def add(self, result: Any) -> None:
        """Add ``result`` unless it is a member already."""
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Any) -> None:
        """Remove ``result`` (a result or an id); ``KeyError`` if it is not a member."""
        if isinstance(result, str):
            result = self.app.AsyncResult(result)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: Any) -> None:
        """Remove ``result`` if it is a member."""
        try:
            self.remove(result)
        except KeyError:
            pass

    def update(self, results: Iterable[Any]) -> None:
        """Add the results that are not members yet."""
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        self.results[:] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(str(r.id) for r in self.results)}]>"

    # -- states ------------------------------------------------------------------

    def _states(self) -> Iterator[tuple[Any, str | None]]:
        """Each member with its state when read in the one batch (plain,
        not yet cached task results), else ``None`` (ask the member)."""
        plain = [r for r in self.results if type(r) is AsyncResult and r._cache is None]
        found = self.backend.get_many([r.id for r in plain]) if plain else {}
        for result in self.results:
            if type(result) is AsyncResult and result._cache is None:
                doc = found.get(result.id) or _PENDING
                if doc.get("status") in states.READY_STATES:
                    result._cache = doc
                yield result, doc.get("status")
            else:
                yield result, None

    def ready(self) -> bool:
        """Every member has finished (succeeded, failed or was revoked)."""
        return all(r.ready() if s is None else s in states.READY_STATES
                   for r, s in self._states())

    def waiting(self) -> bool:
        """Some member has not finished."""
        return not self.ready()

    def successful(self) -> bool:
        """Every member succeeded."""
        return all(r.successful() if s is None else s == states.SUCCESS
                   for r, s in self._states())

    def failed(self) -> bool:
        """Some member failed."""
        return any(r.failed() if s is None else s == states.FAILURE for r, s in self._states())

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(int(r.successful() if s is None else s == states.SUCCESS)
                   for r, s in self._states())

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the exception of the first member that failed (if ``propagate``)."""
        if not propagate:
            return
        for result, state in self._states():
            if state is None or state in states.PROPAGATE_STATES:
                result.maybe_throw()

    def forget(self) -> None:
        """Remove every member's result from the backend."""
        for result in self.results:
            result.forget()

    def revoke(self, connection: Any = None, terminate: bool = False,
               signal: str | int | None = None, wait: bool = False,
               timeout: float | None = None) -> Any:
        """Revoke every member (one ``app.control.revoke`` for all their ids)."""
        return self.app.control.revoke([r.id for r in self.results], connection=connection,
                                       terminate=terminate, signal=signal or "SIGTERM",
                                       reply=wait, timeout=1.0 if timeout is None else timeout)

    # -- waiting -----------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            callback: Callable[[str, Any], None] | None = None,
            disable_sync_subtasks: bool = True, **_: Any) -> list[Any] | None:
        """Wait for every member; their values in order (see :meth:`join_native`)."""
        join = self.join_native if self.supports_native_join else self.join
        return join(timeout=timeout, propagate=propagate, interval=interval, callback=callback,
                    disable_sync_subtasks=disable_sync_subtasks)

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
             callback: Callable[[str, Any], None] | None = None,
             disable_sync_subtasks: bool = True, **_: Any) -> list[Any]:
        """Wait for each member in turn (``member.get``); their values in order.

        ``timeout`` bounds the whole wait (:class:`~celeriac.exceptions.TimeoutError`).
        A failed member's exception is raised when it is reached, or put in
        the list when ``propagate`` is false. With ``callback``, each
        ``(task_id, value)`` goes to it and the list is empty.
        """
        if disable_sync_subtasks:
            _check_not_in_task()
        start = time.monotonic()
        values = []
        for result in self.results:
            left = None if timeout is None else max(timeout - (time.monotonic() - start), 0.0)
            value = result.get(timeout=left, propagate=propagate,
                               disable_sync_subtasks=disable_sync_subtasks)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    def join_native(self, timeout: float | None = None, propagate: bool = True,
                    interval: float = 0.5, callback: Callable[[str, Any], None] | None = None,
                    disable_sync_subtasks: bool = True, **_: Any) -> list[Any] | None:
        """:meth:`join` with batched reads: the members' documents are read
        many at a time (``get_many``), and only a member that is not ready is
        waited for, by the backend's own ``wait`` (pub/sub on Redis).
        Members that are themselves result sets, or eager results, are
        joined through their own ``get``. Returns ``None`` with ``callback``."""
        if disable_sync_subtasks:
            _check_not_in_task()
        deadline = None if timeout is None else time.monotonic() + timeout
        plain = [r for r in self.results if type(r) is AsyncResult]
        docs = _ready_documents(self.backend, plain, deadline)
        values: list[Any] = []
        for result in self.results:
            if type(result) is AsyncResult:
                _member, doc = next(docs)
                value = AsyncResult._value(doc, propagate)
            else:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                value = result.get(timeout=left, propagate=propagate,
                                   disable_sync_subtasks=disable_sync_subtasks)
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return None if callback is not None else values


#: ``join_native`` reads this many members' documents per ``get_many`` after
#: it waited for one (doubling while they keep being ready).
_JOIN_WINDOW = 64


def _ready_documents(backend: Any, results: list[AsyncResult],
                     deadline: float | None) -> Iterator[tuple[AsyncResult, dict[str, Any]]]:
    """Each result with its ready document, in order: read in batches, and
    the first one that is not ready waited for with ``backend.wait``."""
    docs: dict[str, dict[str, Any]] = {r.id: r._cache for r in results if r._cache is not None}
    window = len(results)  # the first read covers every member
    for position, result in enumerate(results):
        if result.id not in docs:
            batch = [r.id for r in results[position:position + window] if r.id not in docs]
            docs.update({tid: doc for tid, doc in backend.get_many(batch).items()
                         if doc.get("status") in states.READY_STATES})
            if result.id in docs:
                window = min(window * 2, max(len(results), 1))
            else:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                doc = backend.wait(result.id, timeout=left)
                if doc is None or doc.get("status") not in states.READY_STATES:
                    raise TimeoutError(
                        f"task {result.id} did not finish within {left} s "
                        f"(state {(doc or _PENDING).get('status')})")
                docs[result.id] = doc
                window = _JOIN_WINDOW
        doc = docs.pop(result.id)
        result._cache = doc
        yield result, doc


class GroupResult(ResultSet):
    """The results of a group, with the group's id (Celery's ``GroupResult``).

    :meth:`save` keeps it in the result backend (Celery's
    ``celery-taskset-meta-<id>`` document where the backend shares Celery's
    keys) and :meth:`restore` reads it back by id, in any process.
    """

    def __init__(self, id: str | None = None, results: Iterable[Any] | None = None,
                 parent: Any = None, app: App | None = None, **kwargs: Any) -> None:
        self.id = id
        self.parent = parent
        super().__init__(results, app=app, **kwargs)

    @property
    def children(self) -> list[Any]:
        return self.results

    def save(self, backend: Any = None) -> GroupResult:
        """Store this group result for :meth:`restore` (for ``result_expires``)."""
        (backend or self.backend).save_group(str(self.id), {"result": self.as_tuple()},
                                             expires=self.app.conf.result_expires)
        return self

    def delete(self, backend: Any = None) -> None:
        """Remove what :meth:`save` stored."""
        (backend or self.backend).delete_group(str(self.id))

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: App | None = None) -> GroupResult | None:
        """The group result saved under ``id``, or ``None``."""
        if app is None:
            from .app import current_app

            app = current_app()
        document = (backend or app.backend).restore_group(id)
        if document is None:
            return None
        result = result_from_tuple(document["result"], app)
        return result if isinstance(result, GroupResult) else None

    def as_tuple(self) -> list[Any]:
        """``[[id, parent tuple or None], [member tuples]]``: Celery's form."""
        return [[self.id, self.parent.as_tuple() if self.parent is not None else None],
                [r.as_tuple() for r in self.results]]

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return (other.id == self.id and other.results == self.results
                    and other.parent == self.parent)
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id} [{', '.join(str(r.id) for r in self.results)}]>"


def result_from_tuple(value: Any, app: App | None = None) -> Any:
    """A result from Celery's tuple form: ``[[id, parent], None]`` is an
    :class:`AsyncResult`, ``[[id, parent], [members]]`` a :class:`GroupResult`."""
    if isinstance(value, (AsyncResult, ResultSet)):
        return value
    if app is None:
        from .app import current_app

        app = current_app()
    head, nodes = value
    task_id, parent = head if isinstance(head, (list, tuple)) else (head, None)
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        return GroupResult(task_id, [result_from_tuple(child, app) for child in nodes],
                           parent=parent_result, app=app)
    return AsyncResult(task_id, app=app, parent=parent_result)
