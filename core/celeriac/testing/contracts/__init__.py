"""Contract suites a plugin runs with one import.

Each suite is a pytest base class whose name does not start with ``Test``, so
only a plugin's subclass (``class TestMyTransport(TransportContract)``) is
collected. What a subclass provides:

* :class:`TransportContract`: ``transport_name`` and a ``broker_url`` fixture;
  optionally ``lacks``, ``transport_options`` and the waiting bounds
  (``wait_timeout``, ``empty_wait``, ``kill_timeout``, ``lease_watch``,
  ``eta_tolerance``).
* :class:`BackendContract`: ``backend_name`` and a ``backend_url`` fixture;
  optionally ``lacks``, ``wait_timeout``, ``short_expiry``, ``short_claim``,
  ``make_backend()``. The chord tests run when the backend sets
  ``supports_chords``; otherwise one test checks it refuses chords clearly.
* :class:`PoolContract`: ``pool_name``; optionally ``concurrency``, ``lacks``,
  ``wait_timeout``, ``quiet_wait``, ``make_pool()``.
* :class:`SerializerContract`: ``serializer_name``; optionally ``values``.

``lacks`` names capabilities the plugin declares it does not have; the tests
that need them are skipped with that reason. Unknown names are an error when
the subclass is defined, so a misspelling cannot silently skip a test.

Needs pytest and hypothesis (``pip install celeriac[testing]``).
"""

import pytest

# Plain asserts in these modules get pytest's detailed failure messages only
# if they are registered before being imported.
pytest.register_assert_rewrite(
    "celeriac.testing.contracts._broker_client",
    "celeriac.testing.contracts.backend",
    "celeriac.testing.contracts.pool",
    "celeriac.testing.contracts.serializer",
    "celeriac.testing.contracts.transport",
)

from .backend import BACKEND_CAPABILITIES, BackendContract, JSONCodec  # noqa: E402
from .pool import POOL_CAPABILITIES, PoolContract  # noqa: E402
from .serializer import SerializerContract, json_values  # noqa: E402
from .transport import CAPABILITIES, TransportContract  # noqa: E402

__all__ = [
    "BACKEND_CAPABILITIES",
    "CAPABILITIES",
    "POOL_CAPABILITIES",
    "BackendContract",
    "JSONCodec",
    "PoolContract",
    "SerializerContract",
    "TransportContract",
    "json_values",
]
