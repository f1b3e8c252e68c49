"""The gevent plugin seen from an ordinary (unpatched) test process.

Its pool tests, the pool contract among them, need a gevent-patched process:
they live in ``green/`` and run in a child pytest patched first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celeriac._plugins import load_driver
from celeriac.testing.patched import run_patched_pytest

HERE = Path(__file__).parent


def test_the_record_names_the_pool_and_its_patch():
    record = load_driver("pool", "gevent")
    assert record.pool_class == "celeriac_gevent._pool:GeventPool"
    assert record.patch == "celeriac_gevent:patch"


def test_reading_the_record_imports_neither_gevent_nor_kombu():
    code = ("import sys, celeriac_gevent\n"
            "print(sorted(m for m in ('gevent', 'kombu', 'socket') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "gevent" not in out.stdout and "kombu" not in out.stdout


def test_the_pool_tests_pass_in_a_patched_process(tmp_path):
    run = run_patched_pytest("gevent", [str(HERE / "green")], tmp_path)
    # Only the contract's test for inline pools may be skipped.
    assert all("is not inline" in reason for reason in run.skip_reasons), run.skip_reasons
    assert run.passed >= 20, run.output
