"""The lifecycle hooks: the contract between the kernel and every plugin.

Each hook below is called by the kernel at the point its docstring names, with
the arguments listed; implement it in a plugin with :data:`celeriac.plugin.hookimpl`
(the parameter names must match; you may take fewer). Unless a docstring says
otherwise, all implementations are called, in reverse registration order, and
an exception in one is logged with the plugin's name and does not stop the
others or the task ("observer" hooks). Hooks marked *firstresult* stop at the
first implementation that returns something other than ``None``.

Phases, in the order a task lives through them:

1. configuration: :func:`celeriac_config_sections`, :func:`celeriac_app_configured`
2. publishing: :func:`celeriac_before_publish`, :func:`celeriac_after_publish`
3. the worker: :func:`celeriac_worker_start`, :func:`celeriac_worker_ready`,
   :func:`celeriac_worker_stop`
4. receiving: :func:`celeriac_message_received`, :func:`celeriac_message_rejected`
5. running: :func:`celeriac_task_prerun`, :func:`celeriac_task_success`,
   :func:`celeriac_task_failure`, :func:`celeriac_task_retry`,
   :func:`celeriac_task_postrun`
6. the command line: :func:`celeriac_cli_commands`

``celeriac.testing`` has a test that fails when a hook here has no docstring
or is missing from ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plugin import hookspec

if TYPE_CHECKING:
    import click

    from .app import App
    from .plugin import ConfigSection
    from .protocol import TaskMessage
    from .task import Task
    from .worker.request import Request
    from .worker.worker import Worker

# --- 1. configuration ----------------------------------------------------------


@hookspec
def celeriac_config_sections() -> list[ConfigSection]:
    """Declare configuration sections this plugin reads.

    Called once when settings are loaded, before they are validated. Return a
    list of :class:`celeriac.plugin.ConfigSection`. A section name used by two
    plugins is an error naming both. Settings in a section that no installed
    plugin declares are reported as unknown, like any misspelled key. An
    exception here is propagated: settings cannot be loaded without it.
    """


@hookspec
def celeriac_app_configured(app: App) -> None:
    """The app's settings are final (``app.conf``). Called once per app, the
    first time its settings are read."""


# --- 2. publishing -------------------------------------------------------------


@hookspec
def celeriac_before_publish(app: App, message: TaskMessage, exchange: str, routing_key: str) -> None:
    """A task message is about to be sent.

    ``message.headers.extra`` may be changed (it is sent as extra headers); the
    rest of the message is frozen. An exception raised here *is* propagated to
    the caller of ``apply_async``: the message is not sent.
    """


@hookspec
def celeriac_after_publish(app: App, message: TaskMessage, exchange: str, routing_key: str) -> None:
    """The broker has accepted a task message."""


# --- 3. the worker -------------------------------------------------------------


@hookspec
def celeriac_worker_start(worker: Worker) -> None:
    """The worker is starting: the pool and broker connection are not up yet.
    An exception here stops start-up (it is propagated)."""


@hookspec
def celeriac_worker_ready(worker: Worker) -> None:
    """The worker consumes from its queues and runs tasks."""


@hookspec
def celeriac_worker_stop(worker: Worker) -> None:
    """The worker has stopped consuming and its pool is stopped; the broker
    connection is still open. Called on every shutdown, warm or cold."""


# --- 4. receiving --------------------------------------------------------------


@hookspec
def celeriac_message_received(worker: Worker, request: Request) -> None:
    """A valid task message was received and will be run (or held until its ETA)."""


@hookspec
def celeriac_message_rejected(worker: Worker, message: Any, reason: str, detail: str) -> None:
    """A message could not be run and was moved to the dead-letter queue.

    ``message`` is the raw kombu message; ``reason`` a short code
    (``decode``, ``shape``, ``unknown-task``, ``content-type``,
    ``content-disallowed``, ``redelivered``); ``detail`` the human sentence.
    """


# --- 5. running ----------------------------------------------------------------


@hookspec
def celeriac_task_prerun(task: Task, request: Request) -> None:
    """The task is about to run, in the pool's execution context (thread,
    child process, greenlet...)."""


@hookspec
def celeriac_task_success(task: Task, request: Request, retval: Any) -> None:
    """The task returned ``retval``; its result is stored."""


@hookspec
def celeriac_task_failure(task: Task, request: Request, exc: BaseException, traceback: str) -> None:
    """The task raised ``exc`` and will not be retried; FAILURE is stored."""


@hookspec
def celeriac_task_retry(task: Task, request: Request, reason: BaseException, eta: str | None) -> None:
    """The task will be retried at ``eta`` (ISO 8601); RETRY is stored."""


@hookspec
def celeriac_task_postrun(task: Task, request: Request, retval: Any, state: str) -> None:
    """The task has finished in state ``state`` (after success, failure or retry)."""


# --- 6. the command line -------------------------------------------------------


@hookspec
def celeriac_cli_commands() -> list[click.Command]:
    """Return click commands to add to the ``celeriac`` command line.

    A name already taken is an error. An exception here is propagated.
    """


#: Names of the hooks whose exceptions propagate (all others are observers).
PROPAGATING = frozenset({
    "celeriac_config_sections",
    "celeriac_before_publish",
    "celeriac_worker_start",
    "celeriac_cli_commands",
})
