"""A consumer in another process that takes messages and never acks them,
for the lease test of :class:`~celeriac.testing.contracts.TransportContract`.

:class:`LeaseHolder` starts ``python -m celeriac.testing.contracts._lease_holder
SPEC`` (SPEC is JSON with ``url``, ``transport`` as ``"module:Class"``,
``transport_options``, ``queue`` and ``timeout``). The child prints
``taken N`` once it holds N messages, then keeps its connection alive until
it is killed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import kombu

from celeriac.plugin import resolve


class LeaseHolder:
    """Runs the child; :meth:`taken` waits for its report, :meth:`kill` ends it
    with SIGKILL (so nothing of the child's shutdown code runs)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, json.dumps(spec)],
            stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        self._lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: self._lines.put(stdout.readline()), daemon=True).start()

    def taken(self, timeout: float) -> int | None:
        """How many messages the child took, or ``None`` if it did not say."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        words = line.split()
        return int(words[1]) if len(words) == 2 and words[0] == "taken" else None

    def kill(self, timeout: float) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    conn = kombu.Connection(spec["url"], transport=resolve(spec["transport"]),
                            transport_options=spec["transport_options"])
    name = spec["queue"]
    q = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)
    held: list[object] = []
    consumer = kombu.Consumer(conn.channel(), [q], no_ack=False, prefetch_count=1,
                              on_message=held.append)
    consumer.consume()
    deadline = time.monotonic() + float(spec["timeout"])
    while not held and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            pass
    print(f"taken {len(held)}", flush=True)
    # Keep draining: some transports renew leases from their event loop.
    while True:
        try:
            conn.drain_events(timeout=1.0)
        except TimeoutError:
            pass


if __name__ == "__main__":
    main(sys.argv)
