"""The gevent pool passes the pool contract and the green-pool one (in a gevent-patched process)."""

from celeriac.testing.contracts import PoolContract
from celeriac.testing.contracts.green import GreenPoolContract


class TestGeventPool(PoolContract):
    pool_name = "gevent"
    concurrency = 3


class TestGeventGreenPool(GreenPoolContract):
    pool_name = "gevent"
