"""Routing: which queue a task goes to (``task_routes``, ``queue=``, defaults).

As in Celery 5: the first route in ``task_routes`` that matches the task
name (exact name or glob pattern, in order) gives the routing options; the
options of the call override them — an explicit ``queue=``, and the task's
own ``queue`` attribute, which ``apply_async`` passes like an explicit
option. With no queue from either, ``task_default_queue``. Tasks are
published through the default exchange with the queue's name as routing key.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigurationError


class Router:
    def __init__(self, routes: Any, default_queue: str) -> None:
        self.default_queue = default_queue
        if isinstance(routes, Mapping):
            routes = [routes]
        if not isinstance(routes, (list, tuple)):
            raise ConfigurationError(f"task_routes must be a dict or a list of dicts, got {type(routes).__name__}")
        self.routes: list[tuple[str, dict[str, Any]]] = []
        for table in routes:
            if not isinstance(table, Mapping):
                raise ConfigurationError("each entry of task_routes must be a dict")
            for pattern, target in table.items():
                if isinstance(target, str):
                    target = {"queue": target}
                if not isinstance(target, Mapping):
                    raise ConfigurationError(f"route {pattern!r} must map to a queue name or a dict")
                self.routes.append((pattern, dict(target)))

    def route(self, name: str, options: Mapping[str, Any], task_queue: str | None = None) -> dict[str, Any]:
        """Routing options (``queue``, maybe ``priority``...) for task ``name``."""
        merged: dict[str, Any] = {}
        for pattern, target in self.routes:
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                merged.update(target)
                break
        explicit = options.get("queue") or task_queue
        if explicit:
            merged["queue"] = explicit
        merged.setdefault("queue", self.default_queue)
        return merged
