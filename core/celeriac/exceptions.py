"""Every error celeriac raises, in one place.

The names match Celery's where Celery has one (``Retry``,
``MaxRetriesExceededError``, ``TaskRevokedError``, ``NotRegistered``,
``TimeLimitExceeded``, ``SoftTimeLimitExceeded``), so ``except`` clauses port
unchanged, and so result documents read by a Celery client name classes it
recognises.
"""

from __future__ import annotations

from typing import Any


class CeleriacError(Exception):
    """Base class of every error raised by the kernel."""


# --- configuration and plugins -------------------------------------------------


class ConfigurationError(CeleriacError):
    """A setting is unknown, misspelled or has a value of the wrong type.

    The message names the setting's path (``sqlite.busy_timeout``), where it
    came from (a file, an environment variable, a keyword argument) and, when
    one is close enough, the name that was probably meant.
    """


class PluginError(CeleriacError):
    """Base class for plugin discovery and loading errors."""


class PluginNotFound(PluginError):
    """No installed plugin provides the driver name asked for."""


class PluginLoadError(PluginError):
    """An installed plugin failed to import or returned something unusable."""


# --- messages ------------------------------------------------------------------


class MessageError(CeleriacError):
    """A message could not be turned into a task request.

    ``reason`` is a short machine-friendly code (``decode``, ``shape``,
    ``unknown-task``, ``content-type``, ``content-disallowed``,
    ``redelivered``), stored with the message in the dead-letter queue.
    """

    reason = "invalid"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(MessageError):
    """The body is not valid for its content type (not JSON, bad UTF-8...)."""

    reason = "decode"


class MessageShapeError(MessageError):
    """The body or headers decode but do not have the task protocol's shape."""

    reason = "shape"


class ContentDisallowed(MessageError):
    """The message's content type is not listed in ``accept_content``."""

    reason = "content-disallowed"


class SerializerNotFound(MessageError):
    """No serializer is installed for a content type or name."""

    reason = "content-type"


class NotRegistered(MessageError, KeyError):
    """The message names a task this worker does not know."""

    reason = "unknown-task"

    def __str__(self) -> str:  # KeyError would quote the repr
        return str(self.args[0]) if self.args else ""


# --- tasks ---------------------------------------------------------------------


class TaskError(CeleriacError):
    """Base class for errors about running tasks."""


class Retry(TaskError):  # noqa: N818 - Celery's name
    """Raised by :meth:`Task.retry` to tell the worker the task is retried.

    The worker catches it, stores ``RETRY`` and does not treat the task as
    failed. User code should let it propagate.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message or (repr(exc) if exc else "Retry"))

    def __reduce__(self):
        return self.__class__, (self.message, self.exc, self.when)


class Ignore(TaskError):  # noqa: N818 - Celery's name
    """Raised by a task to end its call with nothing stored and no callbacks
    run (the worker acknowledges the message). ``Task.replace`` raises it
    after sending the replacement, which inherits the task's id."""


class MaxRetriesExceededError(TaskError):
    """The task asked to be retried more than ``max_retries`` times."""


class TaskRevokedError(TaskError):
    """The task was revoked or had expired before it could run."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was stopped."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a task that ran past its soft time limit."""


class WorkerLostError(TaskError):
    """The process running the task exited before the task finished."""


class ChordError(TaskError):
    """A header task of a chord failed, so the chord body cannot run.

    Stored as the body's FAILURE (``"Dependency <task id> raised <exc!r>"``,
    with the header task's exception as ``__cause__``), or when the body could
    not be sent (``"Callback error: ..."``). Written under Celery's module,
    ``celery.exceptions``, so Celery clients raise their own class.
    """


class SecurityError(CeleriacError):
    """A result document names something that is not an exception class."""


class TimeoutError(CeleriacError):  # noqa: A001 - Celery's name
    """Waiting for a result took longer than the timeout given."""


class BackendError(CeleriacError):
    """The result backend could not store or fetch a result."""


class ChordsNotSupported(ConfigurationError):
    """The configured result backend cannot run chords: it does not implement
    the chord operations of :class:`celeriac.backend.ResultBackend`
    (``supports_chords`` is false). Raised when a chord is applied, before
    anything is sent."""
