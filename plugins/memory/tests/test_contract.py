"""The memory transport and backend pass their contracts."""

import uuid

import celeriac_memory
import pytest
from celeriac.testing.contracts import BackendContract, TransportContract


class TestMemoryTransport(TransportContract):
    transport_name = "memory"

    @pytest.fixture
    def broker_url(self):
        name = f"contract-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        celeriac_memory.reset(name)


class TestMemoryBackend(BackendContract):
    backend_name = "memory"

    @pytest.fixture
    def backend_url(self):
        url = f"memory://results-{uuid.uuid4().hex}"
        yield url
        from celeriac_memory.backend import reset

        reset(url)
