"""In-process transport and result backend for tests.

Everything stays in one process: ``broker_url="memory://"`` (or
``memory://name`` for a separate broker) and ``result_backend="memory://"``.
Call :func:`reset` between tests to start from empty brokers and stores.

The records are in :mod:`celeriac_memory.plugin`; the kombu transport in
:mod:`celeriac_memory.transport`; the backend in :mod:`celeriac_memory.backend`.
"""

from __future__ import annotations

__all__ = ["reset"]


def reset(vhost: str | None = None) -> None:
    """Empty the in-memory broker named ``vhost`` (``"other"`` for
    ``memory://other``, ``""`` for ``memory://``); with ``None``, empty every
    broker and every result store."""
    from . import transport

    transport.reset(vhost)
    if vhost is None:
        from . import backend

        backend.reset()
