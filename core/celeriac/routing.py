"""Routing: which queue a task goes to (``task_routes``, ``queue=``, defaults).

Celery's rules: an explicit ``queue=`` wins, then the first route that
matches the task name (exact name or glob pattern, in order), then the
task's own ``queue`` option, then ``task_default_queue``. Tasks are published
through the default exchange with the queue's name as routing key.
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
        if options.get("queue"):
            return {"queue": options["queue"]}
        for pattern, target in self.routes:
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return target
        return {"queue": task_queue or self.default_queue}
