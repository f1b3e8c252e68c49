"""Load :class:`celeriac.config.Settings` from files, keyword arguments and the environment.

Sources, lowest precedence first; a later source replaces a setting (or one
field of a plugin section) that an earlier one gave:

1. the built-in defaults (:class:`celeriac.config.Settings` and each
   :class:`celeriac.plugin.ConfigSection`'s class);
2. one TOML config file: ``config_file`` if given, else ``$CELERIAC_CONFIG``,
   else ``celeriac.toml`` in the working directory, else the ``[tool.celeriac]``
   table of ``pyproject.toml`` there (only when that table exists);
3. ``overrides``: ``App(...)`` keyword arguments, ``app.configure`` (Celery's
   ``app.conf.update``), ``config_from_object``;
4. environment variables: ``CELERIAC_<SETTING>`` and
   ``CELERIAC_<SECTION>__<FIELD>``, converted from strings by the field's type.

A dict-valued setting (``task_routes``, ``broker_transport_options``) is
replaced as a whole, never merged key by key, as Celery's ``conf.update`` does.

Everything is checked before anything is used: unknown keys (with a
suggestion), values of the wrong type (strict: no ``"4"`` for an int outside
the environment, no ``True`` for an int). All problems are reported together in
one :class:`~celeriac.exceptions.ConfigurationError`, one per line, each with
the setting's path and the source that gave it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import (
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from .config import Settings, setting_names
from .exceptions import ConfigurationError
from .plugin import ConfigSection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "CELERIAC_"
CONFIG_FILE_NAME = "celeriac.toml"
#: ``CELERIAC_*`` variables that are not settings (read elsewhere), never errors.
RESERVED_ENV_VARS = frozenset({"CELERIAC_CONFIG", "CELERIAC_APP", "CELERIAC_PLUGINS",
                               "CELERIAC_DISABLE_PLUGINS", "CELERIAC_TRACE_PLUGINS",
                               "CELERIAC_LOG_LEVEL"})
#: Any variable starting with this is left to test suites.
RESERVED_ENV_PREFIX = "CELERIAC_TEST"
KEYWORD_ORIGIN = "App(...) keyword"

_NULLS = frozenset({"", "none", "null"})
_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


# --- types ---------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """Each attrs field's type, resolved (the kernel uses postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in attrs.fields(cls)}


def _split_optional(tp: Any) -> tuple[bool, Any]:
    """``(accepts None, the type without None)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):
            return True, rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
    return False, tp


def describe_type(tp: Any) -> str:
    """A type as users write it: ``int | None``, ``list[str]``, ``any``."""
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else describe_type(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _is_collection(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)) or (
        origin in (Sequence, typing.Sequence))


def _is_mapping(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, Mapping)


def _accepts_str(tp: Any) -> bool:
    _, inner = _split_optional(tp)
    if typing.get_origin(inner) in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(inner))
    return inner is str or inner is Any


# --- environment ---------------------------------------------------------------


def env_var_name(name: str, section: str | None = None) -> str:
    """``CELERIAC_BROKER_URL`` for a setting, ``CELERIAC_SQLITE__DIRECTORY`` for a section field."""
    if section is None:
        return ENV_PREFIX + name.upper()
    return f"{ENV_PREFIX}{section.upper()}__{name.upper()}"


def parse_env_value(text: str, tp: Any) -> Any:
    """Convert an environment variable's string to a value of type ``tp``.

    bool: true/false/1/0/yes/no/on/off (any case); int and float; ``none``,
    ``null`` or an empty string for a type that accepts None; a JSON array or
    comma-separated items for lists; a JSON object for dicts. Raises
    :class:`ValueError` saying what was expected.
    """
    nullable, inner = _split_optional(tp)
    if nullable and text.strip().lower() in _NULLS:
        return None
    if inner is str:
        return text
    if inner is bool:
        try:
            return _BOOLS[text.strip().lower()]
        except KeyError:
            raise ValueError(f"expected one of true/false/1/0/yes/no/on/off, got {text!r}") from None
    if inner is int or inner is float:
        try:
            return inner(text.strip())
        except ValueError:
            raise ValueError(f"expected {describe_type(inner)}, got {text!r}") from None
    if _is_collection(inner):
        if text.strip().startswith("["):
            return _json(text, list, "a JSON array")
        args = typing.get_args(inner)
        item_type = args[0] if args and args[0] is not Ellipsis else Any
        items = [part.strip() for part in text.split(",") if part.strip()]
        return [parse_env_value(item, item_type) for item in items]
    if _is_mapping(inner):
        return _json(text, dict, "a JSON object")
    if inner is Any or typing.get_origin(inner) in (typing.Union, types.UnionType):
        try:
            return json.loads(text)
        except ValueError:
            return text
    # Anything else (Path, an Enum, a Literal): cattrs builds it from the string.
    return text


def _json(text: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"expected {what}, got {text!r} ({exc})") from None
    if not isinstance(value, kind):
        raise ValueError(f"expected {what}, got {text!r}")
    return value


# --- files ---------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None


def _file_table(path: Path, data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The settings table of a parsed file and the origin to name in errors.
    A ``pyproject.toml`` holds them under ``[tool.celeriac]``; None if it has none."""
    if path.name != "pyproject.toml":
        return str(path), data
    table = data.get("tool", {}).get("celeriac")
    if table is None:
        return None
    origin = f"{path} [tool.celeriac]"
    if not isinstance(table, dict):
        raise ConfigurationError(f"{origin}: expected a table, got {table!r}")
    return origin, table


def _discover(cwd: Path) -> tuple[Path, str, dict[str, Any]] | None:
    for name in (CONFIG_FILE_NAME, "pyproject.toml"):
        path = cwd / name
        if path.is_file():
            found = _file_table(path, _read_toml(path))
            if found is not None:
                return path, *found
    return None


def find_config_file(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file found in ``cwd`` (default: the working directory):
    ``celeriac.toml``, else ``pyproject.toml`` if it has a ``[tool.celeriac]``
    table, else None. ``$CELERIAC_CONFIG`` and an explicit path are handled by
    :func:`load_settings`, which they take precedence in."""
    found = _discover(Path(os.getcwd() if cwd is None else cwd))
    return None if found is None else found[0]


def _config_table(config_file: Any, environ: Mapping[str, str],
                  cwd: Path) -> tuple[str, dict[str, Any]] | None:
    if config_file is not None:
        path = Path(config_file)
    elif environ.get("CELERIAC_CONFIG"):
        path = Path(environ["CELERIAC_CONFIG"])
    else:
        found = _discover(cwd)
        return None if found is None else found[1:]
    path = path if path.is_absolute() else cwd / path
    # An explicit pyproject.toml without [tool.celeriac] simply configures nothing.
    return _file_table(path, _read_toml(path)) or (f"{path} [tool.celeriac]", {})


# --- sections ------------------------------------------------------------------


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _index_sections(sections: Iterable[ConfigSection]) -> dict[str, ConfigSection]:
    by_name: dict[str, ConfigSection] = {}
    kernel = set(setting_names()) | {"sections"}
    for section in sections:
        if not isinstance(section, ConfigSection):
            raise ConfigurationError(f"expected a celeriac.plugin.ConfigSection, got {section!r}")
        name = section.name
        if not (name.isidentifier() and name == name.lower() and "__" not in name
                and not name.startswith("_")):
            raise ConfigurationError(
                f"configuration section name {name!r} ({_qualname(section.settings_class)}) must "
                "be a lowercase identifier without '__' (it becomes CELERIAC_<NAME>__<FIELD>)")
        if name in kernel:
            raise ConfigurationError(
                f"configuration section [{name}] ({_qualname(section.settings_class)}) has the "
                "name of a kernel setting")
        if not attrs.has(section.settings_class):
            raise ConfigurationError(
                f"configuration section [{name}]: {section.settings_class!r} is not an attrs class")
        if name in by_name:
            raise ConfigurationError(
                f"configuration section [{name}] is declared twice: by "
                f"{_qualname(by_name[name].settings_class)} and by "
                f"{_qualname(section.settings_class)}; uninstall one of the plugins")
        by_name[name] = section
    return by_name


def sections_from_plugins(plugins: Any) -> list[ConfigSection]:
    """Every :class:`ConfigSection` the plugins of ``plugins`` (a
    :class:`celeriac._plugins.Plugins`) declare through the
    ``celeriac_config_sections`` hook, in one list. A section name declared
    twice raises :class:`ConfigurationError` naming both settings classes."""
    found: list[ConfigSection] = []
    for result in plugins.hooks.call("celeriac_config_sections"):
        found.extend([result] if isinstance(result, ConfigSection) else result)
    return list(_index_sections(found).values())


# --- validation ----------------------------------------------------------------


class _WrongType(TypeError):
    def __init__(self, value: Any, expected: Any) -> None:
        super().__init__(f"expected {describe_type(expected)}, got {_show(value)}")
        self.value = value
        self.expected = expected


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _strict(expected: type, accept: Any, convert: Any = None) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if not accept(value):
            raise _WrongType(value, expected)
        return value if convert is None else convert(value)
    return hook


@functools.lru_cache(maxsize=1)
def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    # cattrs' defaults call int(), str(), bool(): "4" would pass as 4 and 4 as "4".
    conv.register_structure_hook(bool, _strict(bool, lambda v: isinstance(v, bool)))
    conv.register_structure_hook(str, _strict(str, lambda v: isinstance(v, str)))
    conv.register_structure_hook(
        int, _strict(int, lambda v: isinstance(v, int) and not isinstance(v, bool)))
    conv.register_structure_hook(
        float, _strict(float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                       float))

    # Without this a string is a sequence and "json" would become ['j', 's', 'o', 'n'].
    def collection_factory(tp: Any, c: Any) -> Any:
        origin = typing.get_origin(tp) or tp
        if origin is tuple:
            inner = homogenous_tuple_structure_factory(tp, c)
        elif isinstance(origin, type) and issubclass(origin, (set, frozenset)):
            args = typing.get_args(tp)
            item = args[0] if args else Any
            inner = lambda v, _t: origin(c.structure(x, item) for x in v)  # noqa: E731
        else:
            inner = list_structure_factory(tp, c)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise _WrongType(value, tp)
            return inner(value, t)
        return hook

    def mapping_factory(tp: Any, c: Any) -> Any:
        inner = mapping_structure_factory(tp, c)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, Mapping):
                raise _WrongType(value, tp)
            return inner(value, t)
        return hook

    conv.register_structure_hook_factory(_is_collection, collection_factory)
    conv.register_structure_hook_factory(
        lambda t: _is_mapping(t) and not attrs.has(t), mapping_factory)
    return conv


def _problems(exc: BaseException, path: tuple[Any, ...],
              expected: Any = None) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Walk cattrs' exception groups down to ``(path, problem)`` pairs."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield path + (key,), "unknown setting" + _did_you_mean(
                key, [f.name for f in attrs.fields(exc.cl)])
    elif isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            step = note.index if isinstance(note, IterableValidationNote) else note.name
            yield from _problems(sub, path + (step,), note.type)
        for sub in without:
            yield from _problems(sub, path, expected)
    elif isinstance(exc, _WrongType):
        yield path, f"expected {describe_type(expected or exc.expected)}, got {_show(exc.value)}"
    elif isinstance(exc, KeyError):
        yield path, "required, and has no default"
    else:
        yield path, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _did_you_mean(key: Any, choices: Iterable[str], show: Any = repr) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {show(close[0])}?" if close else ""


def _path_text(path: Sequence[Any]) -> str:
    text = ""
    for step in path:
        text += f"[{step!r}]" if isinstance(step, int) else ("." if text else "") + str(step)
    return text


# --- gathering the sources -----------------------------------------------------


@attrs.define
class _Gathered:
    """The merged raw values of every source, where each came from, and what was wrong."""

    sections: dict[str, ConfigSection]
    kernel: dict[str, Any] = attrs.Factory(dict)
    section_values: dict[str, dict[str, Any]] = attrs.Factory(dict)
    origins: dict[tuple[str, ...], str] = attrs.Factory(dict)
    errors: list[str] = attrs.Factory(list)

    def error(self, path: Sequence[Any], origin: str, problem: str) -> None:
        self.errors.append(f"{_path_text(path)} (from {origin}): {problem}")

    def set(self, path: tuple[str, ...], value: Any, origin: str) -> None:
        if len(path) == 1:
            self.kernel[path[0]] = value
        else:
            self.section_values.setdefault(path[0], {})[path[1]] = value
        self.origins[path] = origin

    def add_mapping(self, data: Mapping[str, Any], origin: str, *, from_file: bool) -> None:
        """Top-level keys of a file or of the keyword arguments."""
        kernel_types = field_types(Settings)
        for key, value in data.items():
            if key in kernel_types and key != "sections":
                self.set((key,), _file_null(value, kernel_types[key], from_file), origin)
            elif key in self.sections:
                self._add_section(key, value, origin, from_file)
            else:
                self.error([key], origin, "unknown setting" + _did_you_mean(
                    key, [*setting_names(), *self.sections]))

    def _add_section(self, name: str, value: Any, origin: str, from_file: bool) -> None:
        cls = self.sections[name].settings_class
        if isinstance(value, cls):
            value = {f.name: getattr(value, f.name) for f in attrs.fields(cls)}
        if not isinstance(value, Mapping):
            self.error([name], origin, f"expected a table of the [{name}] section's settings "
                       f"(or a {cls.__name__}), got {_show(value)}")
            return
        types_ = field_types(cls)
        for key, item in value.items():
            if key in types_:
                self.set((name, key), _file_null(item, types_[key], from_file), origin)
            else:
                self.error([name, key], origin, f"unknown setting in section [{name}]"
                           + _did_you_mean(key, types_))

    def add_environ(self, environ: Mapping[str, str]) -> None:
        """``CELERIAC_<SETTING>`` and ``CELERIAC_<SECTION>__<FIELD>`` variables."""
        for var in sorted(environ):
            if (not var.startswith(ENV_PREFIX) or var in RESERVED_ENV_VARS
                    or var.startswith(RESERVED_ENV_PREFIX)):
                continue
            origin = f"environment variable {var}"
            target = self._env_target(var[len(ENV_PREFIX):].lower(), origin)
            if target is not None:
                try:
                    self.set(target[0], parse_env_value(environ[var], target[1]), origin)
                except ValueError as exc:
                    self.error(target[0], origin, str(exc))

    def _env_target(self, rest: str, origin: str) -> tuple[tuple[str, ...], Any] | None:
        """The path and type a variable names, or None after recording why it names none."""
        name, sep, key = rest.partition("__")
        if sep and name not in self.sections:
            hint = (f"; {name} is a setting, not a section: set {env_var_name(name)} to a "
                    "JSON object" if name in setting_names() else _did_you_mean(
                        name, self.sections, lambda n: f"[{n}] ({env_var_name('...', n)})"))
            self.error([name], origin, "unknown configuration section" + hint)
            return None
        section = name if sep else None
        types_ = (field_types(self.sections[name].settings_class) if sep
                  else {n: field_types(Settings)[n] for n in setting_names()})
        path = (name, key) if sep else (rest,)
        field = key if sep else rest
        if field not in types_:
            where = f" in section [{section}]" if section else ""
            self.error(path, origin, f"unknown setting{where}" + _did_you_mean(
                field, types_, lambda n: f"{n!r} ({env_var_name(n, section)})"))
            return None
        return path, types_[field]

    def structure(self, cls: type, values: dict[str, Any], prefix: tuple[str, ...]) -> Any:
        """Validate ``values`` into ``cls``; problems are recorded, None returned."""
        try:
            return _converter().structure(values, cls)
        except (BaseValidationError, ForbiddenExtraKeysError) as exc:
            for path, problem in _problems(exc, prefix):
                key = path[:len(prefix) + 1]
                self.error(path, self.origins.get(key, "defaults"), problem)
            return None


def _file_null(value: Any, tp: Any, from_file: bool) -> Any:
    """TOML has no null: in a file, ``"none"`` unsets a None-able non-string field
    (``result_expires = "none"`` keeps results forever)."""
    if (from_file and isinstance(value, str) and value.strip().lower() in _NULLS - {""}
            and _split_optional(tp)[0] and not _accepts_str(tp)):
        return None
    return value


# --- entry point ---------------------------------------------------------------


def load_settings(
    *,
    overrides: Mapping[str, Any] = (),  # type: ignore[assignment]
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    sections: Sequence[ConfigSection] = (),
    cwd: str | os.PathLike[str] | None = None,
    overrides_origin: str = KEYWORD_ORIGIN,
) -> Settings:
    """Build the :class:`Settings` of an app from every source, in precedence order.

    ``overrides`` are keyword settings (a plugin section as a dict under its
    name, ``sqlite={"directory": "/x"}``); ``config_file`` overrides file
    discovery; ``environ`` defaults to ``os.environ`` and ``cwd`` to the
    working directory; ``sections`` are the plugin sections to accept (see
    :func:`sections_from_plugins`), each present in ``settings.sections`` with
    its defaults when not configured. ``overrides_origin`` names the
    overrides in error messages (``config_from_object('proj.conf')``).

    Raises :class:`ConfigurationError` listing every problem, one per line.
    The result shares no mutable value with the defaults or the inputs.
    """
    environ = os.environ if environ is None else environ
    base = Path(os.getcwd() if cwd is None else cwd)
    gathered = _Gathered(_index_sections(sections))

    table = _config_table(config_file, environ, base)
    if table is not None:
        origin, data = table
        gathered.add_mapping(data, origin, from_file=True)
    # Copied so that the settings never alias a caller's dict or list.
    gathered.add_mapping(copy.deepcopy(dict(overrides)), overrides_origin, from_file=False)
    gathered.add_environ(environ)

    settings = gathered.structure(Settings, gathered.kernel, ())
    section_objects = {
        name: gathered.structure(section.settings_class,
                                 gathered.section_values.get(name, {}), (name,))
        for name, section in gathered.sections.items()
    }
    if gathered.errors:
        count = len(gathered.errors)
        raise ConfigurationError(
            f"invalid configuration ({count} problem{'s' if count > 1 else ''}):\n  "
            + "\n  ".join(gathered.errors))
    assert settings is not None
    settings.sections = section_objects
    return settings
