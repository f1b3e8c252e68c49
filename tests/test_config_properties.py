"""Properties of settings loading that must hold for every input."""

from __future__ import annotations

import json
import math
import tempfile
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
from celeriac.config import Settings, setting_names
from celeriac.configloader import (
    RESERVED_ENV_PREFIX,
    RESERVED_ENV_VARS,
    field_types,
    load_settings,
)
from celeriac.exceptions import ConfigurationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TYPES = {name: field_types(Settings)[name] for name in setting_names()}
DEFAULTS = attrs.asdict(Settings(), recurse=False)
NULLS = {"", "none", "null"}
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(st.booleans(), INT64, st.text(), st.floats(allow_nan=False))
PROPERTIES = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def optional(tp: Any) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if type(None) in args:
        return True, next(a for a in args if a is not type(None))
    return False, tp


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Every valid value of a setting's type (TOML-expressible leaves in dicts)."""
    nullable, inner = optional(tp)
    base: st.SearchStrategy[Any]
    if inner is bool:
        base = st.booleans()
    elif inner is int:
        base = INT64
    elif inner is float:
        # Ints convert to float exactly only up to 2**53.
        base = st.floats(allow_nan=False) | st.integers(-(2**53), 2**53)
    elif inner is str:
        base = st.text()
    elif typing.get_origin(inner) is list:
        base = st.lists(strategy_for(typing.get_args(inner)[0]), max_size=5)
    elif typing.get_origin(inner) is dict:
        base = st.dictionaries(st.text(), SCALARS | st.lists(SCALARS, max_size=3), max_size=4)
    elif inner is Any:  # task_routes: patterns to queue names or route dicts
        base = st.dictionaries(st.text(), st.text() | st.fixed_dictionaries({"queue": st.text()}),
                               max_size=4)
    else:  # pragma: no cover - a new kind of setting needs a strategy here
        raise NotImplementedError(tp)
    return st.none() | base if nullable else base


ASSIGNMENTS = st.fixed_dictionaries({}, optional={n: strategy_for(t) for n, t in TYPES.items()})


# --- a tiny TOML writer for the value types settings use -------------------------


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(assignment: dict[str, Any]) -> str:
    lines = []
    for key, value in assignment.items():
        if value is None:
            if str in typing.get_args(TYPES[key]):
                assert DEFAULTS[key] is None  # absent means None for these
                continue
            value = "none"  # TOML has no null; files spell None this way
        lines.append(f"{toml_string(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def load_isolated(**kwargs: Any) -> Settings:
    with tempfile.TemporaryDirectory() as cwd:
        kwargs.setdefault("environ", {})
        return load_settings(cwd=cwd, **kwargs)


# --- (a) valid assignments load as given, from code and from a file ------------------


@PROPERTIES
@given(ASSIGNMENTS)
def test_overrides_load_as_given(assignment):
    loaded = attrs.asdict(load_isolated(overrides=assignment), recurse=False)
    assert loaded == {**DEFAULTS, **assignment, "sections": {}}


@PROPERTIES
@given(ASSIGNMENTS)
def test_file_round_trip(assignment):
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, "celeriac.toml").write_text(toml_document(assignment), encoding="utf-8")
        from_file = load_settings(cwd=cwd, environ={})
    assert from_file == load_isolated(overrides=assignment)


# --- (b) environment strings decode to the value they encode ---------------------------


ENV_FIELDS = [n for n, t in TYPES.items()
              if optional(t)[1] in (bool, int, float, str) or typing.get_origin(optional(t)[1]) is list]


def csv_safe(items: list[str]) -> bool:
    return all(i and "," not in i and i == i.strip() for i in items) and not (
        items and items[0].startswith("["))


@st.composite
def env_encodings(draw: st.DrawFn) -> tuple[str, Any, str]:
    name = draw(st.sampled_from(ENV_FIELDS))
    nullable, inner = optional(TYPES[name])
    value = draw(strategy_for(TYPES[name]))
    if value is None:
        return name, None, draw(st.sampled_from(["none", "None", "NULL", "null", ""]))
    if inner is bool:
        forms = ["true", "1", "yes", "on"] if value else ["false", "0", "no", "off"]
        spell = draw(st.sampled_from([str.lower, str.upper, str.capitalize]))
        return name, value, spell(draw(st.sampled_from(forms)))
    if inner is str:
        if nullable and value.strip().lower() in NULLS:
            value = "x" + value  # such strings spell None in a None-able setting
        return name, value, value
    if inner is float or inner is int:
        return name, value, repr(value) if isinstance(value, float) else str(value)
    if csv_safe(value) and (value or not nullable) and draw(st.booleans()):
        return name, value, ",".join(value)
    return name, value, json.dumps(value)


@PROPERTIES
@given(env_encodings())
def test_environment_strings_decode_back(case):
    name, value, text = case
    loaded = getattr(load_isolated(environ={"CELERIAC_" + name.upper(): text}), name)
    assert loaded == value
    if optional(TYPES[name])[1] is float and value is not None:
        assert isinstance(loaded, float)


# --- (c) a key that names no setting is always an error naming it -----------------------


def not_a_setting(key: str) -> bool:
    return key not in setting_names()


@PROPERTIES
@given(st.text().filter(not_a_setting), SCALARS)
def test_unknown_keyword_is_reported(key, value):
    with pytest.raises(ConfigurationError) as info:
        load_isolated(overrides={key: value})
    assert key in str(info.value)


@PROPERTIES
@given(st.text().filter(not_a_setting), SCALARS)
def test_unknown_file_key_is_reported(key, value):
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, "celeriac.toml").write_text(f"{toml_string(key)} = {toml_value(value)}\n",
                                              encoding="utf-8")
        with pytest.raises(ConfigurationError) as info:
            load_settings(cwd=cwd, environ={})
    assert key in str(info.value)


def env_suffix_is_unknown(suffix: str) -> bool:
    var = "CELERIAC_" + suffix
    return (var not in RESERVED_ENV_VARS and not var.startswith(RESERVED_ENV_PREFIX)
            and suffix.lower() not in setting_names())


@PROPERTIES
@given(st.text().filter(env_suffix_is_unknown), st.text())
def test_unknown_environment_variable_is_reported(suffix, value):
    var = "CELERIAC_" + suffix
    with pytest.raises(ConfigurationError) as info:
        load_isolated(environ={var: value})
    assert f"environment variable {var}" in str(info.value)
