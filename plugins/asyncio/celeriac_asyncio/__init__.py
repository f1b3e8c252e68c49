"""The asyncio pool: native ``async def`` tasks on one event loop, plain tasks in threads beside it.

``celeriac worker -P asyncio`` runs every ``async def`` task as an asyncio task
on one event loop (its own thread), so thousands of them wait on I/O at once;
``def`` tasks of the same worker run in a small thread pool beside the loop.
Time limits and ``terminate_job`` work by cancellation, for ``async def``
tasks only. See :mod:`celeriac_asyncio.eventloop`.

This module stays light (no asyncio import): the ``celeriac.pools: asyncio``
entry point names :data:`pool`, and the ``celeriac.plugins: asyncio`` entry
point registers the ``[asyncio]`` configuration section.
"""

from __future__ import annotations

from typing import Any

import attrs
from celeriac.plugin import ConfigSection, PoolPlugin, hookimpl

__all__ = ["SECTION", "AsyncioSettings", "celeriac_config_sections", "pool", "section_settings"]

SECTION = "asyncio"


def _at_least(minimum: float) -> Any:
    def check(instance: Any, attribute: Any, value: float) -> None:
        if value < minimum:
            raise ValueError(f"[asyncio] {attribute.name} must be at least {minimum}, "
                             f"got {value}")
    return check


@attrs.define(kw_only=True)
class AsyncioSettings:
    """The ``[asyncio]`` section: how the asyncio pool runs tasks."""

    threads: int = attrs.field(default=10, validator=_at_least(1), metadata={"doc": (
        "Threads that run plain ``def`` tasks beside the event loop (``async def`` tasks "
        "run on the loop and do not use them). More ``def`` tasks than this wait for a "
        "thread; all tasks together never exceed the worker's concurrency.")})
    io_threads: int = attrs.field(default=8, validator=_at_least(1), metadata={"doc": (
        "Threads that do the blocking work around ``async def`` tasks, off the loop: "
        "storing results and states, sending callbacks and chain steps, running hooks.")})
    block_warning: float = attrs.field(default=1.0, validator=_at_least(0), metadata={"doc": (
        "Seconds the event loop may stay stuck in one step of a coroutine (an ``async "
        "def`` task calling ``time.sleep`` or blocking I/O) before a warning names the task "
        "and shows the stack where the loop is stuck. 0 turns the watchdog off.")})


@hookimpl
def celeriac_config_sections() -> list[ConfigSection]:
    """Declare the ``[asyncio]`` section."""
    return [ConfigSection(SECTION, AsyncioSettings, "The asyncio pool (``-P asyncio``).")]


def section_settings(settings: Any) -> AsyncioSettings:
    """The ``[asyncio]`` section of ``settings`` (the defaults when there are
    no settings, or the section was not loaded)."""
    found = (getattr(settings, "sections", None) or {}).get(SECTION)
    if isinstance(found, AsyncioSettings):
        return found
    if isinstance(found, dict):
        return AsyncioSettings(**found)
    return AsyncioSettings()


pool = PoolPlugin(
    name="asyncio",
    pool_class="celeriac_asyncio.eventloop:AsyncioPool",
    description="Runs async def tasks as coroutines on one event loop (time limits and "
    "terminate by cancellation) and def tasks in threads beside it.",
)
"""Registration record named by the ``asyncio`` entry point."""
