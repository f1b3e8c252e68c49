"""celeriac.patching: finding the pool on the command line and running its patch early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celeriac import patching
from celeriac.exceptions import PluginLoadError, PluginNotFound
from celeriac.plugin import PoolPlugin


@pytest.mark.parametrize("args", [
    ["worker", "-P", "green"],
    ["worker", "-Pgreen"],
    ["worker", "--pool", "green"],
    ["worker", "--pool=green"],
    ["-A", "proj", "worker", "-c", "4", "-P", "green", "-l", "INFO"],
    ["--app=proj", "worker", "-P", "threads", "--pool", "green"],  # the last one wins
    ["--config", "c.toml", "worker", "-P", "green"],
])
def test_the_pool_option_in_every_spelling(args: list[str], tmp_path: Path) -> None:
    assert patching.pool_of_command_line(args, environ={}, cwd=tmp_path) == "green"


@pytest.mark.parametrize("args", [
    ["call", "proj.add", "-P", "green"],
    ["-A", "worker", "call", "x"],  # "worker" is the value of -A here
    ["--help"],
    [],
    ["worker", "--", "-P", "green"],
])
def test_no_pool_unless_the_command_is_worker(args: list[str], tmp_path: Path) -> None:
    assert patching.pool_of_command_line(args, environ={}, cwd=tmp_path) is None


def test_the_environment_comes_after_the_option(tmp_path: Path) -> None:
    environ = {"CELERIAC_WORKER_POOL": "from-env"}
    assert patching.pool_of_command_line(["worker"], environ=environ, cwd=tmp_path) == "from-env"
    assert patching.pool_of_command_line(["worker", "-P", "x"], environ=environ, cwd=tmp_path) == "x"


def test_the_configuration_file_comes_last(tmp_path: Path) -> None:
    (tmp_path / "given.toml").write_text('worker_pool = "from-file"\n')
    args = ["--config", str(tmp_path / "given.toml"), "worker"]
    assert patching.pool_of_command_line(args, environ={}, cwd=tmp_path) == "from-file"
    after = ["worker", f"--config={tmp_path / 'given.toml'}"]
    assert patching.pool_of_command_line(after, environ={}, cwd=tmp_path) == "from-file"
    environ = {"CELERIAC_WORKER_POOL": "from-env"}
    assert patching.pool_of_command_line(args, environ=environ, cwd=tmp_path) == "from-env"


def test_the_configuration_file_is_found_as_the_app_finds_it(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.celeriac]\nworker_pool = "from-pyproject"\n')
    assert patching.pool_of_command_line(["worker"], environ={}, cwd=tmp_path) == "from-pyproject"
    (tmp_path / "celeriac.toml").write_text('worker_pool = "from-celeriac-toml"\n')
    assert patching.pool_of_command_line(["worker"], environ={}, cwd=tmp_path) == \
        "from-celeriac-toml"
    (tmp_path / "env.toml").write_text('worker_pool = "from-celeriac-config"\n')
    environ = {"CELERIAC_CONFIG": str(tmp_path / "env.toml")}
    assert patching.pool_of_command_line(["worker"], environ=environ, cwd=tmp_path) == \
        "from-celeriac-config"


def test_an_unreadable_configuration_file_is_left_to_the_app(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("worker_pool = [unclosed\n")
    for config in (tmp_path / "bad.toml", tmp_path / "missing.toml"):
        args = ["--config", str(config), "worker"]
        assert patching.pool_of_command_line(args, environ={}, cwd=tmp_path) is None


# -- running a pool's patch -------------------------------------------------------------


class FakeEntryPoint:
    def __init__(self, record: Any) -> None:
        self.value = "fake_module:record"
        self.dist = None
        self._record = record

    def load(self) -> Any:
        if isinstance(self._record, BaseException):
            raise self._record
        return self._record


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Pool entry points as patching.patch_pool sees them: ``installed[name] = [records]``."""
    import importlib_metadata

    pools: dict[str, list[Any]] = {}

    def entry_points(*, group: str, name: str) -> list[FakeEntryPoint]:
        assert group == "celeriac.pools"
        return [FakeEntryPoint(record) for record in pools.get(name, [])]

    monkeypatch.setattr(importlib_metadata, "entry_points", entry_points)
    monkeypatch.setattr(patching, "_patched", [])
    return pools


def test_patch_pool_runs_the_patch_once(installed: dict[str, list[Any]]) -> None:
    calls = []
    installed["green"] = [PoolPlugin("green", "x:Pool", patch=lambda: calls.append(1))]
    assert patching.patch_pool("green") is True
    assert patching.patch_pool("green") is True
    assert calls == [1]
    assert patching.patched_pools() == ["green"]


def test_a_pool_without_patch_needs_none(installed: dict[str, list[Any]]) -> None:
    installed["plain"] = [PoolPlugin("plain", "x:Pool")]
    assert patching.patch_pool("plain") is False
    assert patching.patched_pools() == []


def test_missing_duplicate_or_broken_pools(installed: dict[str, list[Any]]) -> None:
    installed["twice"] = [PoolPlugin("twice", "x:A"), PoolPlugin("twice", "y:B")]
    installed["broken"] = [ImportError("no module named gevnt")]
    installed["odd"] = [object()]
    with pytest.raises(PluginNotFound, match="No pool named 'absent'"):
        patching.patch_pool("absent")
    with pytest.raises(PluginNotFound, match="More than one pool named 'twice'"):
        patching.patch_pool("twice")
    with pytest.raises(PluginLoadError, match="gevnt"):
        patching.patch_pool("broken")
    with pytest.raises(PluginLoadError, match="not a celeriac.plugin.PoolPlugin"):
        patching.patch_pool("odd")
    for name in ("absent", "twice", "broken", "odd"):
        assert patching.patch_pool(name, missing_ok=True) is False


def test_a_failing_patch_says_which_pool(installed: dict[str, list[Any]]) -> None:
    def explode() -> None:
        raise RuntimeError("cannot patch")

    installed["green"] = [PoolPlugin("green", "x:Pool", patch=explode)]
    with pytest.raises(PluginLoadError, match="The green pool .* could not patch .*cannot patch"):
        patching.patch_pool("green")
    assert patching.patched_pools() == []


def test_the_command_line_patches_or_exits_with_the_plugin_error_code(
        installed: dict[str, list[Any]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERIAC_WORKER_POOL", raising=False)
    monkeypatch.delenv("CELERIAC_CONFIG", raising=False)
    calls = []
    installed["green"] = [PoolPlugin("green", "x:Pool", patch=lambda: calls.append(1))]
    installed["plain"] = [PoolPlugin("plain", "x:Pool")]
    assert patching.patch_for_command_line(["worker", "-P", "green"]) == "green"
    assert patching.patch_for_command_line(["worker", "-P", "plain"]) is None
    assert patching.patch_for_command_line(["worker", "-P", "absent"]) is None
    assert calls == [1]

    def explode() -> None:
        raise RuntimeError("cannot patch")

    installed["bad"] = [PoolPlugin("bad", "x:Pool", patch=explode)]
    with pytest.raises(SystemExit) as exit_info:
        patching.patch_for_command_line(["worker", "-P", "bad"])
    assert exit_info.value.code == 78
    assert "could not patch" in capsys.readouterr().err


def test_cli_main_patches_only_as_the_process_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(patching, "patch_for_command_line", lambda args: seen.append(list(args)))
    monkeypatch.setattr(sys, "argv", ["celeriac", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert seen == [["--version"]]


def test_importing_the_module_stays_light() -> None:
    code = ("import sys, celeriac.patching\n"
            "print(sorted(m for m in ('kombu', 'click', 'cattrs', 'celeriac.app', 'celeriac.cli')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- tests in a patched child process ---------------------------------------------------


def test_a_patched_run_fails_when_the_child_fails_or_runs_nothing(tmp_path: Path) -> None:
    pytest.importorskip("celeriac_gevent")
    from celeriac.testing.patched import run_patched_pytest

    passing, failing, empty, skipping = (
        tmp_path / name for name in ("passing", "failing", "empty", "skipping"))
    for folder in (passing, failing, empty, skipping):
        folder.mkdir()
    (passing / "test_ok.py").write_text(
        "from celeriac.testing.patched import pool_is_patched\n"
        "def test_patched():\n    assert pool_is_patched('gevent')\n")
    (failing / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    (skipping / "test_skip.py").write_text(
        "import pytest\ndef test_skipped():\n    pytest.skip('nothing to do')\n")
    run = run_patched_pytest("gevent", [str(passing)], tmp_path)
    assert (run.passed, run.skipped) == (1, 0)
    with pytest.raises(AssertionError, match="exited with 1"):
        run_patched_pytest("gevent", [str(failing)], tmp_path)
    with pytest.raises(AssertionError, match="exited with 5"):
        run_patched_pytest("gevent", [str(empty)], tmp_path)
    with pytest.raises(AssertionError, match="0 passed"):
        run_patched_pytest("gevent", [str(skipping)], tmp_path)
