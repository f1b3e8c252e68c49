"""``control`` commands: what changes a worker (Celery's names, arguments and
reply shapes; see :mod:`celeriac.control.registry` for the rules)."""

from __future__ import annotations

import logging
import signal as signal_mod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..pool import Pool
from .registry import NO_REPLY, command, nok, ok
from .revokes import mark_revoked, remember, task_ids_of

if TYPE_CHECKING:
    from .node import RemoteControl

logger = logging.getLogger("celeriac.control")


def signal_number(value: Any) -> int:
    """A signal given by name (``"SIGKILL"``, ``"KILL"``) or number; ``None`` is SIGTERM.

    Raises ``ValueError`` for a signal this system does not have.
    """
    if value is None:
        return int(signal_mod.SIGTERM)
    try:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return int(signal_mod.Signals(int(value)))
        name = str(value).strip().upper()
        return int(signal_mod.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {value!r} (use a name such as SIGTERM or SIGKILL, "
                         f"or a number)") from None


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0 or null, not {value!r}")
    return float(value)


@command("control", variadic="task_id", signature="[id1 [id2 ...]]")
def revoke(node: RemoteControl, task_id: Any, terminate: bool = False, signal: Any = None,
           **_: Any) -> dict[str, Any]:
    """Revoke tasks by id: they never run; ``terminate`` also ends them if running."""
    ids = task_ids_of(task_id)
    signum = signal_number(signal) if terminate else None
    worker = node.worker
    worker.revoked.add(ids)
    try:
        remember(node.app, ids)
    except Exception as exc:
        logger.warning("could not store the revoke of %s in the result backend (%s); it lasts "
                       "only while the workers that received it run", ", ".join(ids), exc)
    discarded = node.discard_waiting(ids)
    running = [r.id for r in worker.active.values() if r.id in ids]
    try:
        mark_revoked(node.app, [i for i in ids if i not in running and i not in discarded])
    except Exception as exc:
        logger.warning("could not store REVOKED for %s (%s)", ", ".join(ids), exc)
    logger.info("tasks flagged as revoked: %s", ", ".join(ids))
    if signum is None:
        return ok(f"tasks {set(ids)} flagged as revoked")
    pool = worker.pool
    if running and type(pool).terminate_job is Pool.terminate_job:
        return nok(f"terminate: the {worker.pool_name} pool cannot end a running task; "
                   f"{', '.join(running)} flagged as revoked but still running")
    ended = [i for i in running if pool.terminate_job(i, signum)]
    for task_id_ in ended:
        logger.info("terminating %s (%s)", task_id_, signal_mod.Signals(signum).name)
    done = ended + discarded
    return ok(f"terminate: {', '.join(done)}" if done else "terminate: tasks unknown")


@command("control", args=(("signal", str),), required=1, variadic="task_id",
         signature="<signal> [id1 [id2 ...]]")
def terminate(node: RemoteControl, signal: Any, task_id: Any, **_: Any) -> dict[str, Any]:
    """Revoke tasks by id and end those running (``revoke`` with ``terminate``)."""
    return revoke(node, task_id, terminate=True, signal=signal)


@command("control", args=(("task_name", str), ("rate_limit", str)), required=2,
         signature="<task_name> <rate_limit (e.g. 5/s | 5/m | 5/h)>")
def rate_limit(node: RemoteControl, task_name: str, rate_limit: Any, **_: Any) -> dict[str, Any]:
    """Change the rate limit of a task type (an empty limit removes it)."""
    from ..worker.ratelimit import parse_rate

    try:
        parse_rate(rate_limit or None)
    except ValueError as exc:
        return nok(f"Invalid rate limit string: {exc!r}")
    if task_name not in node.app.tasks:
        logger.error("rate limit asked for unknown task %s", task_name)
        return nok("unknown task")
    node.worker.set_rate_limit(task_name, rate_limit or None)
    if not rate_limit:
        logger.info("rate limits disabled for tasks of type %s", task_name)
        return ok("rate limit disabled successfully")
    logger.info("new rate limit for tasks of type %s: %s", task_name, rate_limit)
    return ok("new rate limit set successfully")


@command("control", args=(("task_name", str), ("soft", float), ("hard", float)), required=2,
         signature="<task_name> <soft_secs> [hard_secs]")
def time_limit(node: RemoteControl, task_name: str | None = None, hard: Any = None,
               soft: Any = None, **_: Any) -> dict[str, Any]:
    """Change the time limits of a task type in the worker (null: none)."""
    task = node.app.tasks.get(task_name or "")
    if task is None:
        logger.error("time limits asked for unknown task %s", task_name)
        return nok("unknown task")
    task.soft_time_limit = _number(soft, "soft")
    task.time_limit = _number(hard, "hard")
    logger.info("new time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


@command("control")
def shutdown(node: RemoteControl, msg: str = "Got shutdown from remote", **_: Any) -> object:
    """Warm shutdown of the worker(s); no reply, as with Celery."""
    logger.warning("%s", msg)
    node.worker.stop()
    return NO_REPLY


def _resize(change: Callable[[], None]) -> dict[str, Any] | None:
    """Make a pool size ``change``; the error reply when the pool cannot."""
    try:
        change()
    except (NotImplementedError, ValueError) as exc:
        return nok(str(exc))
    return None


@command("control", args=(("n", int),), signature="[N=1]")
def pool_grow(node: RemoteControl, n: int = 1, **_: Any) -> dict[str, Any]:
    """Add N to the pool's concurrency."""
    return _resize(lambda: node.worker.grow_pool(n)) or ok("pool will grow")


@command("control", args=(("n", int),), signature="[N=1]")
def pool_shrink(node: RemoteControl, n: int = 1, **_: Any) -> dict[str, Any]:
    """Take N from the pool's concurrency (running tasks finish first)."""
    return _resize(lambda: node.worker.shrink_pool(n)) or ok("pool will shrink")


@command("control", args=(("max", int), ("min", int)), required=2, signature="<max> <min>")
def autoscale(node: RemoteControl, max: Any = None, min: Any = None,  # noqa: A002 - Celery's names
              **_: Any) -> dict[str, Any]:
    """Let the pool's concurrency follow the load between MIN and MAX."""
    return _resize(lambda: node.worker.set_autoscale(max, min)) or \
        ok(f"autoscale now max={max} min={min}")


@command("control", args=(("queue", str), ("exchange", str), ("exchange_type", str),
                          ("routing_key", str)), required=1,
         signature="<queue> [exchange [type [routing_key]]]")
def add_consumer(node: RemoteControl, queue: str, exchange: str | None = None,
                 exchange_type: str | None = None, routing_key: str | None = None,
                 **_: Any) -> dict[str, Any]:
    """Start consuming a queue (declared as the worker declares its queues
    unless an exchange is given)."""
    import kombu

    worker = node.worker
    if queue not in worker.queue_names:
        entity = node.app.queue(queue) if exchange is None else kombu.Queue(
            queue, kombu.Exchange(exchange, type=exchange_type or "direct"),
            routing_key=routing_key or queue, durable=True)
        worker.consumer.add_queue(entity)
        worker.consumer.consume()
        worker.queue_names.append(queue)
        logger.info("started consuming from %s", queue)
    return ok(f"add consumer {queue}")


@command("control", args=(("queue", str),), required=1, signature="<queue>")
def cancel_consumer(node: RemoteControl, queue: str, **_: Any) -> dict[str, Any]:
    """Stop consuming a queue (its waiting messages stay in the broker)."""
    worker = node.worker
    if queue in worker.queue_names:
        worker.consumer.cancel_by_queue(queue)
        worker.queue_names.remove(queue)
        logger.info("stopped consuming from %s", queue)
    return ok(f"no longer consuming from {queue}")


@command("control")
def enable_events(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """Start sending task events."""
    if not node.worker.events.enable():
        return ok("task events already enabled")
    logger.info("task events enabled by remote control")
    return ok("task events enabled")


@command("control")
def disable_events(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """Stop sending task events."""
    if not node.worker.events.disable():
        return ok("task events already disabled")
    logger.info("task events disabled by remote control")
    return ok("task events disabled")


@command("control")
def heartbeat(node: RemoteControl, **_: Any) -> None:
    """Send a worker heartbeat event now (monitors ask for it when they start)."""
    node.worker.events.request_heartbeat()
