"""pytest fixtures for projects that use celeriac (loaded automatically).

* ``celeriac_config``: override to give settings to the fixtures' apps.
* ``celeriac_app``: an App on the in-memory transport and result store,
  isolated per test (needs the ``celeriac-memory`` distribution:
  ``pip install celeriac[testing]``).
* ``celeriac_worker``: a real worker running ``celeriac_app``'s tasks in a
  thread; stopped (warm) after the test.
* ``celeriac_eager_app``: an App with ``task_always_eager``: tasks run in the
  caller, no worker, no broker.

Mark a test with ``@pytest.mark.celeriac(pool="solo", concurrency=1)`` to
choose the worker's pool and concurrency.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "celeriac(pool, concurrency): options of the celeriac_worker fixture")


@pytest.fixture
def celeriac_config() -> dict[str, Any]:
    """Settings for ``celeriac_app`` (override in your conftest)."""
    return {}


@pytest.fixture
def celeriac_app(celeriac_config: dict[str, Any]) -> Iterator[Any]:
    from celeriac import App

    vhost = uuid.uuid4().hex
    settings = {"broker_url": f"memory://{vhost}", "result_backend": f"memory://{vhost}",
                **celeriac_config}
    app = App("test", **settings)
    yield app
    app.close()


@pytest.fixture
def celeriac_eager_app(celeriac_config: dict[str, Any]) -> Iterator[Any]:
    from celeriac import App

    app = App("test", broker="memory://eager", backend="memory://eager",
              task_always_eager=True, **celeriac_config)
    yield app
    app.close()


@pytest.fixture
def celeriac_worker(request: pytest.FixtureRequest, celeriac_app: Any) -> Iterator[Any]:
    from .worker import start_worker

    marker = request.node.get_closest_marker("celeriac")
    options = dict(marker.kwargs) if marker else {}
    with start_worker(celeriac_app, **options) as worker:
        yield worker
