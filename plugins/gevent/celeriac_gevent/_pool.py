"""The gevent pool itself. Imported when the worker builds the pool, after the patch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from celeriac.greenpool import GreenPool
from gevent.event import Event

from . import is_patched

__all__ = ["GeventPool"]


class GeventPool(GreenPool):
    """Each job runs in a greenlet (see :class:`celeriac.greenpool.GreenPool`):
    the soft time limit is a :class:`gevent.Timeout`, the hard one
    ``Greenlet.kill``."""

    name = "gevent"
    limitation = (
        "time limits and revoke(terminate=True) take effect when the task next yields to gevent "
        "(socket I/O, sleep, a lock); a task that computes without yielding holds up every other "
        "task and cannot be interrupted"
    )

    def is_patched(self) -> bool:
        return is_patched()

    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        return gevent.spawn(fn, *args)

    def spawn_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        return gevent.spawn_later(seconds, fn, *args)

    def kill(self, green: gevent.Greenlet) -> None:
        green.kill(block=False)

    def start_timeout(self, seconds: float, exc: BaseException) -> Callable[[], None]:
        timeout = gevent.Timeout(seconds, exc)
        timeout.start()
        return timeout.close

    def make_event(self) -> Event:
        return Event()
