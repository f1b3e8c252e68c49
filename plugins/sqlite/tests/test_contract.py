"""The SQLite transport and result store pass the kernel's contract suites."""

import pytest
from celeriac.testing.contracts import BackendContract, TransportContract


class TestSQLiteTransport(TransportContract):
    transport_name = "sqlite"
    # Short leases so the kill test finishes quickly; the lease test watches
    # for longer than 3 leases to prove renewal.
    transport_options = {"visibility_timeout": 1.5}
    lease_watch = 4.6
    kill_timeout = 30.0

    @pytest.fixture
    def broker_url(self, tmp_path):
        return f"sqlite:///{tmp_path}/broker.sqlite3"


class TestSQLiteBackend(BackendContract):
    backend_name = "sqlite"

    @pytest.fixture
    def backend_url(self, tmp_path):
        return f"sqlite:///{tmp_path}/results.sqlite3"
