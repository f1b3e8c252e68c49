"""The Redis transport and result backend keep the kernel's contracts, on a real server."""

from __future__ import annotations

import pytest
from celeriac.testing.contracts import BackendContract, TransportContract


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


class TestRedisTransport(TransportContract):
    """The transport on a real server. Short leases so the kill test is quick;
    the lease test watches for longer than three leases to prove renewal."""

    transport_name = "redis"
    transport_options = {"visibility_timeout": 1.5}
    lease_watch = 4.6
    kill_timeout = 30.0

    @pytest.fixture
    def broker_url(self, redis_url):
        return redis_url
