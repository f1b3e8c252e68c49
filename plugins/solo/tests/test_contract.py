"""The solo pool passes the pool contract."""

from celeriac.testing.contracts import PoolContract


class TestSoloPool(PoolContract):
    pool_name = "solo"
    concurrency = 1
