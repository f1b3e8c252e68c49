"""The eventlet pool itself. Imported when the worker builds the pool, after the patch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import eventlet
from celeriac.greenpool import GreenPool
from eventlet.green import threading as green_threading
from eventlet.greenthread import GreenThread

from . import is_patched

__all__ = ["EventletPool"]


class EventletPool(GreenPool):
    """Each job runs in an eventlet green thread (see
    :class:`celeriac.greenpool.GreenPool`): the soft time limit is an
    :class:`eventlet.Timeout`, the hard one ``GreenThread.kill``."""

    name = "eventlet"
    limitation = (
        "time limits and revoke(terminate=True) take effect when the task next yields to eventlet "
        "(socket I/O, sleep, a lock); a task that computes without yielding holds up every other "
        "task and cannot be interrupted"
    )

    def is_patched(self) -> bool:
        return is_patched()

    def spawn(self, fn: Callable[..., Any], *args: Any) -> GreenThread:
        return eventlet.spawn(fn, *args)

    def spawn_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> GreenThread:
        return eventlet.spawn_after(seconds, fn, *args)

    def kill(self, green: GreenThread) -> None:
        green.kill()

    def start_timeout(self, seconds: float, exc: BaseException) -> Callable[[], None]:
        return eventlet.Timeout(seconds, exc).cancel  # started, in this green thread

    def make_event(self) -> Any:
        return green_threading.Event()
