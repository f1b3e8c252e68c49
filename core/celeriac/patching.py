"""Monkey-patching the process for a pool, before anything heavy is imported.

Green pools (gevent, eventlet) only work when the standard library was
patched before the app module, kombu, the broker clients or anything that
makes sockets and threads was imported. A pool plugin that needs this names a
function in its record (:attr:`celeriac.plugin.PoolPlugin.patch`); the
``celeriac`` command calls it first thing, when the command line asks for such
a pool:

* :func:`pool_of_command_line` finds the pool ``celeriac worker`` will use,
  as far as can be known without importing the app: ``-P``/``--pool``, else
  ``CELERIAC_WORKER_POOL``, else ``worker_pool`` in the configuration file
  (``--config``, ``$CELERIAC_CONFIG``, or the one found in the working
  directory). A pool chosen only in ``App(...)`` or ``app.conf`` is seen too
  late; green pools then refuse to start, saying so.
* :func:`patch_pool` reads that one entry point of ``celeriac.pools`` with
  importlib-metadata (nothing else is loaded) and calls its ``patch``.

A program that starts a worker itself calls ``patch_pool("gevent")`` before
importing its app. This module imports only the standard library, attrs and
celeriac's light modules; keep it that way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["patch_for_command_line", "patch_pool", "patched_pools", "pool_of_command_line"]

POOL_GROUP = "celeriac.pools"

#: Options of the ``celeriac`` group that take a value (before the command name).
_GROUP_VALUE_OPTIONS = frozenset({"-A", "--app", "--config"})

_patched: list[str] = []


def patched_pools() -> list[str]:
    """The pools whose ``patch`` this process has run, in order."""
    return list(_patched)


def pool_of_command_line(args: Sequence[str], environ: Mapping[str, str] | None = None,
                         cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The pool ``celeriac <args>`` will run, or None (not ``worker``, or not known yet).

    ``args`` are the arguments after the program name. Reads ``-P X``,
    ``-PX``, ``--pool X``, ``--pool=X`` (the last one wins, as with click),
    then ``CELERIAC_WORKER_POOL``, then ``worker_pool`` in the configuration
    file. A configuration file that cannot be read gives None here: loading
    the app reports the problem properly.
    """
    environ = os.environ if environ is None else environ
    command, rest, config = _split_command(args)
    if command != "worker":
        return None
    pool = _pool_option(rest)
    if pool is not None:
        return pool
    if environ.get("CELERIAC_WORKER_POOL"):
        return environ["CELERIAC_WORKER_POOL"]
    return _pool_of_config_file(config, environ, cwd)


def _split_command(args: Sequence[str]) -> tuple[str | None, list[str], str | None]:
    """``(command name, the arguments after it, --config value)``."""
    config = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in _GROUP_VALUE_OPTIONS:
            if arg == "--config" and i + 1 < len(args):
                config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.partition("=")[2]
        if not arg.startswith("-"):
            rest = list(args[i + 1:])
            return arg, rest, _config_option(rest) or config
        i += 1
    return None, [], config


def _config_option(args: Sequence[str]) -> str | None:
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--config="):
            found = arg.partition("=")[2]
    return found


def _pool_option(args: Sequence[str]) -> str | None:
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-P", "--pool"):
            if i + 1 < len(args):
                found = args[i + 1]
        elif arg.startswith("--pool="):
            found = arg.partition("=")[2]
        elif arg.startswith("-P"):
            found = arg[2:]
    return found


def _pool_of_config_file(config: str | None, environ: Mapping[str, str],
                         cwd: str | os.PathLike[str] | None) -> str | None:
    from pathlib import Path

    from .configloader import _config_table
    from .exceptions import ConfigurationError

    try:
        table = _config_table(config, environ, Path(os.getcwd() if cwd is None else cwd))
    except (ConfigurationError, OSError):
        return None
    if table is None:
        return None
    value = table[1].get("worker_pool")
    return value if isinstance(value, str) and value else None


def patch_pool(name: str, *, missing_ok: bool = False) -> bool:
    """Run the ``patch`` of the pool plugin ``name`` (once per process).

    Returns True when the pool has a patch (it has now run), False when it
    needs none. Only that pool's entry point is read; its record module must
    stay light (see :attr:`celeriac.plugin.PoolPlugin.patch`). Raises
    :class:`~celeriac.exceptions.PluginNotFound` or
    :class:`~celeriac.exceptions.PluginLoadError` when the pool is not
    installed once or its record cannot be read (with ``missing_ok``, those
    return False: the worker reports them when it loads the pool), and
    :class:`~celeriac.exceptions.PluginLoadError` when the patch itself fails.
    """
    from .exceptions import PluginLoadError, PluginNotFound

    if name in _patched:
        return True
    try:
        ep, record = _pool_record(name)
    except (PluginNotFound, PluginLoadError):
        if missing_ok:
            return False
        raise
    if record.patch is None:
        return False
    from .plugin import resolve

    dist = ep.dist.name if getattr(ep, "dist", None) is not None else "<unknown distribution>"
    try:
        resolve(record.patch)()
    except Exception as exc:
        raise PluginLoadError(
            f"The {name} pool from {dist} could not patch the process ({record.patch}): "
            f"{type(exc).__name__}: {exc}. Reinstall {dist}, or choose another pool.") from exc
    _patched.append(name)
    return True


def _pool_record(name: str) -> tuple[Any, Any]:
    import importlib_metadata

    from .exceptions import PluginLoadError, PluginNotFound
    from .plugin import PoolPlugin

    found = list(importlib_metadata.entry_points(group=POOL_GROUP, name=name))
    if len(found) != 1:
        raise PluginNotFound(
            f"{'No' if not found else 'More than one'} pool named {name!r} is installed "
            f"(entry-point group {POOL_GROUP}); `celeriac plugins` lists the installed pools.")
    ep = found[0]
    try:
        record = ep.load()
    except Exception as exc:
        raise PluginLoadError(f"The pool plugin {name!r} ({ep.value}) failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(record, PoolPlugin):
        raise PluginLoadError(f"The pool plugin {name!r} ({ep.value}) is not a "
                              f"celeriac.plugin.PoolPlugin")
    return ep, record


def patch_for_command_line(args: Sequence[str]) -> str | None:
    """What the ``celeriac`` command does before importing anything heavy:
    patch the process for the pool ``args`` ask for. Returns that pool's name
    when it had a patch, else None. A pool that is not installed is left to
    the worker to report; a patch that fails ends the process with the
    command line's exit code for plugin errors (78) and says why."""
    from .exceptions import PluginError

    name = pool_of_command_line(args)
    if name is None:
        return None
    try:
        return name if patch_pool(name, missing_ok=True) else None
    except PluginError as exc:
        import sys

        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(78) from exc
