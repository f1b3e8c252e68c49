"""celeriac: a distributed task queue that speaks Celery's protocol.

``from celeriac import App`` is all most projects need. Importing this package
imports no plugin and no broker library: names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "App": "celeriac.app",
    "current_app": "celeriac.app",
    "Task": "celeriac.task",
    "AsyncResult": "celeriac.result",
    "EagerResult": "celeriac.result",
    "Signature": "celeriac.protocol",
    "states": "celeriac.states",
    "Retry": "celeriac.exceptions",
    "MaxRetriesExceededError": "celeriac.exceptions",
    "TaskRevokedError": "celeriac.exceptions",
    "TimeoutError": "celeriac.exceptions",
    "ConfigurationError": "celeriac.exceptions",
}

__all__ = [
    "App", "AsyncResult", "ConfigurationError", "EagerResult", "MaxRetriesExceededError", "Retry",
    "Signature", "Task", "TaskRevokedError", "TimeoutError", "current_app", "signature", "states",
]

if TYPE_CHECKING:
    from .app import App, current_app
    from .exceptions import (
        ConfigurationError,
        MaxRetriesExceededError,
        Retry,
        TaskRevokedError,
        TimeoutError,
    )
    from .protocol import Signature
    from .result import AsyncResult, EagerResult
    from .task import Task


def signature(task: Any, args: Any = (), kwargs: Any = None, **options: Any) -> Any:
    """A signature by task name or task: ``signature("proj.add", (2, 2))``."""
    from .protocol import Signature

    name = task if isinstance(task, str) else task.name
    immutable = bool(options.pop("immutable", False))
    return Signature(name, tuple(args or ()), dict(kwargs or {}), options, immutable=immutable)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'celeriac' has no attribute {name!r}")
    import importlib

    if name == "states":
        return importlib.import_module(module)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
