"""The gevent pool: tasks run in greenlets (the worker monkey-patches at start-up)."""
