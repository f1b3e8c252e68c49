"""The demo: a worker on the embedded SQLite broker, four kinds of task, a clean stop.

Run it with ``python dev.py demo`` from the repository root (or
``uv run python examples/demo/run.py``). Everything it writes goes to a
temporary directory, removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="celeriac-demo-") as data_dir:
        # Worker and client must use the same SQLite files: point both at one directory.
        os.environ["CELERIAC_SQLITE__DIRECTORY"] = data_dir
        sys.path.insert(0, str(HERE))
        from tasks import add, divide, flaky

        print(f"broker and results under {data_dir}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-P", "threads", "-c", "2",
             "-l", "WARNING", "-n", "demo@%h"],
            cwd=HERE, env=os.environ.copy())
        try:
            print("add(2, 3)                      ->", add.delay(2, 3).get(timeout=30))

            sent = time.monotonic()
            later = add.apply_async((20, 22), countdown=2)
            print("add(20, 22) with countdown=2   ->", later.get(timeout=30),
                  f"(after {time.monotonic() - sent:.1f} s; it waited in the broker, not the worker)")

            retried = flaky.delay(2)
            print("flaky(2), retried twice        ->", retried.get(timeout=30))

            failed = divide.delay(1, 0)
            error = failed.get(timeout=30, propagate=False)
            print("divide(1, 0)                   ->", failed.state, repr(error))
            try:
                failed.get(timeout=30)
            except ZeroDivisionError as exc:
                print("                                   get() re-raises:", type(exc).__name__, exc)
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        print(f"worker stopped (warm shutdown), exit code {code}")
        return code


if __name__ == "__main__":
    sys.exit(main())
