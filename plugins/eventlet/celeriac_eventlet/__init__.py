"""The eventlet pool: tasks run in green threads (the worker monkey-patches at start-up)."""
