"""Rate limits: ``rate_limit="10/s"`` per task type per worker, as in Celery.

Each task type with a limit gets a token bucket holding one token (so calls
are spaced evenly, as Celery's are), refilled at the limit's rate. Messages
of a throttled type wait in the worker, in order, counted against the
prefetch window, and go back to the broker on shutdown like any other
reserved message.
"""

from __future__ import annotations

import time

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: str | float | int | None) -> float | None:
    """``"10/s"``, ``"100/m"``, ``"1000/h"`` or a number (per second) -> calls
    per second; ``None``, ``0`` or ``""`` -> no limit. Raises ``ValueError``."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        raise ValueError(f"rate limit must be like '10/s', '100/m' or '1000/h', got {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        text = str(value).strip()
        count, sep, unit = text.partition("/")
        try:
            number = float(count)
        except ValueError:
            number = -1.0
        if number < 0 or (sep and unit not in _UNITS):
            raise ValueError(f"rate limit must be like '10/s', '100/m' or '1000/h', got {value!r}")
        rate = number / _UNITS[unit] if sep else number
    if rate < 0:
        raise ValueError(f"rate limit cannot be negative, got {value!r}")
    return rate or None


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """Use a token if one is there."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is there."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
