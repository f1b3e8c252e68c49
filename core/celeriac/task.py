"""Tasks: the decorated function plus Celery's options, calling API and ``self.request``."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import _state
from .exceptions import MaxRetriesExceededError, Retry
from .protocol import Signature

if TYPE_CHECKING:
    from .app import App
    from .result import AsyncResult, EagerResult

#: Options ``@app.task(...)`` accepts (anything else is an error).
TASK_OPTIONS = frozenset({
    "name", "bind", "base", "max_retries", "default_retry_delay", "autoretry_for",
    "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
    "acks_late", "acks_on_failure_or_timeout", "reject_on_worker_lost", "ignore_result",
    "rate_limit", "time_limit", "soft_time_limit", "queue", "priority", "serializer",
    "track_started", "expires", "shadow_name", "typing",
})

#: The app setting behind each task option that has one (:meth:`Task.option`).
_OPTION_SETTINGS = {
    "max_retries": "task_max_retries", "default_retry_delay": "task_default_retry_delay",
    "acks_late": "task_acks_late", "ignore_result": "task_ignore_result",
    "acks_on_failure_or_timeout": "task_acks_on_failure_or_timeout",
    "reject_on_worker_lost": "task_reject_on_worker_lost",
    "time_limit": "task_time_limit", "soft_time_limit": "task_soft_time_limit",
    "rate_limit": "task_default_rate_limit", "serializer": "task_serializer",
    "track_started": "task_track_started", "priority": "task_default_priority",
}


@attrs.define
class Context:
    """``self.request``: what the running task knows about its own call."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    group: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = attrs.field(factory=dict)
    headers: dict[str, Any] = attrs.field(factory=dict)
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: tuple[Signature, ...] | None = None
    errbacks: tuple[Signature, ...] | None = None
    chain: tuple[Signature, ...] | None = None
    chord: Signature | None = None
    ignore_result: bool | None = None
    shadow: str | None = None
    stamps: dict[str, Any] = attrs.field(factory=dict)
    is_eager: bool = False
    called_directly: bool = True
    message: Any = attrs.field(default=None, repr=False)
    """The :class:`~celeriac.protocol.TaskMessage` being run (None when called directly)."""
    children: list[Any] = attrs.field(factory=list, repr=False)
    """Results of what the call sent (callbacks, chain steps, tasks it
    called): stored with its result as ``children``, as Celery does."""


class Task:
    """Base class of tasks. ``@app.task`` makes a subclass per function.

    Class attributes left at ``None`` take the app's ``task_*`` setting.
    """

    name: str = ""
    app: App
    bind: bool = False
    typing: bool = True
    max_retries: int | None = None
    default_retry_delay: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    ignore_result: bool | None = None
    rate_limit: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    queue: str | None = None
    priority: int | None = None
    serializer: str | None = None
    track_started: bool | None = None
    expires: float | datetime | None = None
    shadow_name: Callable[..., str | None] | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"task {self.name!r} has no run()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)

    # -- settings resolved against the app ----------------------------------------

    def option(self, name: str) -> Any:
        """The task's own option, else the app's ``task_<name>`` setting."""
        value = getattr(self, name)
        if value is not None:
            return value
        fallback = _OPTION_SETTINGS.get(name)
        return getattr(self.app.conf, fallback) if fallback else None

    @property
    def request(self) -> Context:
        """The current call's :class:`Context` (a blank one outside the worker)."""
        top = _state.current()
        if top is not None and top[0] is self:
            return top[1]
        return Context()

    # -- calling -------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send the task. Options as in Celery: ``countdown``, ``eta``, ``expires``,
        ``queue``, ``routing_key``, ``priority``, ``task_id``, ``headers``, ``link``,
        ``link_error``, ``ignore_result``, ``time_limit``, ``soft_time_limit``,
        ``shadow``, ``serializer``."""
        if self.app.conf.task_always_eager:
            self.app.check_apply_options(self.name, options)
            return self.apply(args, kwargs, **options)
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    def apply_bulk(self, args_list: Iterable[Iterable[Any]],
                   kwargs_list: Iterable[Mapping[str, Any]] | None = None,
                   **options: Any) -> list[AsyncResult]:
        """Send one call per item of ``args_list`` (and ``kwargs_list``) in
        one round trip; see :meth:`celeriac.App.send_bulk`. In eager mode
        each call runs here, one after the other."""
        if self.app.conf.task_always_eager:
            self.app.check_apply_options(self.name, options)
            args_all = [tuple(a) for a in args_list]
            kwargs_all = [dict(k) for k in kwargs_list] if kwargs_list is not None \
                else [{} for _ in args_all]
            if len(kwargs_all) != len(args_all):
                raise ValueError("apply_bulk needs one keyword dict per argument tuple")
            return [self.apply(a, k, **options) for a, k in zip(args_all, kwargs_all, strict=True)]
        return self.app.send_bulk(self.name, args_list, kwargs_list, task=self, **options)

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> EagerResult:
        """Run the task here and now, through the same tracer a worker uses."""
        from .trace import apply_eager

        return apply_eager(self, tuple(args or ()), dict(kwargs or {}), options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (partial: the
        parent's result is prepended when used as a callback)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: the parent's result is not prepended."""
        return self.signature(args, kwargs, immutable=True)

    def signature(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> Signature:
        """A signature of this task: ``add.signature((2, 2), countdown=10)``
        (``options=``, ``immutable=`` as in :func:`celeriac.signature`)."""
        from .canvas import signature

        options.setdefault("app", self.app)
        return signature(self, args, kwargs, **options)

    subtask = signature

    def map(self, it: Iterable[Any]) -> Signature:
        """One message that calls this task on each item of ``it`` (:class:`~celeriac.xmap`)."""
        from .canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> Signature:
        """As :meth:`map`, each item unpacked as arguments (:class:`~celeriac.xstarmap`)."""
        from .canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> Signature:
        """The items of ``it`` in chunks of ``n``, one message each, as a group
        (:class:`~celeriac.chunks`)."""
        from .canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

    def replace(self, sig: Any) -> Any:
        """Replace this running task by ``sig``: it inherits the task's id,
        callbacks, errbacks, chord and the rest of its chain; then
        :class:`~celeriac.exceptions.Ignore` ends this call with nothing
        stored. Use it as ``return self.replace(sig)`` (in eager mode it
        returns ``sig``'s value)."""
        from .canvas import replace_task

        return replace_task(self, sig)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        from .result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name)

    # -- retrying ------------------------------------------------------------------

    def retry(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True, eta: datetime | None = None,
              countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Retry:
        """Send this task again (same id, ``retries + 1``) and raise :class:`Retry`.

        Past ``max_retries`` it raises ``exc`` if given, else
        :class:`MaxRetriesExceededError`. Called outside a worker it re-raises
        ``exc`` (there is nothing to retry).
        """
        request = self.request
        limit = self.option("max_retries") if max_retries is None else max_retries
        if request.called_directly:
            if exc is not None:
                raise exc
            raise RuntimeError(f"task {self.name} was called directly; there is nothing to retry")
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}")
        if eta is None and countdown is None:
            countdown = self.option("default_retry_delay")
        when = self.app.retry_message(self, request, args=args, kwargs=kwargs, eta=eta,
                                      countdown=countdown, **options)
        error = Retry(exc=exc, when=when)
        if throw:
            raise error
        return error

    def backoff_countdown(self, retries: int) -> float:
        """Countdown for an automatic retry (``retry_backoff``, ``retry_jitter``)."""
        if not self.retry_backoff:
            return float(self.retry_kwargs.get("countdown", self.option("default_retry_delay")))
        factor = 1 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2 ** retries))
        if self.retry_jitter:
            countdown = random.randrange(int(countdown) + 1)
        return max(0.0, float(countdown))

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
