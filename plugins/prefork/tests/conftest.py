"""Fixtures of the prefork pool's tests: process checks (``procs``) and a Redis database.

(Test modules here are not a package, so helpers reach them as fixtures.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

REDIS_URL = os.environ.get("CELERIAC_TEST_PREFORK_REDIS_URL", "redis://127.0.0.1:6379/7")
"""Database 7 of the local server is this plugin's; tests use their own queue names in it."""


class Procs:
    """Process checks, as the ``procs`` fixture."""

    @staticmethod
    def is_gone(pid: int) -> bool:
        """The process has exited (a zombie counts as exited: it is its parent's to reap)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        return state in (b"Z", b"X")

    @staticmethod
    def is_reaped(pid: int) -> bool:
        """No such process, not even a zombie (its parent waited for it)."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    @staticmethod
    def children_of(pid: int) -> set[int]:
        """Live children of ``pid`` (from /proc)."""
        found = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
                found.add(int(name))
        return found

    @staticmethod
    def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll until ``predicate()`` is true (and return it), or fail saying what was awaited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def procs() -> type[Procs]:
    return Procs


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"no Redis server at {REDIS_URL} ({exc}); start one or set " \
                  f"CELERIAC_TEST_PREFORK_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL
