"""Every automated job. Run through ``python dev.py nox -s <session>`` or ``uv run nox``.

Sessions run in the workspace environment that ``uv sync --all-packages``
builds (``.venv``), so the in-tree plugins resolve from the checkout.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests", "lint", "types", "docs"]

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, in parallel (what CI runs)."""
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def kernel(session: nox.Session) -> None:
    """Kernel tests alone (no end-to-end process tests)."""
    session.run("pytest", "tests", "--ignore=tests/e2e", "-n", "auto", *session.posargs)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin's own tests (e.g. ``nox -s "plugin(plugin='sqlite')"``)."""
    session.run("pytest", f"plugins/{plugin}", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "core", "plugins", "tests", "bench", "examples", "noxfile.py", "dev.py")


@nox.session
def types(session: nox.Session) -> None:
    """mypy on the kernel."""
    session.run("mypy", "core/celeriac")


@nox.session
def docs(session: nox.Session) -> None:
    """The configuration reference must match the settings classes."""
    session.run("python", "-m", "celeriac.configdoc", "--check")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with Celery (and Dramatiq on Redis and RabbitMQ; prints
    tables; takes minutes)."""
    session.run("python", "bench/sqlite_bench.py", *session.posargs)
    session.run("python", "bench/redis_bench.py", "--rabbitmq", *session.posargs)
    session.run("python", "bench/asyncio_bench.py")
    session.run("python", "bench/canvas_bench.py")


@nox.session
def soak(session: nox.Session) -> None:
    """Longer runs of the process tests, repeated to catch rare races."""
    for _ in range(5):
        session.run("pytest", "tests/e2e", "plugins/sqlite", "-n", "2", *session.posargs)


@nox.session(name="chord-kill")
def chord_kill(session: nox.Session) -> None:
    """The kill -9 chord test, 20 times in a row on SQLite and Redis (minutes)."""
    session.env["CELERIAC_CHORD_KILL_REPEAT"] = "20"
    session.run("pytest", "tests/e2e/test_chord_kill.py", "-n", "2", *session.posargs)
