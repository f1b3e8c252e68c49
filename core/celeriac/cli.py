"""The ``celeriac`` command line (click).

Every command takes ``-A module[:attr]`` (the module that creates the app)
or ``--config file.toml`` (settings alone; their ``imports`` are imported),
before or after the command name.

Exit codes: 0 success; 1 the operation failed (a task failed, nothing to
do); 2 usage error; 69 the broker or backend cannot be reached; 75 timed out
waiting; 78 configuration or plugin error.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

EX_FAILURE = 1
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78


class Fail(click.ClickException):
    def __init__(self, message: str, code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]


def find_app(spec: str) -> Any:
    """Import ``module`` or ``module:attr`` and find the App in it (as Celery's ``-A`` does)."""
    from .app import App

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Fail(f"cannot import {module_name!r} given with -A: {exc}", EX_CONFIG) from exc
    if attr:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            raise Fail(f"{module_name!r} has no attribute {attr!r}", EX_CONFIG)
        return obj() if callable(obj) and not isinstance(obj, App) else obj
    for name in ("app", "celery", "celeriac"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, App):
            return candidate
    found = [v for v in vars(module).values() if isinstance(v, App)]
    if len(found) == 1:
        return found[0]
    for sub in ("celeriac", "app", "tasks"):
        try:
            submodule = importlib.import_module(f"{module_name}.{sub}")
        except ImportError:
            continue
        found = [v for v in vars(submodule).values() if isinstance(v, App)]
        if len(found) == 1:
            return found[0]
    raise Fail(f"no celeriac App found in module {module_name!r}; use -A {module_name}:name", EX_CONFIG)


def _load_app(ctx: click.Context) -> Any:
    from .app import App

    obj = ctx.find_root().ensure_object(dict)
    if "app" in obj:
        return obj["app"]
    spec, config = obj.get("app_spec"), obj.get("config")
    if config:
        if not os.path.exists(config):
            raise Fail(f"configuration file {config} does not exist", EX_CONFIG)
        os.environ["CELERIAC_CONFIG"] = os.path.abspath(config)
    if spec:
        app = find_app(spec)
    elif config:
        app = _app_of_config(App(config_file=config))
    elif os.environ.get("CELERIAC_APP"):
        app = find_app(os.environ["CELERIAC_APP"])
    else:
        app = App()
    _ = app.conf  # validate now: errors stop here with their message
    if not spec:
        app.import_modules()
    obj["app"] = app
    return app


def _app_of_config(app: Any) -> Any:
    """The app a settings file describes.

    Its ``imports`` are imported; a module there that creates its own App (as
    ``App("proj")`` in a tasks module usually does) read the same file, through
    ``CELERIAC_CONFIG``, so that App is the one with the tasks. With several,
    their tasks are gathered on ``app``.
    """
    from .app import App

    app.import_modules()
    found: dict[int, Any] = {}
    for name in app.conf.imports:
        for value in vars(sys.modules[name]).values():
            if isinstance(value, App) and value is not app:
                found[id(value)] = value
    if len(found) == 1:
        return next(iter(found.values()))
    for other in found.values():
        for task_name, task in other.tasks.items():
            app.tasks.setdefault(task_name, task)
    return app


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.find_root().ensure_object(dict)[param.name] = value
    return value


def app_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("-A", "--app", "app_spec", expose_value=False, callback=_remember,
                     help="Module (or module:attr) that creates the App.")(f)
    f = click.option("--config", "config", expose_value=False, callback=_remember,
                     type=click.Path(dir_okay=False),
                     help="A TOML settings file (also read by the app's module).")(f)
    return f


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn kernel errors into messages and exit codes instead of tracebacks."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .exceptions import ConfigurationError, PluginError, TimeoutError

        try:
            return fn(*args, **kwargs)
        except (ConfigurationError, PluginError) as exc:
            raise Fail(str(exc), EX_CONFIG) from exc
        except TimeoutError as exc:
            raise Fail(str(exc), EX_TEMPFAIL) from exc
        except (ConnectionError, OSError) as exc:
            raise Fail(f"cannot reach the broker or backend: {exc}", EX_UNAVAILABLE) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@app_options
@click.version_option(package_name="celeriac", prog_name="celeriac")
def cli() -> None:
    """celeriac: a distributed task queue that speaks Celery's protocol."""


# -- worker -------------------------------------------------------------------------


@cli.command()
@app_options
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: the default queue).")
@click.option("-P", "--pool", help="Pool plugin (solo, threads, ...).")
@click.option("-c", "--concurrency", type=int, help="Number of concurrent tasks.")
@click.option("-n", "--hostname", help="Node name, e.g. w1@%h.")
@click.option("-l", "--loglevel", default=None, help="DEBUG, INFO, WARNING, ERROR.")
@click.option("--prefetch-multiplier", type=int, help="Messages reserved per unit of concurrency.")
@click.option("--autoscale", metavar="MAX,MIN",
              help="Grow the pool up to MAX under load, shrink it to MIN when calm (prefork).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="Replace a pool child process after it ran this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), metavar="KIB",
              help="Replace a pool child whose resident memory exceeds this many KiB.")
@click.option("-E", "--task-events", is_flag=True,
              help="Send task events, heartbeats and online/offline (worker_send_task_events).")
@click.pass_context
@_guard
def worker(ctx: click.Context, queues: str | None, pool: str | None, concurrency: int | None,
           hostname: str | None, loglevel: str | None, prefetch_multiplier: int | None,
           autoscale: str | None, max_tasks_per_child: int | None,
           max_memory_per_child: int | None, task_events: bool) -> None:
    """Start a worker."""
    import socket

    app = _load_app(ctx)
    level = (loglevel or app.conf.worker_log_level).upper()
    logging.basicConfig(level=level, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    if hostname:
        hostname = hostname.replace("%h", socket.gethostname()).replace("%n", socket.gethostname().split(".")[0])
    w = app.Worker(queues=queues.split(",") if queues else None, pool=pool, concurrency=concurrency,
                   hostname=hostname, prefetch_multiplier=prefetch_multiplier, autoscale=autoscale,
                   max_tasks_per_child=max_tasks_per_child,
                   max_memory_per_child=max_memory_per_child,
                   task_events=True if task_events else None)
    w.start()


# -- call / result ------------------------------------------------------------------


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} must be JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {'list' if kind is list else 'object'}")
    return parsed


@cli.command()
@app_options
@click.argument("name")
@click.option("-a", "--args", help="Positional arguments as a JSON list.")
@click.option("-k", "--kwargs", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float, help="Seconds to wait before running.")
@click.option("--eta", help="ISO 8601 time to run at.")
@click.option("--expires", type=float, help="Seconds after which the task is not run.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.option("--priority", type=int)
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait with --wait.")
@click.pass_context
@_guard
def call(ctx: click.Context, name: str, args: str | None, kwargs: str | None, countdown: float | None,
         eta: str | None, expires: float | None, queue: str | None, priority: int | None,
         wait: bool, timeout: float | None) -> None:
    """Send task NAME and print its id (or its result with --wait)."""
    app = _load_app(ctx)
    options: dict[str, Any] = {k: v for k, v in dict(countdown=countdown, eta=eta, expires=expires,
                                                     queue=queue, priority=priority).items()
                               if v is not None}
    result = app.send_task(name, _json_arg(args, "--args", list), _json_arg(kwargs, "--kwargs", dict),
                           **options)
    if not wait:
        click.echo(result.id)
        return
    value = result.get(timeout=timeout, propagate=False)
    _print_result(result.id, result.state, value)
    if result.state != "SUCCESS":
        ctx.exit(EX_FAILURE)


def _print_result(task_id: str, state: str, value: Any) -> None:
    if isinstance(value, BaseException):
        value = f"{type(value).__name__}: {value}"
    click.echo(json.dumps({"id": task_id, "state": state, "result": value}, default=repr))


@cli.command()
@app_options
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is done.")
@click.option("--timeout", type=float, default=None)
@click.option("--traceback", "show_traceback", is_flag=True, help="Print the traceback of a failure.")
@click.pass_context
@_guard
def result(ctx: click.Context, task_id: str, wait: bool, timeout: float | None,
           show_traceback: bool) -> None:
    """Print the state and result of TASK_ID. Exit code 1 if it failed."""
    app = _load_app(ctx)
    res = app.AsyncResult(task_id)
    value = res.get(timeout=timeout, propagate=False) if wait else res.result
    _print_result(task_id, res.state, value)
    if show_traceback and res.traceback:
        click.echo(res.traceback)
    if res.state in ("FAILURE", "REVOKED"):
        ctx.exit(EX_FAILURE)


# -- purge --------------------------------------------------------------------------


@cli.command()
@app_options
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_guard
def purge(ctx: click.Context, queues: str | None, force: bool) -> None:
    """Delete all waiting messages from queues."""
    app = _load_app(ctx)
    names = queues.split(",") if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete every waiting message in {', '.join(names)}?", abort=True)
    total = 0
    with app.connection() as conn:
        channel = conn.channel()
        for name in names:
            total += app.queue(name)(channel).purge() or 0
    click.echo(f"purged {total} message{'s' if total != 1 else ''} from {', '.join(names)}")


# -- dead letters -------------------------------------------------------------------


@cli.group("dead-letter")
def dead_letter() -> None:
    """List, requeue or purge messages that could not be run."""


@dead_letter.command("list")
@app_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=int, default=None)
@click.pass_context
@_guard
def dead_letter_list(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """Show dead-lettered messages and why they are there."""
    import attrs

    from .worker.deadletter import list_dead_letters

    app = _load_app(ctx)
    letters = list_dead_letters(app, limit)
    for letter in letters:
        if as_json:
            click.echo(json.dumps(attrs.asdict(letter), default=repr))
        else:
            click.echo(f"{letter.task_id or '-'}  {letter.task or '-'}  [{letter.reason}] "
                       f"{letter.detail}  (queue {letter.queue or '-'}, {letter.at})")
    if not as_json:
        click.echo(f"{len(letters)} dead-lettered message{'s' if len(letters) != 1 else ''}")


@dead_letter.command("requeue")
@app_options
@click.option("--id", "task_ids", multiple=True, help="Task id to requeue (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter.")
@click.pass_context
@_guard
def dead_letter_requeue(ctx: click.Context, task_ids: tuple[str, ...], all_: bool) -> None:
    """Send dead letters back to the queue they came from."""
    from .worker.deadletter import requeue_dead_letters

    if not task_ids and not all_:
        raise click.UsageError("give --id TASK_ID (repeatable) or --all")
    moved = requeue_dead_letters(_load_app(ctx), None if all_ else task_ids)
    click.echo(f"requeued {len(moved)} message{'s' if len(moved) != 1 else ''}")
    if task_ids and len(moved) < len(task_ids):
        ctx.exit(EX_FAILURE)


@dead_letter.command("purge")
@app_options
@click.option("--id", "task_ids", multiple=True, help="Task id to delete (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter.")
@click.pass_context
@_guard
def dead_letter_purge(ctx: click.Context, task_ids: tuple[str, ...], all_: bool) -> None:
    """Delete dead letters for good."""
    from .worker.deadletter import purge_dead_letters

    if not task_ids and not all_:
        raise click.UsageError("give --id TASK_ID (repeatable) or --all")
    count = purge_dead_letters(_load_app(ctx), None if all_ else task_ids)
    click.echo(f"deleted {count} message{'s' if count != 1 else ''}")


# -- monitoring ---------------------------------------------------------------------


@cli.command()
@app_options
@click.option("--dump", is_flag=True, help="Print every event, one per line, instead of the view.")
@click.option("--json", "as_json", is_flag=True, help="With --dump: one JSON object per line.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between redraws of the live view.")
@click.option("--limit", type=click.IntRange(min=1), help="With --dump: stop after N events.")
@click.pass_context
@_guard
def events(ctx: click.Context, dump: bool, as_json: bool, interval: float,
           limit: int | None) -> None:
    """Watch events live: workers, tasks by state, rates (Ctrl-C quits)."""
    from .events.command import run_events

    if (as_json or limit is not None) and not dump:
        raise click.UsageError("--json and --limit go with --dump")
    run_events(_load_app(ctx), dump=dump, as_json=as_json, interval=interval, limit=limit)


@cli.command()
@app_options
@click.option("--state-file", type=click.Path(dir_okay=False),
              help="The worker's state file (default: the worker_state_file setting).")
@click.option("--url", help="The worker's probe, e.g. http://127.0.0.1:8000/healthz "
              "(default: worker_health_port on this host).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.pass_context
@_guard
def health(ctx: click.Context, state_file: str | None, url: str | None, as_json: bool) -> None:
    """Liveness of a worker on this host: exit 0 when alive, 1 when stalled or gone."""
    from .worker import liveness

    if state_file is None and url is None:
        conf = _load_app(ctx).conf
        state_file = conf.worker_state_file
        if state_file is None and conf.worker_health_port:
            url = f"http://127.0.0.1:{conf.worker_health_port}{liveness.HEALTH_PATH}"
        if state_file is None and url is None:
            raise click.UsageError("give --state-file or --url, or set worker_state_file or "
                                   "worker_health_port in the app's settings")
    verdict = liveness.probe_file(state_file) if state_file else liveness.probe_url(str(url))
    click.echo(json.dumps(verdict.as_dict()) if as_json else
               f"{'healthy' if verdict.healthy else 'unhealthy'}: {verdict.state}: {verdict.reason}")
    if not verdict.healthy:
        ctx.exit(EX_FAILURE)


# -- plugins ------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--hooks", "show_hooks", is_flag=True,
              help="Also import lifecycle plugins and list the hooks each implements.")
@_guard
def plugins(as_json: bool, show_hooks: bool) -> None:
    """List installed plugins: role, name, distribution, version, what they provide."""
    from . import _plugins

    rows = []
    for info in _plugins.entry_point_infos():
        row: dict[str, Any] = {"role": info.role, "name": info.name, "distribution": info.distribution,
                               "version": info.version, "entry_point": info.value}
        if info.role == "plugin":
            row["provides"] = "lifecycle hooks and settings sections (--hooks lists them)"
        if info.role in _plugins.RECORD_TYPES:
            try:
                record = _plugins.load_driver(info.role, info.name)
                row["provides"] = _describe(record)
            except Exception as exc:  # report, do not fail the listing
                row["error"] = str(exc)
        rows.append(row)
    if show_hooks:
        manager = _plugins.Plugins()
        for row in rows:
            if row["role"] == "plugin":
                plugin = manager.pm.get_plugin(row["name"])
                row["hooks"] = sorted(h.name for h in manager.pm.get_hookcallers(plugin) or [])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = row.get("provides") or row.get("error") or ""
        hooks = f"  hooks: {', '.join(row['hooks'])}" if row.get("hooks") else ""
        click.echo(f"{row['role']:<11} {row['name']:<10} {row['distribution']} {row['version']:<8} "
                   f"{extra}{hooks}")


def _describe(record: Any) -> str:
    from .plugin import TransportPlugin

    text = getattr(record, "description", "") or ""
    if isinstance(record, TransportPlugin):
        caps = [name for name in ("native_delay", "leases", "broadcast", "delivery_count")
                if getattr(record, name)]
        if record.priorities:
            caps.append(f"priorities {record.priorities}")
        text += f" [{', '.join(caps)}]" if caps else ""
    ctype = getattr(record, "content_type", None)
    if ctype:
        text = f"{text} ({ctype})".strip()
    return text


# -- remote control -----------------------------------------------------------------

from .control.cli import commands as _control_commands  # noqa: E402 - uses the helpers above

for _command in _control_commands():
    cli.add_command(_command)


def build_cli() -> click.Group:
    """The command group with plugin-provided commands added."""
    from . import _plugins

    try:
        extra = _plugins.Plugins().hooks.call("celeriac_cli_commands")
    except Exception as exc:
        click.echo(f"warning: plugin commands unavailable: {exc}", err=True)
        extra = []
    for commands in extra:
        for command in commands or ():
            if command.name in cli.commands:
                raise Fail(f"a plugin adds the command {command.name!r}, which already exists",
                           EX_CONFIG)
            cli.add_command(command)
    return cli


def main(argv: list[str] | None = None) -> None:
    """The ``celeriac`` command. Run as the process's own command line
    (``argv`` None), it first lets the chosen pool patch the process
    (:mod:`celeriac.patching`); called with ``argv`` it never patches."""
    if argv is None:
        from .patching import patch_for_command_line

        patch_for_command_line(sys.argv[1:])
    build_cli().main(args=argv, prog_name="celeriac")


if __name__ == "__main__":
    main()
