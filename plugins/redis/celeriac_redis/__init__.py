"""Redis for celeriac.

This distribution provides the Redis result backend: Celery's keys
(``celery-task-meta-<id>``) and JSON documents, stored with SET then PUBLISH
so that a Celery client waiting on the same result wakes up, and read by
waiting on that channel instead of polling. The Redis transport is not part
of it yet.
"""
