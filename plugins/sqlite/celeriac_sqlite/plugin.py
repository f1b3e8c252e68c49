"""Registration records of the SQLite transport and result store, and the
``[sqlite]`` configuration section.

This module is what the entry points load, so it stays cheap to import: the
kombu transport (:mod:`celeriac_sqlite.transport`) and the result store
(:mod:`celeriac_sqlite.backend`) are named by path and imported only when used.

File locations:

* ``sqlite://`` alone: ``<directory>/<app name>/broker.sqlite3``, where
  ``directory`` is the ``[sqlite] directory`` setting, or else the per-user
  data directory (``platformdirs.user_data_dir("celeriac")``). The app name
  is part of the path so that two projects on one machine never share a queue.
* ``sqlite:////abs/path.db``: that absolute path (SQLAlchemy-style slashes).
* ``sqlite:///rel.db``: relative to the current directory, made absolute.

The results file sits beside the broker file: ``results.sqlite3`` next to
``broker.sqlite3``, ``foo.results.db`` next to any other ``foo.db``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any

import attrs
from celeriac.plugin import BackendPlugin, BrokerTarget, ConfigSection, TransportPlugin, hookimpl

if TYPE_CHECKING:
    from celeriac.config import Settings

__all__ = [
    "SQLiteSettings",
    "backend",
    "broker_path",
    "celeriac_config_sections",
    "default_directory",
    "prepare_broker",
    "results_path",
    "results_url_for_broker",
    "section_settings",
    "transport",
    "url_path",
    "warn_if_network_filesystem",
]

logger = logging.getLogger(__name__)

SCHEME = "sqlite"
BROKER_FILE = "broker.sqlite3"
RESULTS_FILE = "results.sqlite3"
DEFAULT_APP = "default"

#: File systems on which SQLite's WAL mode (shared memory) is not safe.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs",
                                 "ncpfs", "afs", "9p", "fuse.sshfs", "glusterfs", "ceph"})


def _doc(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    validator = attrs.validators.in_(choices) if choices else None
    return attrs.field(default=default, validator=validator, metadata={"doc": doc})


@attrs.define(kw_only=True)
class SQLiteSettings:
    """The ``[sqlite]`` section: where the files live and how the broker behaves.

    Every field except ``directory`` is also a transport option; the user's
    ``broker_transport_options`` override the values given here.
    """

    directory: str | None = _doc(
        None, "Directory holding one sub-directory per app (``<app>/broker.sqlite3`` and "
        "``<app>/results.sqlite3``) for the bare ``sqlite://`` URL. None: the per-user "
        "data directory (``~/.local/share/celeriac`` on Linux).")
    visibility_timeout: float = _doc(
        60.0, "Seconds a delivered message stays leased to its consumer. The lease is "
        "renewed every quarter of this while the consumer lives, so it bounds how long a "
        "dead worker's messages take to come back, not how long a task may run.")
    durability: str = _doc(
        "normal", "``normal`` (commits survive a crash of any process; the last ones may be "
        "lost on power loss) or ``full`` (fsync on every commit; much slower).",
        ("normal", "full"))
    busy_timeout: float = _doc(
        5.0, "Seconds to wait for another process's write lock before giving up.")
    claim_batch: int = _doc(
        100, "Most messages a consumer claims in one transaction (also capped by its "
        "prefetch headroom).")
    broadcast_ttl: float = _doc(
        300.0, "Seconds broadcast (fanout) messages are kept for consumers to read.")
    poll_interval: float = _doc(
        1.0, "Seconds an idle consumer sleeps when no wake-up datagram arrives (a "
        "fallback: publishers wake consumers directly).")
    ack_mode: str = _doc(
        "immediate", "``immediate`` deletes each acknowledged message at once. ``batched`` "
        "defers the deletes to the consumer's next claim (faster draining; a killed "
        "worker may run up to one prefetch window of already-acknowledged tasks again).",
        ("immediate", "batched"))

    def transport_options(self) -> dict[str, Any]:
        """The fields the transport reads, as kombu transport options."""
        return {
            "visibility_timeout": self.visibility_timeout,
            "durability": self.durability,
            "busy_timeout": self.busy_timeout,
            "claim_batch": self.claim_batch,
            "broadcast_ttl": self.broadcast_ttl,
            "poll_interval": self.poll_interval,
            "ack_mode": self.ack_mode,
        }


@hookimpl
def celeriac_config_sections() -> list[ConfigSection]:
    """Declare the ``[sqlite]`` section."""
    return [ConfigSection(SCHEME, SQLiteSettings,
                          "The embedded SQLite broker and result store.")]


def section_settings(settings: Settings | None) -> SQLiteSettings:
    """The ``[sqlite]`` section of ``settings``, or its defaults when the
    section is not loaded (a bare ``Settings()`` in a test, say)."""
    if settings is not None:
        sections = getattr(settings, "sections", None) or {}
        found = sections.get(SCHEME)
        if isinstance(found, SQLiteSettings):
            return found
        if isinstance(found, dict):
            return SQLiteSettings(**found)
    return SQLiteSettings()


# -- paths ------------------------------------------------------------------------------


def _app_dir_name(app_name: str | None) -> str:
    # An app name becomes one path component: nothing that could climb or nest.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", app_name or DEFAULT_APP).strip(".")
    return name or DEFAULT_APP


def default_directory(directory: str | None, app_name: str | None) -> str:
    """The per-app directory used by the bare ``sqlite://`` URL."""
    if not directory:
        import platformdirs

        directory = platformdirs.user_data_dir("celeriac")
    return os.path.join(os.path.abspath(os.path.expanduser(directory)), _app_dir_name(app_name))


def url_path(url: str) -> str | None:
    """The file path in a ``sqlite://`` URL, or ``None`` for the bare URL.

    ``sqlite:////abs/x.db`` gives ``/abs/x.db``; ``sqlite:///rel.db`` gives
    ``rel.db`` (relative to the current directory).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0].lower() != SCHEME:
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    rest = rest.split("?", 1)[0]
    if rest in ("", "/"):
        return None
    if not rest.startswith("/"):
        # sqlite://host/... has no meaning for a local file.
        raise ValueError(f"a sqlite URL names a file: sqlite:////abs/path or "
                         f"sqlite:///relative/path, not {url!r}")
    return rest[1:]


def broker_path(url: str, directory: str | None = None, app_name: str | None = None) -> str:
    """Absolute path of the broker file a ``sqlite://`` URL names."""
    path = url_path(url)
    if path is None:
        return os.path.join(default_directory(directory, app_name), BROKER_FILE)
    return os.path.abspath(os.path.expanduser(path))


def _beside(path: str) -> str:
    head, name = os.path.split(path)
    if name == BROKER_FILE:
        return os.path.join(head, RESULTS_FILE)
    stem, ext = os.path.splitext(name)
    return os.path.join(head, f"{stem}.results{ext}")


def results_path(url: str, directory: str | None = None, app_name: str | None = None) -> str:
    """Absolute path of the results file a ``sqlite://`` result backend URL names."""
    path = url_path(url)
    if path is None:
        return os.path.join(default_directory(directory, app_name), RESULTS_FILE)
    return os.path.abspath(os.path.expanduser(path))


def results_url_for_broker(broker_url: str) -> str:
    """The result backend URL used when only ``broker_url = sqlite://...`` is set:
    a results file beside the broker file (the bare URL stays bare; the
    backend resolves it per app, as the broker does)."""
    path = url_path(broker_url)
    if path is None:
        return f"{SCHEME}://"
    return f"{SCHEME}:///{_beside(path)}"


_CHECKED_PATHS: set[str] = set()


def warn_if_network_filesystem(path: str) -> None:
    """Log a warning when ``path`` is on NFS/SMB (Linux only; best effort).

    WAL mode needs shared memory between all processes using the file, which
    network file systems do not provide. Each path is checked once per process.
    """
    if path in _CHECKED_PATHS:
        return
    _CHECKED_PATHS.add(path)
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return
    real = os.path.realpath(path)
    best, fstype = "", ""
    for fields in entries:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    if fstype.lower() in NETWORK_FILESYSTEMS:
        logger.warning("SQLite file %s is on a network file system (%s): SQLite's WAL mode "
                       "needs all processes on one host and a local disk.", path, fstype)


def prepare_broker(url: str, settings: Settings, app_name: str | None) -> BrokerTarget:
    """Resolve a ``sqlite://`` broker URL to an absolute file path.

    Creates the parent directory, and returns the URL kombu is given (always
    the absolute form), the section's transport options, and the path as the
    broker's display name.
    """
    section = section_settings(settings)
    path = broker_path(url, section.directory, app_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    warn_if_network_filesystem(path)
    return BrokerTarget(url=f"{SCHEME}:///{path}", transport_options=section.transport_options(),
                        display=path)


transport = TransportPlugin(
    name=SCHEME,
    kombu_transport="celeriac_sqlite.transport:Transport",
    description="Embedded broker in a local SQLite file: leases, native delay, priorities, "
    "broadcast; no server to run.",
    native_delay=True,
    priorities="higher-first",
    broadcast=True,
    leases=True,
    delivery_count=True,
    interrupt=lambda connection: connection.transport.interrupt(),
    publish_many=lambda channel, items: channel.publish_many(items),
    prepare=prepare_broker,
)
"""The ``celeriac.transports: sqlite`` entry point."""

backend = BackendPlugin(
    name=SCHEME,
    backend_class="celeriac_sqlite.backend:SQLiteBackend",
    description="Results in a local SQLite file beside the broker file.",
    default_url=results_url_for_broker,
)
"""The ``celeriac.backends: sqlite`` entry point."""
