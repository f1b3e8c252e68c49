"""Running one task call: the tracer shared by the worker's pools and eager mode.

The order follows what a Celery 5.7 worker does (PROTOCOL.md A.6), so that
mixed fleets see the same results and side effects: on success the callbacks
and the next chain step are sent *before* the result is stored (so the stored
``children`` list them); on failure FAILURE is stored, the rest of the chain
is marked failed so nobody waits for it forever, then the errbacks run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import logging
import os
import traceback as tb
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import attrs

from . import _state, canvas, chords, states
from .exceptions import Ignore, Retry
from .serialization import exception_to_dict
from .task import Context, Task
from .timeutils import now, to_iso

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger("celeriac.trace")


@attrs.frozen
class Outcome:
    """How a task call ended, as the worker needs it to ack or requeue."""

    state: str
    retval: Any = None
    exception: BaseException | None = None
    traceback: str | None = None
    ack: bool = True
    """False: the message goes back to the broker (a failure with
    ``acks_on_failure_or_timeout`` off, or a result that could not be stored)."""


def is_coroutine_task(task: Task) -> bool:
    """Whether the task's function is an ``async def``: calling it only makes
    the coroutine, which an event loop then runs."""
    return inspect.iscoroutinefunction(task.run)


def _call(task: Task, ctx: Context) -> Any:
    """Call the task's function in this thread; an awaitable it returns is run
    to the end on a new event loop (``asyncio.run``), so that every pool can
    run ``async def`` tasks."""
    retval = task.run(*ctx.args, **ctx.kwargs)
    if inspect.isawaitable(retval):
        retval = asyncio.run(_await(retval))
    return retval


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _autoretry(task: Task, ctx: Context, exc: Exception) -> None:
    """Retry through ``task.retry`` (which raises :class:`Retry`, or ``exc``
    past ``max_retries``) when ``exc`` is one the task retries on by itself."""
    if task.autoretry_for and isinstance(exc, tuple(task.autoretry_for)) and not (
        task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for))
    ):
        extra = {k: v for k, v in task.retry_kwargs.items() if k != "countdown"}
        task.retry(exc=exc, countdown=task.backoff_countdown(ctx.retries), **extra)


def _formatted(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


def _off_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """``fn(*args)`` in the loop's default executor, in a copy of this context
    (so ``self.request`` and ``current_request()`` work there)."""
    return loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, fn, *args))


#: Tracers by :attr:`Tracer.key`; a forked child inherits the parent's.
_tracers: weakref.WeakValueDictionary[str, Tracer] = weakref.WeakValueDictionary()
_keys = itertools.count(1)


def find_tracer(key: str) -> Tracer:
    """The tracer whose :attr:`Tracer.key` is ``key``: one made in this process,
    or in its parent before this process was forked."""
    try:
        return _tracers[key]
    except KeyError:
        raise LookupError(
            f"no tracer {key!r} in process {os.getpid()}: a job runs in another process only "
            f"if that process was forked after the tracer was made") from None


class Tracer:
    """Runs tasks of one app; ``hostname`` is the worker's node name."""

    def __init__(self, app: App, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self.hooks = app.plugins.hooks
        self.key = f"{os.getpid()}-{next(_keys)}"
        """Names this tracer for :func:`find_tracer`, so that a job sent to a
        forked child can say which tracer runs it there."""
        _tracers[self.key] = self

    # -- storing -------------------------------------------------------------------

    def _document(self, ctx: Context, task: Task | None, state: str, result: Any,
                  traceback: str | None, children: list[Any] | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": state, "result": result, "traceback": traceback, "children": children,
            "date_done": to_iso(now()) if state in states.READY_STATES else None,
        }
        if ctx.group:
            doc["group_id"] = ctx.group
        if ctx.parent_id:
            doc["parent_id"] = ctx.parent_id
        if self.app.conf.result_extended:
            doc.update(name=ctx.task, args=list(ctx.args), kwargs=dict(ctx.kwargs),
                       worker=self.hostname, retries=ctx.retries,
                       queue=ctx.delivery_info.get("routing_key"))
        doc["task_id"] = ctx.id
        return doc

    def store(self, ctx: Context, task: Task | None, state: str, result: Any = None,
              traceback: str | None = None, children: list[Any] | None = None) -> bool:
        """Store a state; returns False when the backend failed (logged)."""
        if ctx.is_eager or not self.app.backend.enabled:
            return True
        try:
            self.app.backend.store_for(ctx, self._document(ctx, task, state, result, traceback,
                                                           children),
                                       expires=self.app.conf.result_expires)
        except Exception:
            logger.exception("could not store %s for task %s[%s]; the message will be retried",
                             state, ctx.task, ctx.id)
            return False
        if ctx.chord is not None and state in states.READY_STATES:
            # Here, so that every final state of a chord's header task counts
            # in its chord, whoever stores it (the worker stores REVOKED and
            # time-limit FAILUREs itself).
            return chords.on_part_return(self, ctx, state, result)
        return True

    # -- running -------------------------------------------------------------------

    def run(self, task: Task, ctx: Context) -> Outcome:
        """Run one call in this thread, from the prerun hook to the stored
        result. The task's errors become the outcome; only a ``BaseException``
        that is not an ``Exception`` (``SystemExit``...) propagates."""
        ignore = self._ignores_result(task, ctx)
        _state.push(task, ctx)
        try:
            self._begin(task, ctx, ignore)
            try:
                retval = _call(task, ctx)
            except Exception as exc:
                return self._conclude(task, ctx, ignore, exc=exc)
            return self._conclude(task, ctx, ignore, retval=retval)
        finally:
            _state.pop()

    async def run_async(self, task: Task, ctx: Context,
                        guard: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]] | None = None,
                        ) -> Outcome:
        """:meth:`run` for a caller on a running event loop (the same outcomes).

        The coroutine of an ``async def`` task is awaited here, on the loop,
        through ``guard(coroutine)`` when one is given (the pool's way to
        enforce time limits); a plain ``def`` task is called in the loop's
        default executor. What may block (prerun hooks and the STARTED state,
        storing the result, sending callbacks and chain steps, the other
        hooks) runs in the loop's default executor with this call's context,
        so that many calls in flight never wait for each other's I/O.
        Cancelling the caller while the task's coroutine runs ends the call
        with nothing stored: ``CancelledError`` propagates.
        """
        loop = asyncio.get_running_loop()
        ignore = self._ignores_result(task, ctx)
        _state.push(task, ctx)
        try:
            if self.hooks.implemented("celeriac_task_prerun") or self._tracks_start(task, ignore):
                await _off_loop(loop, self._begin, task, ctx, ignore)
            try:
                if is_coroutine_task(task):
                    coroutine = task.run(*ctx.args, **ctx.kwargs)
                    retval = await (coroutine if guard is None else guard(coroutine))
                else:
                    retval = await _off_loop(loop, _call, task, ctx)
            except Exception as exc:
                return await _off_loop(loop, self._conclude, task, ctx, ignore, None, exc)
            return await _off_loop(loop, self._conclude, task, ctx, ignore, retval)
        finally:
            _state.pop()

    @staticmethod
    def _ignores_result(task: Task, ctx: Context) -> bool:
        return bool(ctx.ignore_result if ctx.ignore_result is not None
                    else task.option("ignore_result"))

    @staticmethod
    def _tracks_start(task: Task, ignore: bool) -> bool:
        return bool(task.option("track_started")) and not ignore

    def _begin(self, task: Task, ctx: Context, ignore: bool) -> None:
        self.hooks.call("celeriac_task_prerun", task=task, request=ctx)
        if self._tracks_start(task, ignore):
            self.store(ctx, task, states.STARTED, {"pid": os.getpid(), "hostname": self.hostname})

    def _conclude(self, task: Task, ctx: Context, ignore: bool, retval: Any = None,
                  exc: Exception | None = None) -> Outcome:
        """What the call's return (or ``exc``) means: SUCCESS, RETRY or
        FAILURE, stored, with its hooks and postrun called. The one
        implementation behind :meth:`run` and :meth:`run_async`."""
        outcome = self._on_success(task, ctx, retval, ignore) if exc is None \
            else self._on_exception(task, ctx, exc)
        self.hooks.call("celeriac_task_postrun", task=task, request=ctx,
                        retval=outcome.retval if outcome.exception is None else outcome.exception,
                        state=outcome.state)
        return outcome

    def _on_exception(self, task: Task, ctx: Context, exc: Exception) -> Outcome:
        if isinstance(exc, Ignore):  # e.g. Task.replace: the replacement has the id now
            return Outcome(states.IGNORED)
        text = _formatted(exc)
        if isinstance(exc, Retry):
            return self._on_retry(task, ctx, exc, text)
        try:
            _autoretry(task, ctx, exc)
        except Retry as retry:
            return self._on_retry(task, ctx, retry, text)
        except Exception as error:  # exc itself past max_retries, or sending the retry failed
            if error is not exc:
                exc, text = error, _formatted(error)
        return self.fail(task, ctx, exc, text)

    def _on_success(self, task: Task, ctx: Context, retval: Any, ignore: bool) -> Outcome:
        if ctx.callbacks:
            canvas.apply_callbacks(self.app, ctx.callbacks, retval, ctx)
        if ctx.chain:
            canvas.apply_next_step(self.app, ctx, retval)
        # What the call sent, callbacks and the next step included (add_to_parent).
        children = [child.as_tuple() for child in ctx.children]
        stored = True
        if not ignore:
            stored = self.store(ctx, task, states.SUCCESS, retval, None, children)
        elif ctx.chord is not None:
            stored = chords.on_part_return(self, ctx, states.SUCCESS, retval)
        self.hooks.call("celeriac_task_success", task=task, request=ctx, retval=retval)
        return Outcome(states.SUCCESS, retval=retval, ack=stored)

    def fail(self, task: Task | None, ctx: Context, exc: BaseException, text: str) -> Outcome:
        """Fail the call ``ctx`` with ``exc`` (``text``: its traceback): store
        FAILURE, mark the rest of its chain failed, run its errbacks, call the
        failure hook. Also used by the worker for jobs the pool ended (time
        limit, lost process) and by chords for a body that cannot run."""
        logger.error("task %s[%s] raised %s: %s", ctx.task, ctx.id, type(exc).__name__, exc)
        doc = exception_to_dict(exc)
        stored = self.store(ctx, task, states.FAILURE, doc, text, [])
        for step in canvas.chain_steps(self.app, ctx.chain or ()):
            step_id = step.options.get("task_id")
            if step_id:
                self.store(Context(id=step_id, task=step.task, is_eager=ctx.is_eager), None,
                           states.FAILURE, doc, text, [])
        for sig in ctx.errbacks or ():
            try:
                self._errback(sig, ctx, exc, text)
            except Exception:
                logger.exception("errback %s of task %s[%s] failed", sig.task, ctx.task, ctx.id)
        if task is not None:
            self.hooks.call("celeriac_task_failure", task=task, request=ctx, exc=exc, traceback=text)
        ack = stored and (task is None or bool(task.option("acks_on_failure_or_timeout")))
        return Outcome(states.FAILURE, exception=exc, traceback=text, ack=ack)

    def _errback(self, sig: Any, ctx: Context, exc: BaseException, text: str) -> None:
        local = self.app.tasks.get(sig.task)
        if local is not None:
            params = [p for p in inspect.signature(local.run).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(params) > 1 and not sig.args:
                # Celery calls errbacks that take (request, exc, traceback) inline.
                local(ctx, exc, text)
                return
        self.app.send_signature(sig, args=(ctx.id,), parent=ctx)

    def _on_retry(self, task: Task, ctx: Context, retry: Retry, text: str) -> Outcome:
        reason = retry.exc if retry.exc is not None else retry
        stored = self.store(ctx, task, states.RETRY, exception_to_dict(reason), text)
        when = retry.when if isinstance(retry.when, str) else None
        logger.info("task %s[%s] retry %d at %s: %s", ctx.task, ctx.id, ctx.retries + 1, when, reason)
        self.hooks.call("celeriac_task_retry", task=task, request=ctx, reason=reason, eta=when)
        return Outcome(states.RETRY, exception=retry, traceback=text, ack=stored)


def apply_eager(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
    """Run ``task`` in the caller, retrying at once when it asks to."""
    from .result import EagerResult

    app = task.app
    parent = _state.current_request()
    task_id = options.get("task_id") or str(uuid.uuid4())
    ctx = Context(id=task_id, task=task.name, args=args, kwargs=kwargs, retries=0,
                  root_id=parent.root_id if parent else task_id,
                  parent_id=parent.id if parent else None,
                  callbacks=_sigs(options.get("link")), errbacks=_sigs(options.get("link_error")),
                  headers=dict(options.get("headers") or {}), is_eager=True, called_directly=False,
                  ignore_result=options.get("ignore_result"))
    tracer = Tracer(app, hostname="eager")
    while True:
        outcome = tracer.run(task, ctx)
        if outcome.state != states.RETRY:
            break
        ctx = attrs.evolve(ctx, retries=ctx.retries + 1)
    if outcome.state == states.FAILURE:
        if options.get("throw", app.conf.task_eager_propagates):
            raise outcome.exception  # type: ignore[misc]
        return EagerResult(task_id, outcome.exception, states.FAILURE, outcome.traceback,
                           app=app, task_name=task.name)
    return EagerResult(task_id, outcome.retval, outcome.state, app=app, task_name=task.name)


def _sigs(value: Any) -> tuple[Any, ...] | None:
    from .protocol import Signature

    if value is None:
        return None
    if isinstance(value, (Signature, dict)):
        value = [value]
    return tuple(v if isinstance(v, Signature) else Signature.from_dict(v) for v in value)
