"""Per-thread state: the task running in this thread (for ``self.request``,
``parent_id``/``root_id`` of tasks sent from inside a task, and the guard
against ``result.get()`` inside a task)."""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


def push(task: Any, request: Any) -> None:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append((task, request))


def pop() -> None:
    _local.stack.pop()


def current() -> tuple[Any, Any] | None:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def current_request() -> Any:
    top = current()
    return top[1] if top else None
