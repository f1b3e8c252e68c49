"""The worker: consumes task messages through kombu and runs them in a pool."""

from __future__ import annotations

from .worker import Worker

__all__ = ["Worker"]
