"""The eventlet pool passes the pool contract and the green-pool one (in an eventlet-patched process)."""

from celeriac.testing.contracts import PoolContract
from celeriac.testing.contracts.green import GreenPoolContract


class TestEventletPool(PoolContract):
    pool_name = "eventlet"
    concurrency = 3


class TestEventletGreenPool(GreenPoolContract):
    pool_name = "eventlet"
