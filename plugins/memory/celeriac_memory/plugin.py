"""Registration records of the in-memory transport and result backend.

Both keep their state in the process, for tests: a producer, a worker and the
test itself share one broker per ``memory://name`` URL and one result store
per backend URL.
"""

from __future__ import annotations

from typing import Any

from celeriac.plugin import BackendPlugin, TransportPlugin

__all__ = ["backend", "transport"]


def interrupt(connection: Any) -> None:
    """Wake a worker blocked in ``drain_events`` on ``connection``."""
    connection.transport.interrupt()


transport = TransportPlugin(
    name="memory",
    kombu_transport="celeriac_memory.transport:Transport",
    description="In-process broker for tests (per URL name; no polling; keeps unacked messages).",
    native_delay=True,
    priorities="higher-first",
    broadcast=True,
    leases=False,
    delivery_count=True,
    interrupt=interrupt,
)
"""Registration record named by the ``memory`` transport entry point."""

backend = BackendPlugin(
    name="memory",
    backend_class="celeriac_memory.backend:MemoryBackend",
    description="In-process result store for tests (one store per URL).",
)
"""Registration record named by the ``memory`` backend entry point."""
