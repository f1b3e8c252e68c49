"""Registration records of the Redis result backend (light: imports no redis)."""

from __future__ import annotations

from celeriac.plugin import BackendPlugin

__all__ = ["backend", "backend_tls"]

backend = BackendPlugin(
    name="redis",
    backend_class="celeriac_redis.backend:RedisBackend",
    description="Results in Redis with Celery's keys and documents; waits through pub/sub.",
)
"""The ``celeriac.backends: redis`` entry point."""

backend_tls = BackendPlugin(
    name="rediss",
    backend_class="celeriac_redis.backend:RedisBackend",
    description="The Redis result backend over TLS (rediss://).",
)
"""The ``celeriac.backends: rediss`` entry point."""
