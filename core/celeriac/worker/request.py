"""A received task message on its way through the worker."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import attrs

from ..protocol import TaskMessage
from ..task import Context, Task
from ..timeutils import iso_to_epoch

if TYPE_CHECKING:
    from ..trace import Outcome, Tracer


def delivery_info_of(message: Any) -> dict[str, Any]:
    """``request.delivery_info`` as Celery reports it."""
    info = message.delivery_info or {}
    props = message.properties or {}
    return {
        "exchange": info.get("exchange", ""),
        "routing_key": info.get("routing_key", ""),
        "priority": props.get("priority", info.get("priority")),
        "redelivered": bool(info.get("redelivered") or getattr(message, "redelivered", False)),
    }


@attrs.define(eq=False)
class Request:
    """One task call the worker has received: the kombu message, the decoded
    :class:`TaskMessage`, the task, and the :class:`Context` it runs with."""

    message: Any
    task_message: TaskMessage
    task: Task
    context: Context
    eta: float | None = None
    expires: float | None = None
    acknowledged: bool = False
    admitted: bool = False
    """Passed its task type's rate limit (a token was taken for it)."""
    time_start: float | None = None

    @classmethod
    def build(cls, message: Any, tm: TaskMessage, task: Task, hostname: str) -> Request:
        h = tm.headers
        ctx = Context(
            id=h.id, task=h.task, args=tm.args, kwargs=dict(tm.kwargs), retries=h.retries,
            eta=h.eta, expires=h.expires, group=h.group, group_index=h.group_index,
            root_id=h.root_id, parent_id=h.parent_id,
            correlation_id=tm.properties.correlation_id, reply_to=tm.properties.reply_to,
            origin=h.origin, hostname=hostname, delivery_info=delivery_info_of(message),
            headers=dict(h.extra), timelimit=h.timelimit, callbacks=tm.embed.callbacks,
            errbacks=tm.embed.errbacks, chain=tm.embed.chain, chord=tm.embed.chord,
            ignore_result=h.ignore_result, shadow=h.shadow, stamps=dict(h.stamps),
            is_eager=False, called_directly=False, message=tm,
        )
        return cls(message=message, task_message=tm, task=task, context=ctx,
                   eta=iso_to_epoch(h.eta), expires=iso_to_epoch(h.expires))

    @property
    def id(self) -> str:
        return self.task_message.id

    @property
    def name(self) -> str:
        return self.task_message.name

    def is_expired(self, at: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (at or time.time())

    def time_limits(self) -> tuple[float | None, float | None]:
        """(hard, soft): the message's limits, else the task's, else the app's."""
        hard, soft = self.context.timelimit
        return (hard if hard is not None else self.task.option("time_limit"),
                soft if soft is not None else self.task.option("soft_time_limit"))

    def ack(self) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            self.message.ack()

    def requeue(self) -> None:
        if not self.acknowledged:
            self.acknowledged = True
            self.message.reject(requeue=True)

    def info(self) -> dict[str, Any]:
        """The entry ``inspect active/reserved`` reports (Celery's shape)."""
        return {"id": self.id, "name": self.name, "args": list(self.context.args),
                "kwargs": self.context.kwargs, "type": self.name,
                "hostname": self.context.hostname, "time_start": self.time_start,
                "acknowledged": self.acknowledged, "delivery_info": self.context.delivery_info,
                "worker_pid": None}


@attrs.define(eq=False)
class TaskJob:
    """What the pool runs: one request through the tracer."""

    request: Request
    tracer: Tracer
    time_limit: float | None = None
    soft_time_limit: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    def run(self) -> Outcome:
        return self.tracer.run(self.request.task, self.request.context)

    @property
    def name(self) -> str:
        """The task's name (see :class:`celeriac.pool.AsyncJob`)."""
        return self.request.name

    @property
    def is_async(self) -> bool:
        """The task is an ``async def`` (see :class:`celeriac.pool.AsyncJob`)."""
        from ..trace import is_coroutine_task

        return is_coroutine_task(self.request.task)

    def run_async(self, guard: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]] | None = None,
                  ) -> Coroutine[Any, Any, Outcome]:
        """:meth:`run` on the running event loop (see :class:`celeriac.pool.AsyncJob`)."""
        return self.tracer.run_async(self.request.task, self.request.context, guard)

    def portable(self) -> PortableTaskJob:
        """This job for a process forked from this one (see :class:`celeriac.pool.Job`)."""
        return PortableTaskJob(self.tracer.key, self.request.name, self.request.context,
                               time_limit=self.time_limit, soft_time_limit=self.soft_time_limit)


@attrs.frozen
class PortableTaskJob:
    """A :class:`TaskJob` as sent to a forked child: the tracer by its key,
    the task by its name, and the call's :class:`Context` (which pickles)."""

    tracer_key: str
    task_name: str
    context: Context
    time_limit: float | None = None
    soft_time_limit: float | None = None

    @property
    def id(self) -> str:
        return self.context.id or ""

    def run(self) -> Outcome:
        """Run the task with the tracer the child inherited; the result is stored here."""
        from ..trace import find_tracer

        tracer = find_tracer(self.tracer_key)
        return tracer.run(tracer.app.tasks[self.task_name], self.context)
