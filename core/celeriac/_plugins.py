"""The plugin machinery: stevedore finds and loads drivers, pluggy calls hooks.

Kept deliberately small (see pluggy's *eggsample*): make a manager, add the
specs, load the ``celeriac.plugins`` entry points, register what the app was
given. Drivers (one transport, one pool, one backend, the serializers named in
configuration) are loaded by name only when used, so a broken or heavy
plugin that is not configured never slows or breaks a process.

Environment switches (datasette-style):

``CELERIAC_PLUGINS=a,b``
    load only these lifecycle plugins (``celeriac.plugins`` group); empty
    string loads none.
``CELERIAC_DISABLE_PLUGINS=a,b``
    load all lifecycle plugins except these.
``CELERIAC_TRACE_PLUGINS=1``
    log every entry point as it is loaded, with its distribution.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .exceptions import PluginError, PluginLoadError, PluginNotFound
from .plugin import GROUPS, PROJECT, BackendPlugin, PoolPlugin, TransportPlugin
from .serializer import Compressor, Serializer

logger = logging.getLogger("celeriac.plugins")

#: What a driver entry point must give, per role.
RECORD_TYPES: dict[str, type] = {
    "transport": TransportPlugin,
    "backend": BackendPlugin,
    "pool": PoolPlugin,
    "serializer": Serializer,
    "compressor": Compressor,
}


@attrs.frozen
class EntryPointInfo:
    """One entry point as ``celeriac plugins`` reports it (nothing imported)."""

    role: str
    name: str
    value: str
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.name!r} from {self.distribution} {self.version} ({self.value})"


def _entry_points(group: str) -> list[Any]:
    import importlib_metadata

    return list(importlib_metadata.entry_points(group=group))


def _dist_of(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None and getattr(ep, "group", None):
        # stevedore's cached entry points carry no distribution: find ours.
        for candidate in _entry_points(ep.group):
            if candidate.name == ep.name and candidate.value == ep.value:
                dist = candidate.dist
                break
    if dist is None:
        return "<unknown distribution>", "?"
    return dist.metadata["Name"] or dist.name, dist.version


def entry_point_infos(role: str | None = None) -> list[EntryPointInfo]:
    """Every installed entry point of one role (or all roles), without importing any."""
    roles = [role] if role else list(GROUPS)
    infos = []
    for r in roles:
        for ep in _entry_points(GROUPS[r]):
            dist, version = _dist_of(ep)
            infos.append(EntryPointInfo(r, ep.name, ep.value, dist, version))
    return sorted(infos, key=lambda i: (i.role, i.name, i.distribution))


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _load(ep: Any, role: str) -> Any:
    dist, version = _dist_of(ep)
    if os.environ.get("CELERIAC_TRACE_PLUGINS"):
        logger.warning("loading %s plugin %r = %s from %s %s", role, ep.name, ep.value, dist, version)
    try:
        return ep.load()
    except Exception as exc:
        raise PluginLoadError(
            f"The {role} plugin {ep.name!r} ({ep.value}) from the distribution "
            f"{dist} {version} failed to import: {type(exc).__name__}: {exc}. "
            f"Reinstall or upgrade {dist}, or uninstall it if it is not needed."
        ) from exc


@functools.cache
def load_driver(role: str, name: str) -> Any:
    """Load the ``role`` driver registered under ``name`` (cached per process).

    stevedore's DriverManager imports that one entry point and nothing else.
    Raises :class:`PluginNotFound` listing the installed choices, with a
    suggestion, or :class:`PluginLoadError` naming the distribution.
    """
    from stevedore import DriverManager
    from stevedore.exception import MultipleMatches, NoMatches

    if role not in RECORD_TYPES:
        raise PluginError(f"unknown plugin role {role!r}")
    group = GROUPS[role]
    failures: list[PluginLoadError] = []

    def on_failure(_manager: Any, ep: Any, exc: BaseException) -> None:
        dist, version = _dist_of(ep)
        failures.append(PluginLoadError(
            f"The {role} plugin {ep.name!r} ({ep.value}) from the distribution "
            f"{dist} {version} failed to import: {type(exc).__name__}: {exc}. "
            f"Reinstall or upgrade {dist}, or uninstall it if it is not needed."
        ))

    if os.environ.get("CELERIAC_TRACE_PLUGINS"):
        logger.warning("loading %s driver %r from group %s", role, name, group)
    try:
        manager = DriverManager(namespace=group, name=name, invoke_on_load=False,
                                on_load_failure_callback=on_failure)
    except MultipleMatches:
        owners = " and ".join(
            f"{d} {v}" for d, v in (_dist_of(ep) for ep in _entry_points(group) if ep.name == name)
        )
        raise PluginError(
            f"The {role} name {name!r} is provided by both {owners}; uninstall one of them."
        ) from None
    except NoMatches:
        if failures:
            raise failures[0] from None
        names = driver_names(role)
        installed = ", ".join(repr(n) for n in names) or "none"
        raise PluginNotFound(
            f"No {role} named {name!r} is installed (entry-point group {group}). "
            f"Installed: {installed}.{suggest(name, names)} "
            f"A plugin distribution may be missing: try `pip install celeriac[{name}]`."
        ) from None
    record = manager.driver
    expected = RECORD_TYPES[role]
    if not isinstance(record, expected):
        dist, version = _dist_of(manager.extensions[0].entry_point)
        raise PluginLoadError(
            f"The {role} plugin {name!r} from {dist} {version} points at "
            f"{type(record).__name__}, not a {expected.__module__}.{expected.__qualname__}."
        )
    return record


def driver_names(role: str) -> list[str]:
    return sorted({ep.name for ep in _entry_points(GROUPS[role])})


def _wanted_lifecycle_plugins(names: list[str]) -> list[str]:
    only = os.environ.get("CELERIAC_PLUGINS")
    if only is not None:
        keep = {n.strip() for n in only.split(",") if n.strip()}
        names = [n for n in names if n in keep]
    skip = {n.strip() for n in os.environ.get("CELERIAC_DISABLE_PLUGINS", "").split(",") if n.strip()}
    return [n for n in names if n not in skip]


@functools.lru_cache(maxsize=1)
def _lifecycle_plugins() -> tuple[tuple[str, Any], ...]:
    eps = {ep.name: ep for ep in _entry_points(GROUPS["plugin"])}
    return tuple((name, _load(eps[name], "lifecycle")) for name in _wanted_lifecycle_plugins(sorted(eps)))


class Hooks:
    """Typed facade over ``pm.hook``: kernel code calls ``hooks.call(name, ...)``
    and gets the propagate-or-log rule of :mod:`celeriac.hookspecs` applied."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    def implemented(self, name: str) -> bool:
        """Whether any plugin implements hook ``name`` (lets hot paths skip
        building the hook's arguments)."""
        return bool(getattr(self._pm.hook, name).get_hookimpls())

    def call(self, name: str, **kwargs: Any) -> list[Any]:
        caller = getattr(self._pm.hook, name)
        impls = caller.get_hookimpls()
        if not impls:  # the common case on hot paths: nothing to call
            return []
        if name in hookspecs.PROPAGATING:
            return caller(**kwargs)
        results = []
        for impl in reversed(impls):
            try:
                args = {k: kwargs[k] for k in impl.argnames}
                res = impl.function(**args)
            except Exception:
                logger.exception("plugin %r failed in hook %s; continuing", impl.plugin_name, name)
                continue
            if res is not None:
                results.append(res)
        return results


class Plugins:
    """One app's plugin manager: the installed lifecycle plugins plus any the
    app was given directly (``App(plugins=[...])``)."""

    def __init__(self, extra: Iterable[Any] = (), *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if entry_points:
            for name, obj in _lifecycle_plugins():
                self.register(obj, name=name)
        for obj in extra:
            self.register(obj)
        self.hooks = Hooks(self.pm)

    def register(self, obj: Any, name: str | None = None) -> None:
        """Register a hook implementation; a bad one is a :class:`PluginLoadError`."""
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(
                f"{exc} (hooks are listed in celeriac.hookspecs and docs/plugins.md)"
            ) from exc

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

