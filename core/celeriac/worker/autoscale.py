"""Autoscale: more pool processes under load, fewer when idle (``--autoscale max,min``).

Celery's rule, kept as it is so that a ported deployment behaves the same:
the demand is the number of tasks the worker holds to run (running, or
received and waiting for a free slot). When the demand is above the pool's
size, the pool grows at once, up to ``max``. When it is below, the pool
shrinks, down to ``min`` (and never below one), but only once ``keepalive``
seconds have passed since the pool last grew or a task last arrived, so a
bursty queue does not make processes come and go.

The autoscaler only decides; the worker applies its decisions through the
pool contract (:attr:`celeriac.pool.Pool.resizable`, ``grow``, ``shrink``),
so every resizable pool can be autoscaled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFAULT_KEEPALIVE", "Autoscaler", "check_bounds", "parse_autoscale"]

DEFAULT_KEEPALIVE = 30.0
"""Celery's ``AUTOSCALE_KEEPALIVE``: seconds of calm before the pool shrinks."""


def check_bounds(max_concurrency: Any, min_concurrency: Any) -> tuple[int, int]:
    """``(max, min)`` as integers; ``ValueError`` saying what is wrong otherwise.

    ``min`` may be 0 (Celery's default when only ``max`` is given); the pool
    still keeps one process.
    """
    try:
        high, low = int(max_concurrency), int(min_concurrency)
    except (TypeError, ValueError):
        raise ValueError(f"autoscale bounds must be whole numbers, got max={max_concurrency!r} "
                         f"and min={min_concurrency!r}") from None
    if high < 1:
        raise ValueError(f"the autoscale maximum must be at least 1, got {high}")
    if not 0 <= low <= high:
        raise ValueError(f"the autoscale minimum must be between 0 and the maximum ({high}), "
                         f"got {low}")
    return high, low


def parse_autoscale(value: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"8,2"``, ``"8"`` (min 0) or ``(8, 2)`` as ``(max, min)``; ``None`` or
    ``""`` as ``None`` (no autoscale). Raises ``ValueError`` for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        high, sep, low = value.partition(",")
        try:
            numbers = int(high), int(low) if sep else 0
        except ValueError:
            raise ValueError(f"autoscale must be 'max,min' (e.g. '8,2') or 'max', "
                             f"got {value!r}") from None
        return check_bounds(*numbers)
    items = list(value)
    if len(items) != 2:
        raise ValueError(f"autoscale must be (max, min), got {value!r}")
    return check_bounds(items[0], items[1])


class Autoscaler:
    """Decides how the pool's size follows the demand (see the module docstring).

    Used by the worker's loop thread only: it calls :meth:`task_received`
    for each task message and :meth:`decide` at every turn, and applies what
    :meth:`decide` returns.
    """

    def __init__(self, max_concurrency: int, min_concurrency: int, *,
                 keepalive: float = DEFAULT_KEEPALIVE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrency, self.min_concurrency = check_bounds(max_concurrency, min_concurrency)
        if keepalive <= 0:
            raise ValueError(f"the autoscale keepalive must be more than 0 seconds, got {keepalive}")
        self.keepalive = keepalive
        self._clock = clock
        self._last_active = clock()

    def task_received(self) -> None:
        """A task arrived: the pool keeps its size for another ``keepalive``."""
        self._last_active = self._clock()

    def decide(self, demand: int, processes: int) -> int:
        """How many processes to add (> 0) or take away (< 0) now, given the
        ``demand`` (tasks running or waiting for a slot) and the pool's size."""
        wanted = min(demand, self.max_concurrency)
        if wanted > processes:
            self._last_active = self._clock()
            return wanted - processes
        floor = max(demand, self.min_concurrency, 1)
        if floor < processes and self._clock() - self._last_active > self.keepalive:
            return floor - processes
        return 0

    def update(self, max_concurrency: int, min_concurrency: int) -> None:
        """New bounds (checked as :func:`check_bounds` does)."""
        self.max_concurrency, self.min_concurrency = check_bounds(max_concurrency, min_concurrency)

    def info(self, demand: int, processes: int) -> dict[str, int]:
        """What ``inspect stats`` shows under ``autoscaler`` (Celery's keys)."""
        return {"max": self.max_concurrency, "min": self.min_concurrency,
                "current": processes, "qty": demand}
