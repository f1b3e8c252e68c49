"""Task states, with Celery's names and meaning."""

from __future__ import annotations

PENDING = "PENDING"
"""Unknown to the backend: not sent, not yet received, or forgotten."""
RECEIVED = "RECEIVED"
"""A worker has the message and will run it."""
STARTED = "STARTED"
"""Running (stored only when ``task_track_started`` is on)."""
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
"""Revoked or expired: will not run."""
REJECTED = "REJECTED"
RETRY = "RETRY"
"""Failed and will be retried."""
IGNORED = "IGNORED"
"""The task raised :class:`~celeriac.exceptions.Ignore` (or was replaced): nothing is stored."""

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})

ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED})
