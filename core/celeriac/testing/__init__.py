"""Testing utilities for celeriac apps and plugins.

:mod:`celeriac.testing.contracts` holds the contract suites a transport, pool,
result backend or serializer plugin subclasses to prove it keeps the kernel's
rules.
"""
