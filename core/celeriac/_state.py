"""Per-context state: the task running here (for ``self.request``,
``parent_id``/``root_id`` of tasks sent from inside a task, and the guard
against ``result.get()`` inside a task).

A context variable rather than a thread-local: each thread starts with its own
context, and so does each asyncio task, so many ``async def`` tasks running on
one event loop each see their own request.
"""

from __future__ import annotations

import contextvars
from typing import Any

_stack: contextvars.ContextVar[tuple[tuple[Any, Any], ...]] = contextvars.ContextVar(
    "celeriac_task_stack", default=())


def push(task: Any, request: Any) -> None:
    _stack.set((*_stack.get(), (task, request)))


def pop() -> None:
    _stack.set(_stack.get()[:-1])


def current() -> tuple[Any, Any] | None:
    stack = _stack.get()
    return stack[-1] if stack else None


def current_request() -> Any:
    top = current()
    return top[1] if top else None
