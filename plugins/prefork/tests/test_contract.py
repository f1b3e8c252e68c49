"""The prefork pool passes the pool contract.

Jobs run in child processes, so the tests whose jobs share threading events
with the test are skipped; ``test_pool.py`` covers the same rules with jobs
that meet the test through files.
"""

from celeriac.testing.contracts import PoolContract


class TestPreforkPool(PoolContract):
    pool_name = "prefork"
    concurrency = 2
    lacks = frozenset({"in_process"})
