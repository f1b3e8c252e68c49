"""Tests under green/ need a eventlet-patched process: test_eventlet.py runs them in one."""

import pytest
from celeriac.testing.patched import pool_is_patched

pytest.register_assert_rewrite("celeriac.testing.contracts.green")

collect_ignore = [] if pool_is_patched("eventlet") else ["green"]
