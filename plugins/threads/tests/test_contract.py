"""The threads pool passes the pool contract."""

from celeriac.testing.contracts import PoolContract


class TestThreadPool(PoolContract):
    pool_name = "threads"
    concurrency = 3
