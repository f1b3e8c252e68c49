"""The gevent pool: tasks run in greenlets, in the worker's one thread.

Good for many I/O-bound tasks at once (thousands of concurrent HTTP calls).
The standard library must be monkey-patched before anything else is imported,
so the record names :func:`patch`, which ``celeriac worker -P gevent`` runs
first thing (see :mod:`celeriac.patching`). This module imports neither
gevent nor kombu: it is read before the patch runs.

The entry point ``celeriac.pools: gevent`` names :data:`pool`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.plugin import PoolPlugin

if TYPE_CHECKING:
    from ._pool import GeventPool

__all__ = ["GeventPool", "is_patched", "patch", "pool"]


def patch() -> None:
    """Monkey-patch the standard library for gevent (idempotent)."""
    from gevent import monkey

    if not is_patched():
        monkey.patch_all()


def is_patched() -> bool:
    """Whether sockets and threads of this process are gevent's."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("threading"))


def __getattr__(name: str) -> Any:
    if name == "GeventPool":
        from ._pool import GeventPool

        return GeventPool
    raise AttributeError(f"module 'celeriac_gevent' has no attribute {name!r}")


pool = PoolPlugin(
    name="gevent",
    pool_class="celeriac_gevent._pool:GeventPool",
    description="Runs tasks in greenlets (many I/O-bound tasks at once; monkey-patches the "
                "process at start-up).",
    patch="celeriac_gevent:patch",
)
"""Registration record named by the ``gevent`` entry point."""
