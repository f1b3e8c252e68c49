"""What a plugin author imports: the hook marker, the entry-point groups and
the registration records a driver's entry point returns.

A plugin is a distribution that declares entry points. Drivers (one chosen by
configuration) go in the role's group and point at a registration record; a
plugin with lifecycle hooks goes in ``celeriac.plugins`` and points at a module
or object whose functions are marked with :data:`hookimpl`::

    # pyproject.toml
    [project.entry-points."celeriac.plugins"]
    audit = "celeriac_audit"

    # celeriac_audit/__init__.py
    from celeriac.plugin import hookimpl

    @hookimpl
    def celeriac_task_success(task, request, retval):
        print("done", request.id)

The hooks and what each promises are in :mod:`celeriac.hookspecs`. The base
classes a driver implements are :class:`celeriac.backend.ResultBackend`,
:class:`celeriac.pool.Pool` and :class:`celeriac.serializer.Serializer`; a
transport is a kombu transport described by :class:`TransportPlugin`.
First-party plugins use exactly these hooks and records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

if TYPE_CHECKING:
    from .config import Settings

PROJECT = "celeriac"

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a function as the implementation of a hook in :mod:`celeriac.hookspecs`."""

hookspec = pluggy.HookspecMarker(PROJECT)

#: Entry-point group per role. The entry point's *name* is what users type
#: in configuration (``worker_pool = "threads"``, ``broker_url = "sqlite://"``).
GROUPS: Mapping[str, str] = {
    "transport": "celeriac.transports",
    "backend": "celeriac.backends",
    "pool": "celeriac.pools",
    "serializer": "celeriac.serializers",
    "compressor": "celeriac.compressors",
    "plugin": "celeriac.plugins",
}


def resolve(ref: str | Any) -> Any:
    """Import ``"package.module:attr"`` (or return ``ref`` if not a string).

    Records name heavy classes by path so that loading an entry point stays
    cheap; the class is imported only when the driver is used.
    """
    if not isinstance(ref, str):
        return ref
    import importlib

    from .exceptions import PluginLoadError

    module_name, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginLoadError(
            f"cannot load {ref!r} named by a plugin record: {type(exc).__name__}: {exc}. "
            f"Reinstall the plugin distribution that provides it.") from exc
    return obj


@attrs.frozen
class BrokerTarget:
    """What a transport plugin makes of a broker URL (see :attr:`TransportPlugin.prepare`)."""

    url: str
    """The URL handed to :class:`kombu.Connection`."""
    transport_options: Mapping[str, Any] = attrs.field(factory=dict)
    """Options merged under the user's ``broker_transport_options``."""
    display: str | None = None
    """How the banner and error messages show the broker (e.g. the SQLite file path)."""


@attrs.frozen
class TransportPlugin:
    """Registration record of a transport, returned by a ``celeriac.transports`` entry point.

    The kernel does all broker I/O through kombu: ``kombu_transport`` is a kombu
    transport class (or its ``"module:Class"`` path) that kombu's
    :class:`~kombu.Connection` is given. The capability flags tell the kernel
    what the broker does itself, so that the worker never duplicates it (nor
    pretends it is done when it is not).
    """

    name: str
    kombu_transport: str | type
    description: str = ""
    native_delay: bool = False
    """Messages whose ``eta`` header is in the future stay invisible until then.

    When true the worker never holds countdown/ETA messages in memory; an
    early arrival (clock skew) is held briefly in the bounded holding area.
    """
    priorities: str | None = None
    """``"higher-first"`` (AMQP, SQLite), ``"lower-first"`` (kombu's Redis) or ``None``."""
    broadcast: bool = False
    """Fanout exchanges reach every bound queue (needed by remote control)."""
    leases: bool = False
    """Unacknowledged messages come back by themselves when their consumer
    dies, and stay leased for as long as the consumer lives."""
    delivery_count: bool = False
    """The transport puts ``delivery_count`` (1 on the first delivery) in each
    message's ``delivery_info``; the worker dead-letters a message delivered
    more than ``worker_max_deliveries`` times."""
    interrupt: Callable[[Any], None] | None = None
    """``interrupt(connection)``: make a ``drain_events`` blocked on this kombu
    connection in another thread return now. Must be thread-safe, and sticky:
    a call made while no ``drain_events`` is blocked makes the next one return
    at once, so that no wake-up is lost between two calls. The worker
    calls it when a task finishes in a pool thread and when it is asked to
    stop; without it, the worker polls with short timeouts while tasks run."""
    publish_many: Callable[[Any, list[tuple[dict[str, Any], str, str]]], None] | None = None
    """``publish_many(channel, items)``: send many messages in one round trip
    to the broker (one transaction, one pipeline), all or none where the broker
    allows. ``items`` are ``(message, exchange, routing_key)`` with messages
    made by kombu's ``channel.prepare_message``; ``channel`` is a channel of a
    connection made by the kernel. Used to flush ``app.bulk_publish()``
    blocks; without it those messages are published one by one."""
    queue_arguments: Callable[[str, Settings], Mapping[str, Any]] | None = None
    """``queue_arguments(queue_name, settings)``: broker arguments to declare
    the queue with (AMQP: ``x-max-priority`` from ``task_queue_max_priority``,
    ``x-queue-type`` from ``task_default_queue_type``). ``None``: none."""
    prepare: Callable[[str, Settings, str], BrokerTarget] | None = None
    """``prepare(url, settings, app_name)``: fill in defaults (a file path, a
    port) and return the :class:`BrokerTarget`. ``None`` means use the URL as it is."""

    def target(self, url: str, settings: Settings, app_name: str) -> BrokerTarget:
        if self.prepare is None:
            return BrokerTarget(url=url)
        return self.prepare(url, settings, app_name)


@attrs.frozen
class BackendPlugin:
    """Registration record of a result backend (``celeriac.backends`` entry point).

    ``backend_class`` is a :class:`celeriac.backend.ResultBackend` subclass, or
    its ``"module:Class"`` path. The entry point's name is the URL scheme.
    """

    name: str
    backend_class: str | type
    description: str = ""
    default_url: Callable[[str], str] | None = None
    """When ``result_backend`` is unset and the broker URL's scheme is this
    backend's name, the kernel uses ``default_url(broker_url)`` as the backend
    URL (SQLite: a results file beside the broker file). ``None``: the broker
    URL itself."""


@attrs.frozen
class PoolPlugin:
    """Registration record of a pool (``celeriac.pools`` entry point)."""

    name: str
    pool_class: str | type
    description: str = ""
    patch: str | Callable[[], None] | None = None
    """A function (or its ``"module:function"`` path) that prepares the process for this pool
    (monkey-patching the standard library, for green pools), called with no
    arguments by the ``celeriac`` command before the app, kombu or any broker
    library is imported (see :mod:`celeriac.patching`). It must be idempotent.
    The module holding this record must then import nothing heavy (neither the
    pool's library nor kombu), since it is read before the patch runs. A pool
    that cannot work unpatched checks it when constructed and raises
    :class:`~celeriac.exceptions.ConfigurationError` saying how to choose the
    pool so that the patch runs."""


@attrs.frozen
class ConfigSection:
    """A plugin's own configuration section, returned by
    :func:`celeriac.hookspecs.celeriac_config_sections`.

    ``settings_class`` is an attrs class whose fields all have defaults and
    docstring-like ``metadata={"doc": ...}``. Users set it as the TOML table
    ``[name]``, the keyword ``App(name={...})``, or the environment variable
    ``CELERIAC_<NAME>__<FIELD>``; code reads it as ``app.conf.section(name)``.
    """

    name: str
    settings_class: type
    description: str = ""
