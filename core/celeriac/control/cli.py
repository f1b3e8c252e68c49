"""``celeriac inspect``, ``celeriac control`` and ``celeriac status``.

They speak Celery's remote-control protocol, so they reach Celery workers as
well as ours. Exit code 69 when no worker replied (as Celery's), except for
a revoke that the result backend stored: workers started later honour it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from ..cli import EX_UNAVAILABLE, Fail, _guard, _load_app, app_options
from .registry import COMMANDS, all_commands, compile_arguments


def _names(kind: str) -> list[str]:
    return sorted(n for n, c in all_commands().items() if c.kind == kind and c.visible)


def _listing(kind: str) -> str:
    lines = [f"{name} {COMMANDS[name].signature}".rstrip() + f"  -  {COMMANDS[name].help}"
             for name in _names(kind)]
    return "\b\nCommands:\n" + "\n".join(f"  {line}" for line in lines)


def _destination(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def remote_options(f: Any) -> Any:
    """``-d``, ``-t`` and ``--json``, as Celery's commands have them."""
    f = click.option("-j", "--json", "as_json", is_flag=True,
                     help="Print the replies as one JSON object.")(f)
    f = click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                     help="Seconds to wait for replies.")(f)
    f = click.option("-d", "--destination",
                     help="Comma-separated node names (default: every worker).")(f)
    return f


def _print_replies(replies: Sequence[dict[str, Any]], as_json: bool) -> None:
    by_node: dict[str, Any] = {}
    for item in replies:
        by_node.update(item)
    if as_json:
        click.echo(json.dumps(by_node, default=repr))
        return
    for node, reply in by_node.items():
        failed = isinstance(reply, dict) and "error" in reply
        status = click.style("ERROR" if failed else "OK", fg="red" if failed else "green")
        click.echo(f"-> {node}: {status}")
        shown = reply.get("error" if failed else "ok") if isinstance(reply, dict) and \
            len(reply) == 1 and ("ok" in reply or "error" in reply) else reply
        text = shown if isinstance(shown, str) else json.dumps(shown, indent=2, default=repr)
        click.echo("\n".join(f"    {line}" for line in text.splitlines()))
    count = len(by_node)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


def _arguments(command: str, words: Sequence[str]) -> dict[str, Any]:
    try:
        return compile_arguments(command, words)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _no_reply(timeout: float) -> Fail:
    return Fail(f"no worker replied within {timeout} s (is one running, with remote control on, "
                f"on this broker?)", EX_UNAVAILABLE)


@click.command(context_settings={"ignore_unknown_options": True}, epilog=_listing("inspect"))
@app_options
@click.argument("command", type=click.Choice(_names("inspect")), metavar="COMMAND")
@click.argument("args", nargs=-1)
@remote_options
@click.pass_context
@_guard
def inspect(ctx: click.Context, command: str, args: tuple[str, ...], destination: str | None,
            timeout: float, as_json: bool) -> None:
    """Ask the workers COMMAND (ping, active, stats, ...) and print their replies."""
    app = _load_app(ctx)
    replies = app.control.broadcast(command, _arguments(command, args),
                                    destination=_destination(destination), reply=True,
                                    timeout=timeout)
    if not replies:
        raise _no_reply(timeout)
    _print_replies(replies, as_json)


@click.command(context_settings={"ignore_unknown_options": True}, epilog=_listing("control"))
@app_options
@click.argument("command", type=click.Choice(_names("control")), metavar="COMMAND")
@click.argument("args", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also end the task if it is running.")
@click.option("--signal", "signal_name", default="SIGTERM", show_default=True,
              help="revoke --terminate: the signal for pools of processes.")
@remote_options
@click.pass_context
@_guard
def control(ctx: click.Context, command: str, args: tuple[str, ...], terminate: bool,
            signal_name: str, destination: str | None, timeout: float, as_json: bool) -> None:
    """Tell the workers to COMMAND (revoke, rate_limit, shutdown, ...) and print their replies."""
    app = _load_app(ctx)
    nodes = _destination(destination)
    if (terminate or signal_name != "SIGTERM") and command != "revoke":
        raise click.UsageError("--terminate and --signal go with revoke only")
    if command == "revoke":
        ids = _arguments(command, args)["task_id"]
        if not ids:
            raise click.UsageError("revoke needs at least one task id")
        try:
            replies = app.control.revoke(ids, destination=nodes, terminate=terminate,
                                         signal=signal_name, reply=True, timeout=timeout)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if not replies:
            backend = app.backend
            if backend.enabled and backend.stores_revokes:
                click.echo(f"no worker replied; the revoke of {len(ids)} task(s) is stored in "
                           f"{backend.describe()} and workers that start later honour it")
                return
            raise _no_reply(timeout)
    elif command == "shutdown":
        app.control.broadcast("shutdown", {}, destination=nodes)
        click.echo(f"shutdown sent to {', '.join(nodes) if nodes else 'every worker'} "
                   f"(workers do not reply to it)")
        return
    else:
        replies = app.control.broadcast(command, _arguments(command, args), destination=nodes,
                                        reply=True, timeout=timeout)
        if not replies:
            raise _no_reply(timeout)
    _print_replies(replies or [], as_json)


@click.command()
@app_options
@remote_options
@click.pass_context
@_guard
def status(ctx: click.Context, destination: str | None, timeout: float, as_json: bool) -> None:
    """List the workers that answer a ping; exit code 69 when none does."""
    app = _load_app(ctx)
    replies = app.control.ping(destination=_destination(destination), timeout=timeout)
    if not replies:
        raise _no_reply(timeout)
    _print_replies(replies, as_json)


def commands() -> list[click.Command]:
    """The commands this module adds to ``celeriac``."""
    return [inspect, control, status]
