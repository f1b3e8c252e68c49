"""The eventlet pool: tasks run in green threads, in the worker's one OS thread.

Good for many I/O-bound tasks at once. eventlet itself is in bug-fix-only
maintenance (it says so when imported); prefer the gevent or asyncio pools for
new projects. The standard library must be monkey-patched before anything
else is imported, so the record names :func:`patch`, which ``celeriac worker
-P eventlet`` runs first thing (see :mod:`celeriac.patching`). This module
imports neither eventlet nor kombu: it is read before the patch runs.

The entry point ``celeriac.pools: eventlet`` names :data:`pool`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.plugin import PoolPlugin

if TYPE_CHECKING:
    from ._pool import EventletPool

__all__ = ["EventletPool", "is_patched", "patch", "pool"]


def patch() -> None:
    """Monkey-patch the standard library for eventlet (idempotent)."""
    import eventlet

    if is_patched():
        return
    eventlet.monkey_patch()
    import threading

    from eventlet.green import threading as green_threading

    # eventlet's patched current_thread() answers its own main thread object
    # while main_thread() still answers the original one, so the usual
    # `current_thread() is main_thread()` test (the worker's, before it
    # installs its SIGTERM handler) would be false in the main thread.
    threading.main_thread = green_threading.main_thread


def is_patched() -> bool:
    """Whether sockets and threads of this process are eventlet's."""
    from eventlet import patcher

    return bool(patcher.is_monkey_patched("socket") and patcher.is_monkey_patched("thread"))


def __getattr__(name: str) -> Any:
    if name == "EventletPool":
        from ._pool import EventletPool

        return EventletPool
    raise AttributeError(f"module 'celeriac_eventlet' has no attribute {name!r}")


pool = PoolPlugin(
    name="eventlet",
    pool_class="celeriac_eventlet._pool:EventletPool",
    description="Runs tasks in eventlet green threads (many I/O-bound tasks at once; "
                "monkey-patches the process at start-up).",
    patch="celeriac_eventlet:patch",
)
"""Registration record named by the ``eventlet`` entry point."""
