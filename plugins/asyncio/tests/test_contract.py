"""The asyncio pool keeps the pool contract (its jobs here are plain ``def``
jobs, which run in the pool's threads; ``async def`` jobs are in test_pool.py)."""

from celeriac.testing.contracts import PoolContract


class TestAsyncioPool(PoolContract):
    pool_name = "asyncio"
    concurrency = 3
