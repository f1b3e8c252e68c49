"""The result backend contract.

A backend stores one *meta document* per task id: the dict Celery stores
(``{"status", "result", "traceback", "children", "date_done", "task_id",
...}``, see PROTOCOL.md section C). The kernel builds and reads those dicts;
the backend only keeps them. ``self.codec`` turns a document into bytes and
back with the configured ``result_serializer``, for backends that store bytes.

Rules every backend keeps (the contract suite in
:mod:`celeriac.testing.contracts` checks each one):

* ``get`` of an unknown id returns ``None`` (the kernel reads that as PENDING).
* Once a document with status ``SUCCESS`` is stored, later ``store`` calls for
  that id change nothing and return ``False`` (Celery's rule: a redelivered
  task cannot overwrite a success).
* ``wait`` returns as soon as the stored status is in
  :data:`celeriac.states.READY_STATES`, or ``None`` at the timeout. Backends
  that can be told of a change (pub/sub, a version counter) should override it;
  the default polls ``get`` with a backoff from 2 ms to 50 ms.
* ``expires`` (seconds) is honoured: an expired document is gone for ``get``
  and is removed for good by ``cleanup``.
* Every method is safe to call from several threads of one process, and from
  several processes when the store is shared.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .states import READY_STATES

if TYPE_CHECKING:
    from .config import Settings
    from .task import Context


class Codec(Protocol):
    """Encodes meta documents for storage (the kernel's result serializer)."""

    content_type: str

    def encode(self, document: Mapping[str, Any]) -> bytes: ...

    def decode(self, data: bytes) -> dict[str, Any]: ...


class ResultBackend(ABC):
    """Base class of result backends. Subclass it and register a
    :class:`celeriac.plugin.BackendPlugin` under ``celeriac.backends``.

    ``url`` is the configured ``result_backend`` URL; ``app_name`` lets a
    backend pick a default location per app (the SQLite one does).
    """

    name: str = "?"
    enabled: bool = True
    """False only for the kernel's stand-in when no backend is configured."""

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        self.url = url
        self.codec = codec
        self.settings = settings
        self.app_name = app_name

    # -- required ---------------------------------------------------------------

    @abstractmethod
    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        """Store ``document`` as the state of ``task_id``.

        Returns ``False`` (and changes nothing) when the stored status is
        already ``SUCCESS``; ``True`` otherwise. ``expires`` is a number of
        seconds from now, or ``None`` to keep the document until forgotten.
        """

    @abstractmethod
    def get(self, task_id: str) -> dict[str, Any] | None:
        """The stored document of ``task_id``, or ``None``."""

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Remove what is stored for ``task_id`` (no error when there is nothing)."""

    # -- with defaults ----------------------------------------------------------

    reply_to: str | None = None
    """For backends that send results back to the caller (``rpc://``): the
    queue this process reads results from. The app puts it in the
    ``reply_to`` of every task message it sends. ``None``: the app's id."""

    def store_for(self, request: Context, document: Mapping[str, Any], *,
                  expires: float | None) -> bool:
        """Store the result of the task run for ``request``, whose
        ``reply_to`` and ``correlation_id`` say where the caller waits. The
        worker calls this one; the default is :meth:`store` by task id."""
        return self.store(request.id or "", document, expires=expires)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Documents of those ids that have one."""
        found = {}
        for task_id in task_ids:
            doc = self.get(task_id)
            if doc is not None:
                found[task_id] = doc
        return found

    #: Backoff of :meth:`poll_until_ready`, in seconds.
    first_poll: float = 0.002
    max_poll: float = 0.05

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until ``task_id`` is in a ready state; return its document.

        Returns the last document seen (possibly ``None``) when ``timeout``
        seconds pass first.
        """
        return self.poll_until_ready(lambda: self.get(task_id), timeout)

    def poll_until_ready(self, fetch: Callable[[], dict[str, Any] | None],
                         timeout: float | None) -> dict[str, Any] | None:
        """Call ``fetch`` with a backoff from ``first_poll`` to ``max_poll``
        until it returns a document in a ready state, or ``timeout`` passes
        (then the last document seen, or ``None``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.first_poll
        while True:
            doc = fetch()
            if doc is not None and doc.get("status") in READY_STATES:
                return doc
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return doc
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 1.5, self.max_poll)

    def cleanup(self) -> int:
        """Remove expired documents for good; return how many."""
        return 0

    def describe(self) -> str:
        """How the worker banner shows this backend (e.g. with its file path)."""
        return self.url

    def close(self) -> None:
        """Release connections. The backend may be used again afterwards."""
