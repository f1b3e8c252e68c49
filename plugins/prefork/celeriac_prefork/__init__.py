"""The prefork pool: tasks run in child processes forked from the worker.

The pool for CPU-bound tasks and for tasks that must be stopped from outside:
it enforces hard and soft time limits, replaces children after
``max_tasks_per_child`` tasks or ``max_memory_per_child`` KiB, can be resized
(``pool_grow``/``pool_shrink``, ``--autoscale``) and can end one running task
(revoke with ``terminate=True``). Needs ``os.fork`` (Linux, macOS).

The entry point ``celeriac.pools: prefork`` names :data:`pool`; the pool
class is imported only when a worker uses it.
"""

from __future__ import annotations

from celeriac.plugin import PoolPlugin

__all__ = ["pool"]

pool = PoolPlugin(
    name="prefork",
    pool_class="celeriac_prefork.prefork:PreforkPool",
    description="Runs tasks in child processes forked from the worker (time limits, recycling, "
                "resizing, autoscale).",
)
"""Registration record named by the ``prefork`` entry point."""
