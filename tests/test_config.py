"""Loading settings: every source, precedence, discovery, errors and the generated docs."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from celeriac import configdoc
from celeriac._plugins import Plugins
from celeriac.config import Settings, setting_names
from celeriac.configloader import find_config_file, load_settings, sections_from_plugins
from celeriac.exceptions import ConfigurationError
from celeriac.plugin import ConfigSection, hookimpl

REPO = Path(__file__).resolve().parents[1]


@attrs.define(kw_only=True)
class StoreSettings:
    directory: str | None = attrs.field(default=None, metadata={"doc": "Where files go."})
    busy_timeout: float = attrs.field(default=5.0, metadata={"doc": "Seconds to wait."})
    modes: list[str] = attrs.field(factory=lambda: ["wal"], metadata={"doc": "Modes."})


@attrs.define(kw_only=True)
class OtherSettings:
    enabled: bool = attrs.field(default=False, metadata={"doc": "On or off."})


SECTIONS = [ConfigSection("sqlite", StoreSettings, "A store."),
            ConfigSection("other", OtherSettings)]


def load(tmp_path: Path, environ: dict[str, str] | None = None, **kwargs) -> Settings:
    """Load with no real environment and ``tmp_path`` as the working directory."""
    kwargs.setdefault("sections", SECTIONS)
    return load_settings(environ=environ or {}, cwd=tmp_path, **kwargs)


def error_of(tmp_path: Path, environ: dict[str, str] | None = None, **kwargs) -> str:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, environ, **kwargs)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and sections -------------------------------------------------------


def test_defaults_with_every_section_filled(tmp_path):
    settings = load(tmp_path)
    expected = attrs.asdict(Settings(), recurse=False)
    expected["sections"] = {"sqlite": StoreSettings(), "other": OtherSettings()}
    assert attrs.asdict(settings, recurse=False) == expected
    assert settings.section("sqlite") == StoreSettings()


def test_result_shares_no_mutable_value(tmp_path):
    routes = {"proj.*": {"queue": "math"}}
    first = load(tmp_path, overrides={"task_routes": routes, "imports": ["a"]})
    first.accept_content.append("pickle")
    first.task_routes["proj.*"]["queue"] = "changed"
    first.section("sqlite").modes.append("x")
    assert routes == {"proj.*": {"queue": "math"}}
    again = load(tmp_path)
    assert again.accept_content == ["json"] and Settings().accept_content == ["json"]
    assert again.section("sqlite").modes == ["wal"]


def test_section_given_as_its_settings_object(tmp_path):
    settings = load(tmp_path, overrides={"sqlite": StoreSettings(directory="/d")})
    assert settings.section("sqlite").directory == "/d"


# --- each source and the precedence between them -------------------------------


def test_file_values(tmp_path):
    write(tmp_path / "celeriac.toml", """
broker_url = "redis://h/0"
worker_concurrency = 4
accept_content = ["json", "pickle"]
[broker_transport_options]
visibility_timeout = 3600
[task_routes]
"proj.*" = { queue = "math" }
[sqlite]
directory = "/var/lib/q"
""")
    settings = load(tmp_path)
    assert settings.broker_url == "redis://h/0"
    assert settings.worker_concurrency == 4
    assert settings.accept_content == ["json", "pickle"]
    assert settings.broker_transport_options == {"visibility_timeout": 3600}
    assert settings.task_routes == {"proj.*": {"queue": "math"}}
    assert settings.section("sqlite").directory == "/var/lib/q"


def test_precedence_defaults_file_overrides_environment(tmp_path):
    write(tmp_path / "celeriac.toml", """
broker_url = "file://"
worker_concurrency = 1
task_default_queue = "from-file"
[sqlite]
directory = "/file"
busy_timeout = 1.0
""")
    settings = load(
        tmp_path,
        {"CELERIAC_WORKER_CONCURRENCY": "3", "CELERIAC_SQLITE__BUSY_TIMEOUT": "3"},
        overrides={"broker_url": "kw://", "worker_concurrency": 2,
                   "sqlite": {"busy_timeout": 2.0}},
    )
    assert settings.task_default_queue == "from-file"        # file over default
    assert settings.broker_url == "kw://"                     # overrides over file
    assert settings.worker_concurrency == 3                   # environment over all
    assert settings.section("sqlite").directory == "/file"    # sections merge per field
    assert settings.section("sqlite").busy_timeout == 3.0
    assert settings.worker_pool == Settings().worker_pool     # default when unset


def test_dict_setting_is_replaced_not_merged(tmp_path):
    write(tmp_path / "celeriac.toml", "[broker_transport_options]\na = 1\nb = 2\n")
    settings = load(tmp_path, overrides={"broker_transport_options": {"b": 3}})
    assert settings.broker_transport_options == {"b": 3}


def test_default_environ_is_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CELERIAC_TASK_DEFAULT_QUEUE", "from-env")
    settings = load_settings(cwd=tmp_path)
    assert settings.task_default_queue == "from-env"


# --- finding the file ------------------------------------------------------------


def test_find_celeriac_toml_before_pyproject(tmp_path):
    assert find_config_file(tmp_path) is None
    write(tmp_path / "pyproject.toml", "[tool.celeriac]\ntask_default_queue = 'py'\n")
    assert find_config_file(tmp_path) == tmp_path / "pyproject.toml"
    assert load(tmp_path).task_default_queue == "py"
    write(tmp_path / "celeriac.toml", "broker_url = 'toml://'\n")
    assert find_config_file(tmp_path) == tmp_path / "celeriac.toml"
    settings = load(tmp_path)
    assert settings.broker_url == "toml://"
    assert settings.task_default_queue == "celery"  # only one file is read


def test_pyproject_without_the_table_is_not_a_config_file(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n[tool.other]\na = 1\n")
    assert find_config_file(tmp_path) is None
    assert load(tmp_path) == load(tmp_path / "nowhere")


def test_pyproject_section_table(tmp_path):
    write(tmp_path / "pyproject.toml",
          "[tool.celeriac]\nworker_concurrency = 2\n[tool.celeriac.sqlite]\ndirectory = '/p'\n")
    settings = load(tmp_path)
    assert (settings.worker_concurrency, settings.section("sqlite").directory) == (2, "/p")


def test_find_defaults_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "celeriac.toml", "")
    monkeypatch.chdir(tmp_path)
    assert find_config_file() == tmp_path / "celeriac.toml"


def test_celeriac_config_variable_wins_over_discovery(tmp_path):
    write(tmp_path / "celeriac.toml", "broker_url = 'cwd://'\n")
    write(tmp_path / "conf" / "prod.toml", "broker_url = 'env://'\n")
    env = {"CELERIAC_CONFIG": "conf/prod.toml"}  # relative to the working directory
    assert load(tmp_path, env).broker_url == "env://"
    env = {"CELERIAC_CONFIG": str(tmp_path / "conf" / "prod.toml")}
    assert load(tmp_path, env).broker_url == "env://"


def test_explicit_path_wins_over_the_variable(tmp_path):
    write(tmp_path / "a.toml", "broker_url = 'explicit://'\n")
    write(tmp_path / "b.toml", "broker_url = 'env://'\n")
    settings = load(tmp_path, {"CELERIAC_CONFIG": "b.toml"}, config_file=tmp_path / "a.toml")
    assert settings.broker_url == "explicit://"
    assert load(tmp_path, config_file="a.toml").broker_url == "explicit://"


def test_explicit_pyproject_reads_its_table(tmp_path):
    path = write(tmp_path / "sub" / "pyproject.toml", "[tool.celeriac]\nbroker_url = 'p://'\n")
    assert load(tmp_path, config_file=path).broker_url == "p://"


@pytest.mark.parametrize("how", ["explicit", "variable"])
def test_missing_named_file_is_an_error(tmp_path, how):
    if how == "explicit":
        message = error_of(tmp_path, config_file="nope.toml")
    else:
        message = error_of(tmp_path, {"CELERIAC_CONFIG": "nope.toml"})
    assert "nope.toml" in message and "does not exist" in message


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path / "celeriac.toml", "broker_url = \n")
    message = error_of(tmp_path)
    assert str(path) in message and "not valid TOML" in message


# --- unknown keys ----------------------------------------------------------------


def test_unknown_keyword(tmp_path):
    message = error_of(tmp_path, overrides={"worker_concurency": 4})
    assert "worker_concurency (from App(...) keyword): unknown setting" in message
    assert "did you mean 'worker_concurrency'?" in message


def test_overrides_origin_is_named(tmp_path):
    message = error_of(tmp_path, overrides={"brokr_url": "x"},
                       overrides_origin="config_from_object('proj.conf')")
    assert "(from config_from_object('proj.conf'))" in message


def test_unknown_file_key_and_section_key(tmp_path):
    path = write(tmp_path / "celeriac.toml",
                 "worker_concurency = 4\n[sqlite]\nbsy_timeout = 1\n[sqlit]\na = 1\n")
    message = error_of(tmp_path)
    assert f"worker_concurency (from {path}): unknown setting; " \
           "did you mean 'worker_concurrency'?" in message
    assert f"sqlite.bsy_timeout (from {path}): unknown setting in section [sqlite]; " \
           "did you mean 'busy_timeout'?" in message
    assert "sqlit (from" in message and "did you mean 'sqlite'?" in message
    assert message.startswith("invalid configuration (3 problems):\n")
    assert len(message.splitlines()) == 4  # all reported, one per line


def test_unknown_key_in_pyproject_names_the_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", "[tool.celeriac]\nbrokerurl = 'x'\n")
    message = error_of(tmp_path)
    assert f"brokerurl (from {path} [tool.celeriac])" in message
    assert "did you mean 'broker_url'?" in message


def test_unknown_environment_variables(tmp_path):
    message = error_of(tmp_path, {
        "CELERIAC_WORKER_CONCURENCY": "4",
        "CELERIAC_SQLITE__BSY_TIMEOUT": "1",
        "CELERIAC_SQLIT__DIRECTORY": "/x",
    })
    assert ("worker_concurency (from environment variable CELERIAC_WORKER_CONCURENCY): "
            "unknown setting; did you mean 'worker_concurrency' "
            "(CELERIAC_WORKER_CONCURRENCY)?") in message
    assert ("sqlite.bsy_timeout (from environment variable CELERIAC_SQLITE__BSY_TIMEOUT): "
            "unknown setting in section [sqlite]; did you mean 'busy_timeout'") in message
    assert "sqlit (from environment variable CELERIAC_SQLIT__DIRECTORY): " \
           "unknown configuration section; did you mean [sqlite]" in message


def test_environment_cannot_reach_inside_a_dict_setting(tmp_path):
    message = error_of(tmp_path, {"CELERIAC_BROKER_TRANSPORT_OPTIONS__X": "1"})
    assert "is a setting, not a section" in message
    assert "CELERIAC_BROKER_TRANSPORT_OPTIONS to a JSON object" in message


def test_sections_is_not_a_setting(tmp_path):
    assert "sections (from App(...) keyword): unknown setting" in error_of(
        tmp_path, overrides={"sections": {}})
    assert "unknown setting" in error_of(tmp_path, {"CELERIAC_SECTIONS": "{}"})


def test_undeclared_section_is_unknown(tmp_path):
    message = error_of(tmp_path, overrides={"sqlite": {"directory": "/x"}}, sections=())
    assert "sqlite (from App(...) keyword): unknown setting" in message


@pytest.mark.parametrize("var", [
    "CELERIAC_CONFIG", "CELERIAC_APP", "CELERIAC_PLUGINS", "CELERIAC_DISABLE_PLUGINS",
    "CELERIAC_TRACE_PLUGINS", "CELERIAC_LOG_LEVEL", "CELERIAC_TEST", "CELERIAC_TESTING_DB",
    "CELERY_BROKER_URL", "celeriac_broker_url", "PATH",
])
def test_reserved_and_foreign_variables_are_ignored(tmp_path, var):
    env = {var: "" if var == "CELERIAC_CONFIG" else "anything"}
    assert load(tmp_path, env) == load(tmp_path)


# --- types -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("worker_concurrency", "4", "expected int | None, got '4'"),
    ("worker_prefetch_multiplier", True, "expected int, got True"),
    ("broker_connection_timeout", "4", "expected float, got '4'"),
    ("task_acks_late", 1, "expected bool, got 1"),
    ("broker_url", 5, "expected str, got 5"),
    ("accept_content", "json", "expected list[str], got 'json'"),
    ("broker_transport_options", ["a"], "expected dict[str, any], got ['a']"),
])
def test_wrong_type_names_path_type_and_value(tmp_path, key, value, expected):
    message = error_of(tmp_path, overrides={key: value})
    assert f"{key} (from App(...) keyword): {expected}" in message


def test_wrong_types_in_a_file_and_nested(tmp_path):
    path = write(tmp_path / "celeriac.toml",
                 'imports = ["a", 3]\nworker_concurrency = "4"\n[sqlite]\nbusy_timeout = "x"\n')
    message = error_of(tmp_path)
    assert f"imports[1] (from {path}): expected str, got 3" in message
    assert f"worker_concurrency (from {path}): expected int | None, got '4'" in message
    assert f"sqlite.busy_timeout (from {path}): expected float, got 'x'" in message


def test_int_accepted_for_float(tmp_path):
    settings = load(tmp_path, overrides={"task_time_limit": 30, "sqlite": {"busy_timeout": 2}})
    assert settings.task_time_limit == 30.0 and isinstance(settings.task_time_limit, float)
    assert isinstance(settings.section("sqlite").busy_timeout, float)


def test_none_in_a_file(tmp_path):
    write(tmp_path / "celeriac.toml",
          'result_expires = "none"\ntask_max_retries = "NULL"\nresult_backend = "none"\n')
    settings = load(tmp_path)
    assert settings.result_expires is None and settings.task_max_retries is None
    assert settings.result_backend == "none"  # a string setting keeps the string


def test_section_value_must_be_a_table(tmp_path):
    message = error_of(tmp_path, overrides={"sqlite": "/x"})
    assert "sqlite (from App(...) keyword): expected a table" in message


def test_required_section_field_is_reported(tmp_path):
    @attrs.define
    class Needy:
        token: str

    message = error_of(tmp_path, sections=[ConfigSection("needy", Needy)])
    assert "needy.token (from defaults): required" in message
    assert load(tmp_path, sections=[ConfigSection("needy", Needy)],
                overrides={"needy": {"token": "t"}}).section("needy").token == "t"


# --- environment conversions -------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
])
def test_environment_booleans(tmp_path, raw, value):
    assert load(tmp_path, {"CELERIAC_TASK_ACKS_LATE": raw}).task_acks_late is value


@pytest.mark.parametrize("raw", ["", "maybe", "2", "t"])
def test_environment_bad_boolean(tmp_path, raw):
    message = error_of(tmp_path, {"CELERIAC_OTHER__ENABLED": raw})
    assert "other.enabled (from environment variable CELERIAC_OTHER__ENABLED): " \
           "expected one of true/false" in message


@pytest.mark.parametrize(("var", "raw", "attr", "value"), [
    ("CELERIAC_WORKER_CONCURRENCY", "8", "worker_concurrency", 8),
    ("CELERIAC_WORKER_CONCURRENCY", "none", "worker_concurrency", None),
    ("CELERIAC_WORKER_CONCURRENCY", "NULL", "worker_concurrency", None),
    ("CELERIAC_WORKER_CONCURRENCY", "", "worker_concurrency", None),
    ("CELERIAC_RESULT_EXPIRES", "3600", "result_expires", 3600.0),
    ("CELERIAC_RESULT_EXPIRES", "0.5", "result_expires", 0.5),
    ("CELERIAC_BROKER_URL", "redis://h:6379/0", "broker_url", "redis://h:6379/0"),
    ("CELERIAC_BROKER_URL", "", "broker_url", ""),
    ("CELERIAC_ACCEPT_CONTENT", '["json","pickle"]', "accept_content", ["json", "pickle"]),
    ("CELERIAC_ACCEPT_CONTENT", "json, pickle", "accept_content", ["json", "pickle"]),
    ("CELERIAC_ACCEPT_CONTENT", "", "accept_content", []),
    ("CELERIAC_WORKER_QUEUES", "a,b", "worker_queues", ["a", "b"]),
    ("CELERIAC_WORKER_QUEUES", "none", "worker_queues", None),
    ("CELERIAC_BROKER_TRANSPORT_OPTIONS", '{"visibility_timeout": 60}',
     "broker_transport_options", {"visibility_timeout": 60}),
    ("CELERIAC_TASK_ROUTES", '{"p.*": {"queue": "m"}}', "task_routes", {"p.*": {"queue": "m"}}),
])
def test_environment_conversions(tmp_path, var, raw, attr, value):
    assert getattr(load(tmp_path, {var: raw}), attr) == value


@pytest.mark.parametrize(("var", "raw", "problem"), [
    ("CELERIAC_WORKER_CONCURRENCY", "four", "expected int, got 'four'"),
    ("CELERIAC_RESULT_EXPIRES", "soon", "expected float, got 'soon'"),
    ("CELERIAC_BROKER_TRANSPORT_OPTIONS", "[1]", "expected a JSON object"),
    ("CELERIAC_BROKER_TRANSPORT_OPTIONS", "{bad", "expected a JSON object"),
    ("CELERIAC_ACCEPT_CONTENT", "[1, 2]", "expected str, got 1"),
    ("CELERIAC_ACCEPT_CONTENT", "[oops", "expected a JSON array"),
])
def test_environment_bad_values(tmp_path, var, raw, problem):
    message = error_of(tmp_path, {var: raw})
    assert f"environment variable {var}" in message and problem in message


def test_environment_section_field(tmp_path):
    settings = load(tmp_path, {"CELERIAC_SQLITE__DIRECTORY": "/srv",
                               "CELERIAC_SQLITE__MODES": "wal,sync"})
    assert settings.section("sqlite").directory == "/srv"
    assert settings.section("sqlite").modes == ["wal", "sync"]


def test_all_problems_of_all_sources_together(tmp_path):
    write(tmp_path / "celeriac.toml", "brokr_url = 'x'\n")
    message = error_of(tmp_path, {"CELERIAC_TASK_ACKS_LATE": "maybe"},
                       overrides={"worker_concurrency": "x"})
    lines = message.splitlines()
    assert lines[0] == "invalid configuration (3 problems):"
    assert [line.split(" ")[2] for line in lines[1:]] == [
        "brokr_url", "task_acks_late", "worker_concurrency"]


# --- sections from plugins ---------------------------------------------------------


class _SectionPlugin:
    def __init__(self, *sections: ConfigSection) -> None:
        self.sections = list(sections)

    @hookimpl
    def celeriac_config_sections(self):
        return self.sections


def test_sections_from_plugins_flattens():
    plugins = Plugins([_SectionPlugin(SECTIONS[0]), _SectionPlugin(SECTIONS[1])],
                      entry_points=False)
    assert sorted(s.name for s in sections_from_plugins(plugins)) == ["other", "sqlite"]


def test_duplicate_section_names_both():
    again = ConfigSection("sqlite", OtherSettings)
    plugins = Plugins([_SectionPlugin(SECTIONS[0]), _SectionPlugin(again)], entry_points=False)
    with pytest.raises(ConfigurationError) as info:
        sections_from_plugins(plugins)
    message = str(info.value)
    assert "[sqlite] is declared twice" in message
    assert "StoreSettings" in message and "OtherSettings" in message


@pytest.mark.parametrize(("name", "problem"), [
    ("broker_url", "name of a kernel setting"),
    ("Bad", "lowercase identifier"),
    ("a__b", "without '__'"),
])
def test_bad_section_names(tmp_path, name, problem):
    assert problem in error_of(tmp_path, sections=[ConfigSection(name, OtherSettings)])


def test_section_class_must_be_attrs(tmp_path):
    assert "not an attrs class" in error_of(tmp_path, sections=[ConfigSection("x", dict)])


# --- the generated reference ----------------------------------------------------------


@pytest.fixture
def all_plugins(monkeypatch):
    """Every installed plugin, whatever the environment restricts."""
    from celeriac import _plugins

    for var in ("CELERIAC_PLUGINS", "CELERIAC_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    _plugins._lifecycle_plugins.cache_clear()
    yield
    _plugins._lifecycle_plugins.cache_clear()


def test_docs_are_up_to_date(all_plugins):
    path = REPO / "docs" / "configuration.md"
    assert configdoc.check(path), "run `uv run python -m celeriac.configdoc`"
    assert configdoc.main(["--check", "--output", str(path)]) == 0


def test_docs_check_fails_on_a_stale_file_and_write_fixes_it(all_plugins, tmp_path, capsys):
    path = write(tmp_path / "configuration.md", "old\n")
    assert configdoc.main(["--check", "--output", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert configdoc.main(["--output", str(path)]) == 0
    assert configdoc.main(["--check", "--output", str(path)]) == 0
    assert not configdoc.check(tmp_path / "missing.md")


def test_docs_list_every_setting_and_section():
    page = configdoc.render(SECTIONS)
    for name in setting_names():
        assert f"| `{name}` |" in page
    assert "### `[sqlite]`" in page and "`CELERIAC_SQLITE__BUSY_TIMEOUT`" in page
    assert "| `busy_timeout` | `float` | `5.0` |" in page
    assert "No installed plugin" in configdoc.render([])


def test_docs_example_file_loads(tmp_path):
    write(tmp_path / "celeriac.toml", configdoc.EXAMPLE_TOML)
    settings = load(tmp_path)
    assert settings.result_expires is None
    assert settings.task_routes["proj.math.*"] == {"queue": "math"}
