"""An in-process result backend for tests.

Documents live in a process-wide store per backend URL, so a producer and a
worker running in one process (threads, or the test itself) see the same
results. Documents are kept encoded with the configured result serializer, so
a result that a real backend could not store fails here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celeriac.backend import Codec, ResultBackend
from celeriac.states import READY_STATES, SUCCESS

if TYPE_CHECKING:
    from celeriac.config import Settings

__all__ = ["MemoryBackend", "ResultStore", "reset", "store_for"]

_registry_lock = threading.Lock()
_stores: dict[str, ResultStore] = {}


class ResultStore:
    """Encoded documents by task id, with their expiry (monotonic time) and
    the status they were stored with; ``changed`` wakes waiters on stores."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.documents: dict[str, tuple[bytes, str | None, float | None]] = {}

    def live(self, task_id: str) -> tuple[bytes, str | None, float | None] | None:
        """The entry of ``task_id`` unless it expired (then it is dropped)."""
        found = self.documents.get(task_id)
        if found is not None and found[2] is not None and found[2] <= time.monotonic():
            del self.documents[task_id]
            return None
        return found

    def clear(self) -> None:
        with self.changed:
            self.documents.clear()
            self.changed.notify_all()


def store_for(url: str) -> ResultStore:
    """The process-wide store of backend URL ``url`` (created on first use)."""
    with _registry_lock:
        found = _stores.get(url)
        if found is None:
            found = _stores[url] = ResultStore()
        return found


def reset(url: str | None = None) -> None:
    """Forget every result stored under ``url``, or under every URL."""
    with _registry_lock:
        targets = list(_stores.values()) if url is None else [_stores.get(url)]
    for target in targets:
        if target is not None:
            target.clear()


class MemoryBackend(ResultBackend):
    """Result backend over a :class:`ResultStore` shared per URL in the process."""

    name = "memory"

    def __init__(self, url: str, *, codec: Codec, settings: Settings, app_name: str) -> None:
        super().__init__(url, codec=codec, settings=settings, app_name=app_name)
        self._store = store_for(url)

    def store(self, task_id: str, document: Mapping[str, Any], *, expires: float | None) -> bool:
        """Keep ``document`` unless a ``SUCCESS`` is already stored."""
        data = self.codec.encode(document)
        until = None if expires is None else time.monotonic() + expires
        with self._store.changed:
            found = self._store.live(task_id)
            if found is not None and found[1] == SUCCESS:
                return False
            self._store.documents[task_id] = (data, document.get("status"), until)
            self._store.changed.notify_all()
        return True

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The stored document, or ``None`` (unknown, forgotten or expired)."""
        with self._store.changed:
            found = self._store.live(task_id)
        return None if found is None else self.codec.decode(found[0])

    def get_many(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Documents of those ids that have one."""
        with self._store.changed:
            found = {tid: self._store.live(tid) for tid in task_ids}
        return {tid: self.codec.decode(entry[0]) for tid, entry in found.items() if entry}

    def forget(self, task_id: str) -> None:
        """Drop what is stored for ``task_id``."""
        with self._store.changed:
            self._store.documents.pop(task_id, None)

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Sleep on the store's condition until ``task_id`` is ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._store.changed:
            while True:
                found = self._store.live(task_id)
                if found is not None and found[1] in READY_STATES:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if found is not None and found[2] is not None:
                    # Wake when the document expires, so get() and wait() agree.
                    until_expiry = found[2] - time.monotonic()
                    left = until_expiry if left is None else min(left, until_expiry)
                self._store.changed.wait(left)
        return None if found is None else self.codec.decode(found[0])

    def cleanup(self) -> int:
        """Drop expired documents; return how many."""
        with self._store.changed:
            before = len(self._store.documents)
            for task_id in list(self._store.documents):
                self._store.live(task_id)
            return before - len(self._store.documents)

    def describe(self) -> str:
        """``memory://... (in-process)``."""
        return f"{self.url} (in-process)"
