"""Registration records, the [sqlite] section and file locations."""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

import kombu
import pytest
from celeriac.config import Settings
from celeriac.plugin import BackendPlugin, ConfigSection, TransportPlugin, resolve
from celeriac_sqlite import plugin
from celeriac_sqlite.plugin import SQLiteSettings, prepare_broker, results_url_for_broker


def conf(**section) -> Settings:
    settings = Settings()
    settings.sections["sqlite"] = SQLiteSettings(**section)
    return settings


def test_entry_points_name_the_records():
    groups = {"celeriac.transports": plugin.transport, "celeriac.backends": plugin.backend}
    for group, record in groups.items():
        [ep] = [ep for ep in entry_points(group=group) if ep.name == "sqlite"]
        assert ep.load() is record
    [ep] = [ep for ep in entry_points(group="celeriac.plugins") if ep.name == "sqlite"]
    assert ep.load() is plugin


def test_records_declare_what_the_transport_does():
    assert isinstance(plugin.transport, TransportPlugin)
    assert (plugin.transport.native_delay, plugin.transport.broadcast, plugin.transport.leases,
            plugin.transport.delivery_count) == (True, True, True, True)
    assert plugin.transport.priorities == "higher-first"
    assert isinstance(plugin.backend, BackendPlugin)
    assert resolve(plugin.backend.backend_class).__name__ == "SQLiteBackend"
    assert resolve(plugin.transport.kombu_transport).__name__ == "Transport"


def test_importing_the_plugin_module_does_not_import_kombu():
    import subprocess

    code = ("import sys, celeriac_sqlite.plugin; "
            "print(any(m == 'kombu' or m.startswith('kombu.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_section_is_documented():
    [section] = plugin.celeriac_config_sections()
    assert isinstance(section, ConfigSection) and section.name == "sqlite"
    import attrs

    for field in attrs.fields(SQLiteSettings):
        assert field.metadata.get("doc"), field.name
    with pytest.raises(ValueError):
        SQLiteSettings(durability="sometimes")


def test_bare_url_uses_the_directory_setting_per_app(tmp_path):
    target = prepare_broker("sqlite://", conf(directory=str(tmp_path)), "proj")
    path = tmp_path / "proj" / "broker.sqlite3"
    assert target.display == str(path)
    assert target.url == f"sqlite:///{path}"
    assert path.parent.is_dir()
    other = prepare_broker("sqlite://", conf(directory=str(tmp_path)), None)
    assert other.display == str(tmp_path / "default" / "broker.sqlite3")


def test_bare_url_defaults_to_the_user_data_directory(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_data_dir", lambda name: str(tmp_path / name))
    target = prepare_broker("sqlite://", Settings(), "my/app")
    assert target.display == str(tmp_path / "celeriac" / "my_app" / "broker.sqlite3")


def test_absolute_and_relative_paths(tmp_path, monkeypatch):
    absolute = prepare_broker(f"sqlite:///{tmp_path}/a/b.db", Settings(), "x")
    assert absolute.display == str(tmp_path / "a" / "b.db")
    assert (tmp_path / "a").is_dir()
    monkeypatch.chdir(tmp_path)
    relative = prepare_broker("sqlite:///rel/c.db", Settings(), "x")
    assert relative.display == str(tmp_path / "rel" / "c.db")
    assert relative.url == f"sqlite:///{tmp_path}/rel/c.db"
    with pytest.raises(ValueError):
        prepare_broker("sqlite://host/x.db", Settings(), "x")


def test_transport_options_come_from_the_section():
    target = prepare_broker("sqlite:////tmp/celeriac-test-unused.db",
                            conf(visibility_timeout=9, durability="full"), "x")
    assert target.transport_options["visibility_timeout"] == 9
    assert target.transport_options["durability"] == "full"


def test_user_transport_options_override_the_section(tmp_path):
    target = prepare_broker(f"sqlite:///{tmp_path}/b.db", conf(visibility_timeout=30), "x")
    # As the kernel merges them: the user's broker_transport_options win.
    options = {**target.transport_options, **{"visibility_timeout": 5}}
    conn = kombu.Connection(target.url, transport=resolve(plugin.transport.kombu_transport),
                            transport_options=options)
    try:
        assert conn.default_channel.visibility_timeout == 5
        assert conn.transport.path == str(tmp_path / "b.db")
    finally:
        conn.close()


@pytest.mark.parametrize(("broker", "results"), [
    ("sqlite://", "sqlite://"),
    ("sqlite:////data/app/broker.sqlite3", "sqlite:////data/app/results.sqlite3"),
    ("sqlite:////data/foo.db", "sqlite:////data/foo.results.db"),
    ("sqlite:///rel/queue", "sqlite:///rel/queue.results"),
])
def test_results_file_sits_beside_the_broker_file(broker, results):
    assert results_url_for_broker(broker) == results


def test_network_filesystem_warning(tmp_path, monkeypatch, caplog):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {tmp_path} nfs4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(mounts if path == "/proc/mounts" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(plugin, "_CHECKED_PATHS", set())
    with caplog.at_level("WARNING"):
        plugin.warn_if_network_filesystem(str(tmp_path / "broker.sqlite3"))
    assert "network file system" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        plugin.warn_if_network_filesystem(os.path.join("/", "elsewhere", "b.db"))
    assert caplog.text == ""
