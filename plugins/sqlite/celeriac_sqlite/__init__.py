"""celeriac's embedded default: a SQLite broker and result store.

* :mod:`celeriac_sqlite.plugin`: the registration records the entry points
  load, the ``[sqlite]`` configuration section and the file locations.
* :mod:`celeriac_sqlite.transport`: the kombu transport (leases, native delay,
  priorities, broadcast, wake-up without polling).
* :mod:`celeriac_sqlite.backend`: the result store.

Importing this package imports nothing heavy; kombu is loaded only when the
transport is used.
"""
