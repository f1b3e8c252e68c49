"""Tests under green/ need a gevent-patched process: test_gevent.py runs them in one."""

import pytest
from celeriac.testing.patched import pool_is_patched

pytest.register_assert_rewrite("celeriac.testing.contracts.green")

collect_ignore = [] if pool_is_patched("gevent") else ["green"]
