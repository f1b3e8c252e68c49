"""Fixtures shared by the kernel tests.

Every app built here uses its own in-memory broker and result store
(``memory://<random name>``), so tests never see each other's messages and
can run in parallel (pytest-xdist).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def memory_url() -> str:
    """A ``memory://`` URL naming a broker and result store of this test alone."""
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def make_app(memory_url: str) -> Iterator[Callable[..., Any]]:
    """``make_app(main="t", **settings)``: an App on this test's in-memory
    broker and result store (apps made in one test share them)."""
    from celeriac import App

    made: list[Any] = []

    def make(main: str = "t", **settings: Any) -> Any:
        settings.setdefault("broker_url", memory_url)
        settings.setdefault("result_backend", memory_url)
        app = App(main, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(predicate, what, timeout=30)``: poll until true, or fail
    saying what was awaited. A bound on waiting, never a timing assertion."""

    def wait(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    return wait


@pytest.fixture
def fresh_plugin_caches() -> Iterator[None]:
    """Forget loaded drivers and lifecycle plugins before and after the test,
    for tests that change what is installed or the plugin environment switches."""
    from celeriac import _plugins

    _plugins.load_driver.cache_clear()
    _plugins._lifecycle_plugins.cache_clear()
    yield
    _plugins.load_driver.cache_clear()
    _plugins._lifecycle_plugins.cache_clear()
