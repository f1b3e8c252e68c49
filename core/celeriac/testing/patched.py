"""Run tests in a child process patched for a pool (gevent, eventlet).

Monkey-patching cannot be undone, and done in a shared pytest process it
would change every other test. A green pool's own tests (its pool contract
suite among them) therefore run in a pytest of their own, started with the
pool's patch (:attr:`celeriac.plugin.PoolPlugin.patch`) applied before pytest
imports anything::

    # tests/test_patched.py of the plugin
    from pathlib import Path
    from celeriac.testing.patched import run_patched_pytest

    def test_green_suite(tmp_path):
        run_patched_pytest("mygreen", [str(Path(__file__).parent / "green")], tmp_path)

and, so that the outer run does not collect those tests unpatched::

    # tests/conftest.py of the plugin
    from celeriac.testing.patched import pool_is_patched
    collect_ignore = [] if pool_is_patched("mygreen") else ["green"]

The outer test fails when the inner run fails, errors, or runs no test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["PatchedRun", "pool_is_patched", "run_patched_pytest"]

_CHILD = """\
import sys
from celeriac.patching import patch_pool
if not patch_pool(sys.argv[1]):
    sys.exit(f"the pool {sys.argv[1]!r} has no patch to apply")
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def pool_is_patched(pool: str) -> bool:
    """Whether this process ran ``pool``'s patch (through :mod:`celeriac.patching`)."""
    from celeriac.patching import patched_pools

    return pool in patched_pools()


@attrs.frozen
class PatchedRun:
    """What the child pytest reported."""

    passed: int
    skipped: int
    output: str
    skip_reasons: tuple[str, ...] = ()


def run_patched_pytest(pool: str, args: Sequence[str], workdir: Path, *,
                       timeout: float = 600.0, allow_skips: bool = True) -> PatchedRun:
    """Run ``pytest <args>`` in a child process patched for ``pool``.

    Raises :class:`AssertionError` (with the child's output) when the child
    exits non-zero, reports a failure or an error, runs no test, or, unless
    ``allow_skips``, skips one. ``workdir`` receives the JUnit report.
    """
    junit = Path(workdir) / f"patched-{pool}.xml"
    command = [sys.executable, "-c", _CHILD, pool, *args, "-q", "-p", "no:cacheprovider",
               "--import-mode=importlib", "-W", "ignore::pytest.PytestAssertRewriteWarning",
               f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_CORE_"))}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not junit.exists():
        raise AssertionError(
            f"pytest patched for {pool} exited with {proc.returncode}:\n{output[-20000:]}")
    suite = ElementTree.parse(junit).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    reasons = tuple(element.get("message", "") for element in suite.iter("skipped"))
    passed = total - failed - len(reasons)
    if failed or passed <= 0:
        raise AssertionError(f"pytest patched for {pool}: {passed} passed, {failed} failed or "
                             f"errors, {len(reasons)} skipped:\n{output[-20000:]}")
    if reasons and not allow_skips:
        raise AssertionError(f"pytest patched for {pool} skipped tests: {list(reasons)}\n"
                             f"{output[-20000:]}")
    return PatchedRun(passed=passed, skipped=len(reasons), output=output, skip_reasons=reasons)
