"""Registration records of the AMQP (RabbitMQ) transport and the ``rpc://``
result backend, and the ``[amqp]`` configuration section.

This module is what the entry points load, so it stays cheap to import: the
kombu transport (:mod:`celeriac_amqp.transport`) and the result backend
(:mod:`celeriac_amqp.backend`) are named by path and imported only when used.

Queue arguments (``TransportPlugin.queue_arguments``), decided here:

* ``task_default_queue_type = "quorum"`` declares every queue celeriac
  declares with ``x-queue-type: quorum`` (the dead-letter queue too: it should
  be as safe as the queues it takes messages from).
* ``task_queue_max_priority = N`` declares task queues with
  ``x-max-priority: N`` (1..255). It is an error together with quorum queues:
  RabbitMQ 3 refuses ``x-max-priority`` on them, and RabbitMQ 4 gives them two
  fixed priority levels without the argument, so no value would mean what it
  says.
* The dead-letter queue (``worker_dead_letter_queue``) never gets
  ``x-max-priority``: order does not matter there, and leaving it out keeps the
  queue (and the messages it holds) declarable when the priority setting
  changes later. RabbitMQ refuses to re-declare a queue with other arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from celeriac.plugin import BackendPlugin, BrokerTarget, ConfigSection, TransportPlugin, hookimpl

if TYPE_CHECKING:
    from celeriac.config import Settings

__all__ = [
    "AMQPSettings",
    "celeriac_config_sections",
    "interrupt",
    "prepare_broker",
    "publish_many",
    "queue_arguments",
    "redacted",
    "rpc_backend",
    "section_settings",
    "transport",
    "transport_pyamqp",
    "transport_tls",
]

SECTION = "amqp"
QUEUE_TYPES = ("classic", "quorum")
#: URL schemes of brokers the rpc backend can reply through.
AMQP_SCHEMES = frozenset({"amqp", "pyamqp", "amqps"})


def _doc(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    validator = attrs.validators.in_(choices) if choices else None
    return attrs.field(default=default, validator=validator, metadata={"doc": doc})


@attrs.define(kw_only=True)
class AMQPSettings:
    """The ``[amqp]`` section: how the RabbitMQ transport publishes and delays.

    Each field is handed to the transport as a kombu transport option of the
    same name; the user's ``broker_transport_options`` override them.
    """

    confirm_publish: bool = _doc(
        True, "Publisher confirms: each publish waits until RabbitMQ has taken the "
        "message (written to disk for persistent messages on durable queues), and a "
        "refused message raises instead of being lost silently. False publishes without "
        "waiting: faster, but a broker failure can lose messages the caller believes sent. "
        "Also used for ``rpc://`` result messages.")
    delayed_queue_type: str = _doc(
        "quorum", "Queue type (``quorum`` or ``classic``) of the 28 ``celery_delayed_*`` "
        "queues that hold countdown/ETA messages on the broker. ``quorum`` is Celery's "
        "default (``broker_native_delayed_delivery_queue_type``), so both can share them. "
        "Queues that already exist with another type are used as they are.", QUEUE_TYPES)


@hookimpl
def celeriac_config_sections() -> list[ConfigSection]:
    """Declare the ``[amqp]`` section."""
    return [ConfigSection(SECTION, AMQPSettings,
                          "The RabbitMQ transport (amqp://, amqps://) and the rpc:// backend.")]


def section_settings(settings: Settings | None) -> AMQPSettings:
    """The ``[amqp]`` section of ``settings``, or its defaults when the
    section is not loaded (a bare ``Settings()``, as the contract suites use)."""
    if settings is not None:
        found = (getattr(settings, "sections", None) or {}).get(SECTION)
        if isinstance(found, AMQPSettings):
            return found
        if isinstance(found, dict):
            return AMQPSettings(**found)
    return AMQPSettings()


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for banners and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def prepare_broker(url: str, settings: Settings, app_name: str) -> BrokerTarget:
    """The URL as given, with the ``[amqp]`` section as transport options."""
    section = section_settings(settings)
    return BrokerTarget(url=url, transport_options=attrs.asdict(section), display=redacted(url))


def queue_arguments(name: str, settings: Settings) -> dict[str, Any]:
    """Broker arguments of queue ``name`` (see the module docstring for the rules).

    Raises :class:`celeriac.exceptions.ConfigurationError` for a queue type
    RabbitMQ does not have, a priority outside 1..255, or priorities asked of
    quorum queues.
    """
    from celeriac.exceptions import ConfigurationError

    queue_type = settings.task_default_queue_type
    max_priority = settings.task_queue_max_priority
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"task_default_queue_type is {queue_type!r}; the amqp transport declares "
            f"{' or '.join(map(repr, QUEUE_TYPES))} queues. (Streams are not task queues.)")
    if queue_type == "quorum":
        if max_priority is not None:
            raise ConfigurationError(
                f"task_queue_max_priority = {max_priority} cannot be used with "
                "task_default_queue_type = 'quorum': RabbitMQ quorum queues take no "
                "x-max-priority (RabbitMQ 4 gives them two fixed priority levels). Unset "
                "task_queue_max_priority, or use classic queues for priorities.")
        return {"x-queue-type": "quorum"}
    if max_priority is None or name == settings.worker_dead_letter_queue:
        return {}
    if isinstance(max_priority, bool) or not 1 <= max_priority <= 255:
        raise ConfigurationError(
            f"task_queue_max_priority is {max_priority!r}; RabbitMQ takes 1..255 "
            "(10 or less is recommended: each level costs memory and CPU).")
    return {"x-max-priority": max_priority}


def interrupt(connection: Any) -> None:
    """Make a ``drain_events`` blocked on ``connection`` return (thread-safe, sticky)."""
    connection.transport.interrupt()


def publish_many(channel: Any, items: list[tuple[Any, str, str]]) -> None:
    """Publish ``items`` on ``channel`` and, with confirms on, wait once for all."""
    channel.publish_batch(items)


_DESCRIPTION = ("RabbitMQ through py-amqp: durable queues, persistent messages, publisher "
                "confirms, priorities (x-max-priority), quorum queues, countdown/ETA held "
                "on the broker (Celery's native delayed delivery).")


def _record(name: str, kombu_transport: str, description: str) -> TransportPlugin:
    return TransportPlugin(
        name=name,
        kombu_transport=kombu_transport,
        description=description,
        native_delay=True,
        priorities="higher-first",
        broadcast=True,
        # Unacked messages come back when the consumer's connection closes
        # (a killed process's socket is closed by the OS) and stay with a
        # living consumer, up to RabbitMQ's consumer_timeout (30 min by default).
        leases=True,
        # Only quorum queues count deliveries (x-delivery-count); the channel
        # then reports delivery_count and the worker enforces
        # worker_max_deliveries. Classic queues cannot, so the record says no.
        delivery_count=False,
        interrupt=interrupt,
        publish_many=publish_many,
        queue_arguments=queue_arguments,
        prepare=prepare_broker,
    )


transport = _record("amqp", "celeriac_amqp.transport:Transport", _DESCRIPTION)
"""The ``celeriac.transports: amqp`` entry point."""

transport_pyamqp = _record("pyamqp", "celeriac_amqp.transport:Transport",
                           "The amqp transport under Celery's other name for it (pyamqp://).")
"""The ``celeriac.transports: pyamqp`` entry point."""

transport_tls = _record("amqps", "celeriac_amqp.transport:SSLTransport",
                        "The amqp transport over TLS (amqps://, port 5671 by default).")
"""The ``celeriac.transports: amqps`` entry point."""

rpc_backend = BackendPlugin(
    name="rpc",
    backend_class="celeriac_amqp.backend:RPCBackend",
    description="Results sent back to the caller as AMQP messages on its reply queue "
    "(Celery's rpc://): only the client that sent a task can read its result.",
    default_url=None,
)
"""The ``celeriac.backends: rpc`` entry point."""
