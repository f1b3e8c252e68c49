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
    "Signature": "celeriac.canvas",
    "signature": "celeriac.canvas",
    "maybe_signature": "celeriac.canvas",
    "chain": "celeriac.canvas",
    "group": "celeriac.canvas",
    "chord": "celeriac.canvas",
    "chunks": "celeriac.canvas",
    "xmap": "celeriac.canvas",
    "xstarmap": "celeriac.canvas",
    "GroupResult": "celeriac.result",
    "ResultSet": "celeriac.result",
    "Ignore": "celeriac.exceptions",
    "states": "celeriac.states",
    "Retry": "celeriac.exceptions",
    "MaxRetriesExceededError": "celeriac.exceptions",
    "TaskRevokedError": "celeriac.exceptions",
    "TimeLimitExceeded": "celeriac.exceptions",
    "SoftTimeLimitExceeded": "celeriac.exceptions",
    "WorkerLostError": "celeriac.exceptions",
    "TimeoutError": "celeriac.exceptions",
    "ConfigurationError": "celeriac.exceptions",
}

__all__ = [
    "App", "AsyncResult", "ConfigurationError", "EagerResult", "GroupResult", "Ignore",
    "MaxRetriesExceededError", "ResultSet", "Retry", "Signature", "SoftTimeLimitExceeded", "Task",
    "TaskRevokedError", "TimeLimitExceeded", "TimeoutError", "WorkerLostError", "chain", "chord",
    "chunks", "current_app", "group", "maybe_signature", "signature", "states", "xmap",
    "xstarmap",
]

if TYPE_CHECKING:
    from .app import App, current_app
    from .canvas import (
        Signature,
        chain,
        chord,
        chunks,
        group,
        maybe_signature,
        signature,
        xmap,
        xstarmap,
    )
    from .exceptions import (
        ConfigurationError,
        Ignore,
        MaxRetriesExceededError,
        Retry,
        SoftTimeLimitExceeded,
        TaskRevokedError,
        TimeLimitExceeded,
        TimeoutError,
        WorkerLostError,
    )
    from .result import AsyncResult, EagerResult, GroupResult, ResultSet
    from .task import Task


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
