"""``import celeriac`` stays cheap: no plugin, no broker library, no plugin
machinery is imported until used (checked with ``python -X importtime`` in a
fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

PLUGIN_PREFIX = "celeriac_"
HEAVY = ("kombu", "stevedore", "pluggy", "cattrs")


def imported_modules(code: str) -> set[str]:
    """Every module a fresh interpreter has imported after running ``code``.

    ``-X importtime`` logs only ``import`` statements, not
    ``importlib.import_module`` (which is how entry points are loaded), so
    the interpreter also prints its ``sys.modules`` at the end.
    """
    script = f"{code}\nimport sys as _s\nprint('\\n'.join(sorted(_s.modules)))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    with tempfile.TemporaryDirectory() as cwd:  # no celeriac.toml to discover
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", script], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    logged = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        name = line.rsplit("|", 1)[1].strip()
        if name != "imported package":  # the header line
            logged.add(name)
    assert logged, f"no -X importtime output:\n{done.stderr[:2000]}"
    return logged | set(done.stdout.split())


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_import_celeriac_imports_no_plugin_and_no_heavy_library():
    names = imported_modules("import celeriac")
    assert "celeriac" in names
    assert not [n for n in names if n.startswith(PLUGIN_PREFIX)]
    assert not [n for n in names if _top(n) in HEAVY]


@pytest.mark.parametrize("code", [
    "import celeriac; celeriac.App",
    "import celeriac; app = celeriac.App('x', broker='memory://'); app.task(lambda: 1)",
    "from celeriac import App, Task, AsyncResult, signature",
])
def test_the_app_and_tasks_import_no_plugin_no_broker_library(code):
    names = imported_modules(code)
    assert not [n for n in names if n.startswith(PLUGIN_PREFIX)]
    assert not [n for n in names if _top(n) in ("kombu", "stevedore")]


def test_choosing_a_driver_imports_its_record_not_its_implementation():
    code = ("import celeriac; app = celeriac.App('x', broker='memory://imp', backend='memory://imp');"
            "app.transport")
    names = imported_modules(code)
    assert "celeriac_memory.plugin" in names
    assert "celeriac_memory.transport" not in names, "the kombu transport is named by path"
    unused = [n for n in names if _top(n) in ("celeriac_solo", "celeriac_threads")
              or n in ("celeriac_sqlite.transport", "celeriac_sqlite.backend")]
    assert not unused, "drivers that are not configured are not imported"
