"""``inspect`` commands: what a worker reports about itself (Celery's names
and reply shapes; see :mod:`celeriac.control.registry` for the rules)."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from .registry import command, ok, strtobool
from .revokes import task_ids_of

if TYPE_CHECKING:
    from ..worker.request import Request
    from .node import RemoteControl

#: Setting names whose values ``inspect conf`` hides.
SECRET_NAME = re.compile(r"pass|secret|token|signature|api_?key|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
_RUSAGE_FIELDS = ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt",
                  "nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into its ``repr``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)


def censored(name: str, value: Any) -> Any:
    """A setting's value as ``inspect conf`` shows it: secrets hidden."""
    if SECRET_NAME.search(name) and value:
        return "********"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>********@", value)
    if isinstance(value, dict):
        return {k: censored(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [censored(name, v) for v in value]
    return value


def _waiting(node: RemoteControl) -> Iterator[tuple[str, Request]]:
    """(state, request) of every task the worker holds: active, reserved
    (rate-limited ones too) and scheduled (waiting for its ETA)."""
    worker = node.worker
    for request in list(worker.active.values()):
        yield "active", request
    for request in list(worker.reserved):
        yield "reserved", request
    for queue in list(worker.throttled.values()):
        for request in list(queue):
            yield "reserved", request
    for _, _, request in sorted(worker.held, key=lambda entry: entry[:2]):
        yield "scheduled", request


@command("inspect")
def ping(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """Ping the worker(s)."""
    return ok("pong")


@command("inspect")
def clock(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """The worker's logical clock."""
    return {"clock": node.clock.value}


@command("inspect")
def report(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """Versions and drivers, for bug reports."""
    import celeriac

    worker = node.worker
    lines = [f"celeriac:{celeriac.__version__} {platform.python_implementation()}:"
             f"{platform.python_version()}", f"platform: {sys.platform} {platform.machine()}",
             f"transport: {worker.transport.name}", f"results: {node.app.backend.describe()}",
             f"pool: {worker.pool_name} (concurrency {worker.concurrency})"]
    return ok("\n".join(lines))


@command("inspect")
def stats(node: RemoteControl, **_: Any) -> dict[str, Any]:
    """Statistics: tasks run per name, pool, broker, prefetch, resource usage."""
    worker = node.worker
    usage = resource.getrusage(resource.RUSAGE_SELF)
    broker = dict(worker.connection.info()) if worker.connection is not None else {}
    broker.pop("password", None)
    broker["transport"] = worker.transport.name
    return jsonable({
        "total": dict(worker.stats), "pid": os.getpid(), "clock": str(node.clock.value),
        "uptime": int(time.monotonic() - node.started), "pool": worker.pool.info(),
        "broker": censored("broker", broker), "prefetch_count": worker.prefetch_limit or 0,
        "rusage": {name: getattr(usage, f"ru_{name}") for name in _RUSAGE_FIELDS},
        **({"autoscaler": worker.autoscaler.info(worker._demand(), worker.pool.concurrency)}
           if worker.autoscaler is not None else {}),
    })


@command("inspect", args=(("with_defaults", strtobool),), signature="[with_defaults=no]")
def conf(node: RemoteControl, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
    """The worker's settings changed from the defaults (all: with_defaults), secrets hidden."""
    from ..config import Settings

    values = attrs.asdict(node.app.conf, recurse=True)
    if not with_defaults:
        defaults = attrs.asdict(Settings(), recurse=True)
        values = {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}
    return jsonable({k: censored(k, v) for k, v in values.items()})


@command("inspect")
def active(node: RemoteControl, safe: bool | None = None, **_: Any) -> list[Any]:
    """Tasks running now, with the process running each (``worker_pid``)."""
    return jsonable([_described(node, state, request) for state, request in _waiting(node)
                     if state == "active"])


def _described(node: RemoteControl, state: str, request: Any) -> dict[str, Any]:
    """``request.info()``, with the process running it when it runs."""
    info = request.info()
    if state == "active":
        info["worker_pid"] = node.worker.pool.job_pid(request.id)
    return info


@command("inspect")
def reserved(node: RemoteControl, **_: Any) -> list[Any]:
    """Tasks received and waiting for a free slot (or a rate-limit token)."""
    return jsonable([request.info() for state, request in _waiting(node) if state == "reserved"])


@command("inspect")
def scheduled(node: RemoteControl, **_: Any) -> list[Any]:
    """Tasks held by the worker until their countdown or ETA."""
    return jsonable([{"eta": request.context.eta,
                      "priority": request.context.delivery_info.get("priority"),
                      "request": request.info()}
                     for state, request in _waiting(node) if state == "scheduled"])


@command("inspect")
def revoked(node: RemoteControl, **_: Any) -> list[str]:
    """Ids of the tasks revoked (and not expired) that the worker knows of."""
    return node.worker.revoked.ids()


@command("inspect", variadic="taskinfoitems", signature="[attr1 [attr2 ...]]")
def registered(node: RemoteControl, taskinfoitems: list[str] | None = None,
               builtins: bool = False, **_: Any) -> list[str]:
    """Names of the tasks the worker knows, with the given task attributes."""
    tasks = node.app.tasks
    items = [i for i in taskinfoitems or ("exchange", "routing_key", "rate_limit")
             if isinstance(i, str) and not i.startswith("_")]
    names = sorted(n for n in tasks if builtins or not n.startswith("celery."))
    described = []
    for name in names:
        fields = {i: getattr(tasks[name], i, None) for i in items}
        shown = " ".join(f"{i}={v}" for i, v in fields.items() if v is not None)
        described.append(f"{name} [{shown}]" if shown else name)
    return described


@command("inspect", variadic="ids", signature="[id1 [id2 ...]]")
def query_task(node: RemoteControl, ids: Any = (), **_: Any) -> dict[str, Any]:
    """State (active, reserved, scheduled) and details of tasks the worker holds."""
    wanted = set(task_ids_of(ids)) if ids else set()
    return jsonable({request.id: [state, _described(node, state, request)]
                     for state, request in _waiting(node) if request.id in wanted})


@command("inspect")
def active_queues(node: RemoteControl, **_: Any) -> list[Any]:
    """The task queues the worker consumes."""
    consumer = getattr(node.worker, "consumer", None)
    return jsonable([queue.as_dict(recurse=True) for queue in consumer.queues]) if consumer else []


@command("inspect", visible=False)
def hello(node: RemoteControl, from_node: str, revoked: Any = None, **_: Any) -> Any:
    """A starting Celery worker's greeting (mingle): take its revokes, give ours."""
    if from_node == node.hostname:
        return None
    if revoked:
        ids = task_ids_of(list(revoked) if isinstance(revoked, dict) else revoked)
        node.worker.revoked.add(ids)
        node.discard_waiting(ids)
    return {"revoked": node.worker.revoked.ids(), "clock": node.clock.forward()}
