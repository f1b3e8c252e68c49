"""Plugin discovery and loading, the hook calling rules, and the plugin switches."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from celeriac import _plugins, hookspecs
from celeriac.exceptions import PluginLoadError, PluginNotFound
from celeriac.plugin import TransportPlugin, hookimpl
from celeriac.testing.worker import start_worker

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {
    ("transport", "sqlite"): "celeriac-sqlite",
    ("backend", "sqlite"): "celeriac-sqlite",
    ("transport", "memory"): "celeriac-memory",
    ("backend", "memory"): "celeriac-memory",
    ("serializer", "json"): "celeriac-json",
    ("pool", "solo"): "celeriac-solo",
    ("pool", "threads"): "celeriac-threads",
}


# -- a fake installed distribution ---------------------------------------------------


@pytest.fixture
def install_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugin_caches: None) -> Any:
    """``install_fake(entry_points_txt)``: put a distribution
    ``fake-celeriac-plugin 1.2.3`` declaring those entry points on ``sys.path``.

    stevedore keeps entry points in two caches: per namespace for the life of
    the process (``ExtensionManager.ENTRY_POINT_CACHE``), and per ``sys.path``
    in memory and on disk (``~/.cache/python-entrypoints``). The test gets
    empty ones, written nowhere, so nothing it installs leaks to other tests.
    """
    import stevedore._cache
    from stevedore.extension import ExtensionManager

    cache = stevedore._cache.Cache(str(tmp_path / "stevedore-cache"))
    cache._disable_caching = True
    monkeypatch.setattr(stevedore._cache, "get_group_all", cache.get_group_all)
    monkeypatch.setattr(stevedore._cache, "get_group_named", cache.get_group_named)
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})

    def install(entry_points: str) -> Path:
        root = tmp_path / "site"
        info = root / "fake_celeriac_plugin-1.2.3.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: fake-celeriac-plugin\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(entry_points)
        monkeypatch.syspath_prepend(str(root))
        return root

    return install


# -- drivers -------------------------------------------------------------------------


def test_unknown_driver_lists_installed_choices_and_suggests_the_closest():
    with pytest.raises(PluginNotFound) as caught:
        _plugins.load_driver("transport", "sqlit")
    message = str(caught.value)
    assert "'sqlit'" in message
    assert "celeriac.transports" in message
    assert "'memory'" in message and "'sqlite'" in message, "installed choices are listed"
    assert "Did you mean 'sqlite'?" in message


def test_unknown_broker_scheme_in_an_app_raises_plugin_not_found(make_app):
    app = make_app(broker_url="sqlit:///tmp/x.db")
    with pytest.raises(PluginNotFound, match="Did you mean 'sqlite'"):
        _ = app.transport


def test_a_known_driver_is_its_registration_record():
    record = _plugins.load_driver("transport", "memory")
    assert isinstance(record, TransportPlugin)
    assert record.name == "memory"
    assert _plugins.load_driver("transport", "memory") is record, "loaded once per process"


def test_a_plugin_that_fails_to_import_raises_plugin_load_error_naming_the_entry_point(install_fake):
    install_fake("[celeriac.transports]\nbroken = no_such_module_xyz:transport\n")
    assert "broken" in _plugins.driver_names("transport")
    with pytest.raises(PluginLoadError) as caught:
        _plugins.load_driver("transport", "broken")
    message = str(caught.value)
    assert "'broken'" in message
    assert "no_such_module_xyz:transport" in message
    assert "ModuleNotFoundError" in message


def test_an_entry_point_pointing_at_the_wrong_type_raises_plugin_load_error(install_fake):
    install_fake("[celeriac.transports]\nwrongtype = json:dumps\n")
    with pytest.raises(PluginLoadError) as caught:
        _plugins.load_driver("transport", "wrongtype")
    message = str(caught.value)
    assert "'wrongtype'" in message
    assert "function" in message
    assert "celeriac.plugin.TransportPlugin" in message


@pytest.mark.parametrize("line", ["broken = no_such_module_xyz:transport", "broken = json:dumps"])
def test_a_broken_driver_is_reported_with_its_distribution_and_version(install_fake, line):
    install_fake(f"[celeriac.transports]\n{line}\n")
    with pytest.raises(PluginLoadError) as caught:
        _plugins.load_driver("transport", "broken")
    assert "fake-celeriac-plugin 1.2.3" in str(caught.value)


def test_a_lifecycle_plugin_that_fails_to_import_names_its_distribution(install_fake, make_app):
    install_fake("[celeriac.plugins]\nbrokenlife = no_such_module_xyz\n")
    app = make_app()
    with pytest.raises(PluginLoadError) as caught:
        _ = app.plugins
    message = str(caught.value)
    assert "'brokenlife'" in message
    assert "fake-celeriac-plugin 1.2.3" in message


def test_a_disabled_broken_lifecycle_plugin_is_never_imported(install_fake, make_app, monkeypatch):
    install_fake("[celeriac.plugins]\nbrokenlife = no_such_module_xyz\n")
    monkeypatch.setenv("CELERIAC_DISABLE_PLUGINS", "brokenlife")
    app = make_app()
    assert "brokenlife" not in app.plugins.names()
    assert "sqlite" in app.plugins.names()


def test_an_unused_broken_driver_does_not_break_the_app(install_fake, make_app):
    install_fake("[celeriac.transports]\nbroken = no_such_module_xyz:transport\n")
    app = make_app()
    assert app.transport.name == "memory"


# -- lifecycle plugins and hooks -----------------------------------------------------


class Misspelled:
    @hookimpl
    def celeriac_task_sucess(self, task, request, retval):
        pass


class WrongArgument:
    @hookimpl
    def celeriac_task_success(self, task, req):
        pass


def test_a_misspelled_hook_fails_at_app_plugin_setup(make_app):
    app = make_app(plugins=[Misspelled()])
    with pytest.raises(PluginLoadError, match="celeriac_task_sucess"):
        _ = app.plugins


def test_a_misspelled_hook_stops_the_app_before_any_task_is_sent(make_app):
    app = make_app(plugins=[Misspelled()])

    @app.task
    def add(x, y):
        return x + y

    with pytest.raises(PluginLoadError):
        add.delay(1, 2)


def test_a_hook_implementation_with_a_wrong_argument_name_raises_plugin_load_error(make_app):
    app = make_app(plugins=[WrongArgument()])
    with pytest.raises(PluginLoadError, match="req"):
        _ = app.plugins


class Recorder:
    """Records the hooks it sees; ``fail`` names hooks that raise."""

    def __init__(self, *fail: str) -> None:
        self.fail = set(fail)
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _seen(self, name: str, value: Any = None) -> None:
        with self.lock:
            self.calls.append((name, value))
        if name in self.fail:
            raise RuntimeError(f"{name} exploded")

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    @hookimpl
    def celeriac_before_publish(self, app, message, exchange, routing_key):
        self._seen("celeriac_before_publish", message.id)

    @hookimpl
    def celeriac_after_publish(self, message):
        self._seen("celeriac_after_publish", message.id)

    @hookimpl
    def celeriac_task_prerun(self, task, request):
        self._seen("celeriac_task_prerun", request.id)

    @hookimpl
    def celeriac_task_success(self, task, request, retval):
        self._seen("celeriac_task_success", retval)

    @hookimpl
    def celeriac_task_postrun(self, task, request, retval, state):
        self._seen("celeriac_task_postrun", state)


def test_an_exception_in_an_observer_hook_is_logged_and_the_task_still_succeeds(make_app, caplog):
    recorder = Recorder("celeriac_task_success")
    other = Recorder()
    app = make_app(plugins=[recorder, other])

    @app.task
    def add(x, y):
        return x + y

    caplog.set_level(logging.ERROR, logger="celeriac.plugins")
    with start_worker(app, pool="solo", concurrency=1):
        result = add.delay(2, 3)
        assert result.get(timeout=30) == 5
    assert result.state == "SUCCESS"
    assert ("celeriac_task_success", 5) in other.calls, "the other plugins are still called"
    assert ("celeriac_task_postrun", "SUCCESS") in recorder.calls, "later hooks still run"
    failures = [r for r in caplog.records if "celeriac_task_success" in r.getMessage()]
    assert failures, "the failing hook is logged"
    assert failures[0].exc_info is not None and "exploded" in str(failures[0].exc_info[1])


def test_an_exception_in_before_publish_propagates_and_nothing_is_sent(make_app, memory_url):
    from celeriac_memory.transport import broker

    recorder = Recorder("celeriac_before_publish")
    app = make_app(plugins=[recorder])

    @app.task
    def add(x, y):
        return x + y

    with pytest.raises(RuntimeError, match="celeriac_before_publish exploded"):
        add.delay(2, 3)
    assert "celeriac_after_publish" not in recorder.names()
    assert broker(memory_url.split("://", 1)[1]).size("celery") == 0


def test_publish_hooks_see_the_message_in_order(make_app):
    recorder = Recorder()
    app = make_app(plugins=[recorder])

    @app.task
    def add(x, y):
        return x + y

    result = add.delay(2, 3)
    assert recorder.calls == [("celeriac_before_publish", result.id),
                              ("celeriac_after_publish", result.id)]


def test_before_publish_may_add_extra_headers(make_app):
    class Stamp:
        @hookimpl
        def celeriac_before_publish(self, message):
            message.headers.extra["x-tenant"] = "acme"

    app = make_app(plugins=[Stamp()])

    @app.task(bind=True)
    def tenant(self):
        return self.request.headers.get("x-tenant")

    with start_worker(app, pool="solo", concurrency=1):
        assert tenant.delay().get(timeout=30) == "acme"


# -- the hook specifications and their documentation ---------------------------------


def _hook_specs() -> dict[str, Any]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("celeriac_") and callable(fn) and hasattr(fn, "celeriac_spec")}


def test_every_hook_has_a_docstring():
    specs = _hook_specs()
    assert len(specs) >= 15
    undocumented = [name for name, fn in specs.items() if not inspect.getdoc(fn)]
    assert not undocumented


def test_propagating_hooks_are_hooks():
    assert set(_hook_specs()) >= hookspecs.PROPAGATING


def test_every_propagating_hook_says_so_in_its_docstring():
    specs = _hook_specs()
    silent = [name for name in sorted(hookspecs.PROPAGATING)
              if "propagate" not in inspect.getdoc(specs[name]).lower()]
    assert not silent


def test_every_hook_is_named_in_the_plugin_guide():
    guide = REPO / "docs" / "plugins.md"
    if not guide.exists():
        pytest.skip("docs/plugins.md is not written yet")
    text = guide.read_text(encoding="utf-8")
    missing = [name for name in _hook_specs() if name not in text]
    assert not missing


# -- environment switches ------------------------------------------------------------


def test_empty_celeriac_plugins_loads_no_lifecycle_plugin(monkeypatch, fresh_plugin_caches):
    monkeypatch.setenv("CELERIAC_PLUGINS", "")
    assert _plugins._lifecycle_plugins() == ()
    extra = Recorder()
    manager = _plugins.Plugins([extra])
    assert [manager.pm.get_plugin(name) for name in manager.names()] == [extra]


def test_celeriac_plugins_keeps_only_the_named_lifecycle_plugins(monkeypatch, fresh_plugin_caches):
    monkeypatch.setenv("CELERIAC_PLUGINS", "sqlite, not-installed")
    assert [name for name, _ in _plugins._lifecycle_plugins()] == ["sqlite"]


def test_celeriac_disable_plugins_skips_the_named_ones(monkeypatch, fresh_plugin_caches):
    monkeypatch.setenv("CELERIAC_DISABLE_PLUGINS", "sqlite")
    assert "sqlite" not in [name for name, _ in _plugins._lifecycle_plugins()]


def test_celeriac_trace_plugins_logs_each_entry_point_with_its_distribution(
        monkeypatch, fresh_plugin_caches, caplog):
    monkeypatch.setenv("CELERIAC_TRACE_PLUGINS", "1")
    caplog.set_level(logging.WARNING, logger="celeriac.plugins")
    _plugins._lifecycle_plugins()
    _plugins.load_driver("pool", "solo")
    messages = [r.getMessage() for r in caplog.records if r.name == "celeriac.plugins"]
    assert any("'sqlite'" in m and "celeriac-sqlite" in m for m in messages), messages
    assert any("'solo'" in m and "celeriac.pools" in m for m in messages), messages


# -- celeriac plugins --json -----------------------------------------------------------


def test_plugins_json_lists_first_party_plugins_with_distribution_and_version():
    from celeriac.cli import build_cli
    from click.testing import CliRunner

    result = CliRunner().invoke(build_cli(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    found = {(row["role"], row["name"]): row for row in rows}
    for key, distribution in FIRST_PARTY.items():
        assert key in found, f"{key} is listed"
        row = found[key]
        assert row["distribution"] == distribution
        assert row["version"] == importlib.metadata.version(distribution)
        assert "error" not in row, row
        assert row["provides"]
    assert found[("plugin", "sqlite")]["distribution"] == "celeriac-sqlite"


def test_plugins_hooks_lists_the_hooks_a_lifecycle_plugin_implements():
    from celeriac.cli import build_cli
    from click.testing import CliRunner

    result = CliRunner().invoke(build_cli(), ["plugins", "--json", "--hooks"])
    assert result.exit_code == 0, result.output
    rows = {(row["role"], row["name"]): row for row in json.loads(result.stdout)}
    assert "celeriac_config_sections" in rows[("plugin", "sqlite")]["hooks"]
