"""``celeriac events``: a live view of the cluster, or every event, one per line.

The click command is declared in :mod:`celeriac.cli`; this module does the work."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from .state import State, TaskState, WorkerState

#: Task states in the order the live view lists them.
STATE_ORDER = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED",
               "REJECTED")
CLEAR = "\x1b[H\x1b[2J"
RECENT_TASKS = 12


def format_event(event: dict[str, Any]) -> str:
    """One line: time, node, type, then the event's own fields."""
    when = event.get("timestamp")
    stamp = datetime.fromtimestamp(when).isoformat(timespec="milliseconds") \
        if isinstance(when, (int, float)) else "-"
    skip = {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received"}
    fields = " ".join(f"{k}={_short(v)}" for k, v in event.items() if k not in skip)
    return f"{stamp} {event.get('hostname', '-')} {event.get('type', '?')} {fields}".rstrip()


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ago(moment: float | None, now: float) -> str:
    return "never" if moment is None else f"{max(0.0, now - moment):.1f} s ago"


def _worker_line(worker: WorkerState, now: float) -> str:
    load = " ".join(f"{x:.2f}" for x in worker.loadavg or ()) or "-"
    software = f"{worker.sw_ident or '?'} {worker.sw_ver or ''}".strip()
    status = "online" if worker.alive(now) else "offline"
    return (f"  {worker.hostname:<32} {status:<8} {_ago(worker.heartbeat, now):<14} "
            f"{_dash(worker.active):>6} {_dash(worker.processed):>9}  {load:<16} {software}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _task_line(task: TaskState) -> str:
    if task.state == "SUCCESS":
        detail = f"{task.runtime:.3f} s -> {task.result}" if task.runtime is not None \
            else str(task.result)
    elif task.exception:
        detail = task.exception
    else:
        detail = task.args or ""
    return (f"  {task.uuid:<36} {(task.name or '?')[:28]:<28} {task.state:<9} "
            f"{(task.worker or task.client or '-')[:24]:<24} {_short(detail, 60)}")


def render(state: State, *, title: str, now: float | None = None) -> str:
    """The live view's screen for ``state``."""
    now = time.time() if now is None else now
    with state.lock:
        workers = sorted(state.workers.values(), key=lambda w: w.hostname)
        recent = list(state.tasks.values())[-RECENT_TASKS:]
        counts = state.tasks_by_state()
        rates = state.rates(now)
        events = state.event_count
    lines = [f"{title}   {datetime.fromtimestamp(now).isoformat(timespec='seconds')}   "
             f"{events} events   (Ctrl-C to quit)", ""]
    lines.append(f"Workers ({sum(w.alive(now) for w in workers)} online of {len(workers)})")
    lines.append(f"  {'NODE':<32} {'STATUS':<8} {'HEARTBEAT':<14} {'ACTIVE':>6} "
                 f"{'PROCESSED':>9}  {'LOAD':<16} SOFTWARE")
    lines += [_worker_line(w, now) for w in workers] or ["  (none yet)"]
    lines.append("")
    known = [s for s in STATE_ORDER if counts.get(s)] + \
        sorted(s for s in counts if s not in STATE_ORDER)
    lines.append("Tasks by state: " + ("  ".join(f"{s} {counts[s]}" for s in known) or "none yet"))
    task_rates = {k[len("task-"):]: v for k, v in sorted(rates.items()) if k.startswith("task-")}
    lines.append(f"Rates over {state.rate_window:g} s: " + (
        "  ".join(f"{k} {v:.1f}/s" for k, v in task_rates.items()) or "no task events"))
    lines.append("")
    lines.append(f"Recent tasks  {'':<24} {'NAME':<28} {'STATE':<9} {'WORKER':<24} DETAIL")
    lines += [_task_line(t) for t in reversed(recent)] or ["  (none yet)"]
    return "\n".join(lines)


def run_events(app: Any, *, dump: bool, as_json: bool, interval: float,
               limit: int | None) -> int:
    """Receive events until Ctrl-C (or ``limit`` events when dumping)."""
    from .receiver import EventReceiver

    state = State()
    seen = 0

    def dump_one(event: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        click.echo(json.dumps(event, default=repr) if as_json else format_event(event))

    receiver = EventReceiver(app, {"*": dump_one if dump else state.event})
    title = f"celeriac events: {app.broker_target.display or app.broker_target.url}"
    tty = sys.stdout.isatty()
    try:
        receiver.consume()
        if dump:
            while limit is None or seen < limit:
                receiver.capture(limit=None if limit is None else limit - seen, timeout=1.0)
            return seen
        next_draw = 0.0
        while True:
            if time.monotonic() >= next_draw:
                click.echo((CLEAR if tty else "") + render(state, title=title) + "\n")
                next_draw = time.monotonic() + interval
            receiver.capture(timeout=max(0.05, next_draw - time.monotonic()))
    except KeyboardInterrupt:
        return seen
    finally:
        try:
            receiver.close()
        except Exception as exc:  # the view is ending anyway: say it, do not mask the exit
            click.echo(f"(could not close the event queue cleanly: {exc})", err=True)
