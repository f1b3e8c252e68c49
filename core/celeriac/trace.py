"""Running one task call: the tracer shared by the worker's pools and eager mode.

The order follows what a Celery 5.7 worker does (PROTOCOL.md A.6), so that
mixed fleets see the same results and side effects: on success the callbacks
and the next chain step are sent *before* the result is stored (so the stored
``children`` list them); on failure FAILURE is stored, the rest of the chain
is marked failed so nobody waits for it forever, then the errbacks run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import traceback as tb
import uuid
from typing import TYPE_CHECKING, Any

import attrs

from . import _state, states
from .exceptions import Retry
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


def _call(task: Task, ctx: Context) -> Any:
    try:
        retval = task.run(*ctx.args, **ctx.kwargs)
        if inspect.isawaitable(retval):
            retval = asyncio.run(_await(retval))
        return retval
    except Retry:
        raise
    except Exception as exc:
        if task.autoretry_for and isinstance(exc, tuple(task.autoretry_for)) and not (
            task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for))
        ):
            extra = {k: v for k, v in task.retry_kwargs.items() if k != "countdown"}
            task.retry(exc=exc, countdown=task.backoff_countdown(ctx.retries), **extra)
        raise


async def _await(awaitable: Any) -> Any:
    return await awaitable


class Tracer:
    """Runs tasks of one app; ``hostname`` is the worker's node name."""

    def __init__(self, app: App, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self.hooks = app.plugins.hooks

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
        return True

    # -- running -------------------------------------------------------------------

    def run(self, task: Task, ctx: Context) -> Outcome:
        ignore = ctx.ignore_result if ctx.ignore_result is not None else task.option("ignore_result")
        _state.push(task, ctx)
        try:
            self.hooks.call("celeriac_task_prerun", task=task, request=ctx)
            if task.option("track_started") and not ignore:
                self.store(ctx, task, states.STARTED, {"pid": os.getpid(), "hostname": self.hostname})
            try:
                retval = _call(task, ctx)
            except Retry as retry:
                outcome = self._on_retry(task, ctx, retry)
            except Exception as exc:
                outcome = self._on_failure(task, ctx, exc, tb.format_exc())
            else:
                outcome = self._on_success(task, ctx, retval, ignore)
            self.hooks.call("celeriac_task_postrun", task=task, request=ctx,
                            retval=outcome.retval if outcome.exception is None else outcome.exception,
                            state=outcome.state)
            return outcome
        finally:
            _state.pop()

    def _on_success(self, task: Task, ctx: Context, retval: Any, ignore: bool) -> Outcome:
        children: list[Any] = []
        for sig in ctx.callbacks or ():
            res = self.app.send_signature(sig.clone((retval,)), parent=ctx)
            children.append(res.as_tuple())
        if ctx.chain:
            rest, step = ctx.chain[:-1], ctx.chain[-1]
            res = self.app.send_signature(step.clone((retval,)), parent=ctx, chain=rest or None)
            children.append(res.as_tuple())
        stored = True
        if not ignore:
            stored = self.store(ctx, task, states.SUCCESS, retval, None, children)
        self.hooks.call("celeriac_task_success", task=task, request=ctx, retval=retval)
        return Outcome(states.SUCCESS, retval=retval, ack=stored)

    def _on_failure(self, task: Task | None, ctx: Context, exc: BaseException, text: str) -> Outcome:
        logger.error("task %s[%s] raised %s: %s", ctx.task, ctx.id, type(exc).__name__, exc)
        doc = exception_to_dict(exc)
        stored = self.store(ctx, task, states.FAILURE, doc, text, [])
        for step in ctx.chain or ():
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
        self.app.send_signature(sig.clone((ctx.id,)), parent=ctx)

    def _on_retry(self, task: Task, ctx: Context, retry: Retry) -> Outcome:
        reason = retry.exc if retry.exc is not None else retry
        text = tb.format_exc()
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
