"""The Redis result backend keeps the kernel's backend contract, on a real server."""

from __future__ import annotations

import pytest
from celeriac.testing.contracts import BackendContract


class TestRedisBackend(BackendContract):
    backend_name = "redis"

    @pytest.fixture
    def backend_url(self, redis_url):
        return redis_url


class TestRedisBackendWithANonJSONSerializer(BackendContract):
    """Documents the Lua script cannot decode take the WATCH/MULTI path."""

    backend_name = "redis"

    @pytest.fixture
    def backend_url(self, redis_url):
        return redis_url

    def make_backend(self, url):
        import pickle

        from celeriac.config import Settings
        from celeriac_redis.backend import RedisBackend

        class PickleCodec:
            content_type = "application/x-python-serialize"

            def encode(self, document):
                return pickle.dumps(dict(document))

            def decode(self, data):
                return pickle.loads(data)

        return RedisBackend(url, codec=PickleCodec(), settings=Settings(), app_name="contract")
