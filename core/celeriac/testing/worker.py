"""Run a real worker in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import App
    from ..worker import Worker


@contextlib.contextmanager
def start_worker(app: App, *, pool: str = "threads", concurrency: int = 2,
                 ready_timeout: float = 30.0, shutdown_timeout: float = 30.0,
                 **options: Any) -> Iterator[Worker]:
    """Start a worker for ``app`` in a background thread; stop it (warm) on exit.

    The worker is the same one ``celeriac worker`` runs, without signal
    handlers. Exceptions the worker thread dies with are re-raised on exit.
    """
    worker = app.Worker(pool=pool, concurrency=concurrency, install_signal_handlers=False, **options)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.start()
        except BaseException as exc:  # surfaced in the test, below
            failure.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=run, name=f"celeriac-test-worker-{worker.hostname}", daemon=True)
    thread.start()
    if not worker.ready.wait(ready_timeout):
        worker.stop(cold=True)
        raise RuntimeError(f"the worker did not start within {ready_timeout} s")
    if failure:
        raise failure[0]
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(shutdown_timeout)
        if thread.is_alive():
            raise RuntimeError("the worker did not stop within the shutdown timeout")
        if failure:
            raise failure[0]
