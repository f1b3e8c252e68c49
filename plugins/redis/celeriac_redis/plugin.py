"""Registration records of the Redis transport and result backend, and the
``[redis]`` configuration section (light: imports neither redis nor kombu)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from celeriac.plugin import BackendPlugin, BrokerTarget, ConfigSection, TransportPlugin, hookimpl

if TYPE_CHECKING:
    from celeriac.config import Settings

__all__ = ["RedisSettings", "backend", "backend_sentinel", "backend_tls", "celeriac_config_sections",
           "section_settings", "transport", "transport_sentinel", "transport_tls"]

SECTION = "redis"


def _doc(default: Any, doc: str) -> Any:
    return attrs.field(default=default, metadata={"doc": doc})


@attrs.define(kw_only=True)
class RedisSettings:
    """The ``[redis]`` section: how the Redis transport takes and holds messages.

    Each field is a transport option; the user's ``broker_transport_options``
    override the values given here.
    """

    visibility_timeout: float = _doc(
        60.0, "Seconds a delivered message stays leased to its consumer. The lease is "
        "renewed every quarter of this while the consumer lives, so it bounds how long a "
        "dead worker's messages take to come back, not how long a task may run.")
    fetch_batch: int = _doc(
        100, "Most messages a consumer takes in one round trip (also capped by its "
        "prefetch headroom).")
    delay_at_publish: bool = _doc(
        False, "Put countdown/ETA messages straight into the queue's delayed set when "
        "publishing. Saves a round trip per delayed task, but Celery workers never look "
        "there: only for fleets whose workers are all celeriac. When false, consumers "
        "park early messages there themselves.")

    def transport_options(self) -> dict[str, Any]:
        return {"visibility_timeout": self.visibility_timeout,
                "fetch_batch": self.fetch_batch,
                "delay_at_publish": self.delay_at_publish}


@hookimpl
def celeriac_config_sections() -> list[ConfigSection]:
    """Declare the ``[redis]`` section."""
    return [ConfigSection(SECTION, RedisSettings, "The Redis transport.")]


def section_settings(settings: Settings | None) -> RedisSettings:
    """The ``[redis]`` section of ``settings`` (defaults when not loaded)."""
    if settings is not None:
        found = (getattr(settings, "sections", None) or {}).get(SECTION)
        if isinstance(found, RedisSettings):
            return found
        if isinstance(found, dict):
            return RedisSettings(**found)
    return RedisSettings()


def prepare_broker(url: str, settings: Settings, app_name: str) -> BrokerTarget:
    """The URL as given, with the ``[redis]`` section as transport options."""
    from .backend import _redacted

    return BrokerTarget(url=url, transport_options=section_settings(settings).transport_options(),
                        display=_redacted(url))


def _interrupt(connection: Any) -> None:
    connection.transport.interrupt()


def _publish_many(channel: Any, items: list[tuple[dict[str, Any], str, str]]) -> None:
    channel.publish_many(items)


_CAPABILITIES: dict[str, Any] = {
    "native_delay": True,
    "priorities": "lower-first",
    "broadcast": True,
    "leases": True,
    "delivery_count": True,
    "interrupt": _interrupt,
    "publish_many": _publish_many,
    "prepare": prepare_broker,
}

transport = TransportPlugin(
    name="redis",
    kombu_transport="celeriac_redis.transport:Transport",
    description="Redis lists as kombu lays them out (Celery-compatible), with leases renewed "
    "while tasks run, countdowns kept on the broker, and batched fetch and acks.",
    **_CAPABILITIES,
)
"""The ``celeriac.transports: redis`` entry point."""

transport_tls = TransportPlugin(
    name="rediss",
    kombu_transport="celeriac_redis.transport:Transport",
    description="The Redis transport over TLS (rediss://).",
    **_CAPABILITIES,
)
"""The ``celeriac.transports: rediss`` entry point."""

transport_sentinel = TransportPlugin(
    name="sentinel",
    kombu_transport="celeriac_redis.transport:SentinelTransport",
    description="The Redis transport through Redis Sentinel (sentinel://; set master_name "
    "in broker_transport_options).",
    **_CAPABILITIES,
)
"""The ``celeriac.transports: sentinel`` entry point."""

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

backend_sentinel = BackendPlugin(
    name="sentinel",
    backend_class="celeriac_redis.backend:RedisBackend",
    description="The Redis result backend through Redis Sentinel (sentinel://; set master_name "
                "in result_backend_transport_options).",
)
"""The ``celeriac.backends: sentinel`` entry point."""
