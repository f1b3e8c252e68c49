"""Settings: Celery's lowercase names, validated into attrs classes.

Every field's ``metadata["doc"]`` is its documentation; the configuration
reference in ``docs/configuration.md`` is generated from these classes
(``python -m celeriac.configdoc``; ``nox -s docs`` fails when it is out of
date), so it cannot drift. Loading (files, environment, keyword
arguments, precedence, error messages) lives in :mod:`celeriac.configloader`.
"""

from __future__ import annotations

from typing import Any

import attrs


def setting(default: Any, doc: str, *, factory: bool = False) -> Any:
    """A documented setting. ``factory`` for mutable defaults (list, dict)."""
    meta = {"doc": doc}
    if factory:
        return attrs.field(factory=default, metadata=meta)
    return attrs.field(default=default, metadata=meta)


@attrs.define(kw_only=True)
class Settings:
    """The kernel's settings. Plugins add sections (``app.conf.section("sqlite")``)."""

    # -- app -------------------------------------------------------------------
    name: str | None = setting(None, "The app's name (``App('proj')``). It prefixes task names "
                               "and picks the default SQLite files, so a producer and its "
                               "worker must agree on it.")
    imports: list[str] = setting(list, "Modules to import when a worker starts, so their tasks "
                                 "are registered (``celeriac worker --config`` needs this).",
                                 factory=True)
    timezone: str = setting("UTC", "Time zone for naive datetimes given as ``eta``/``expires``. "
                            "Messages always carry UTC times with an offset.")

    # -- broker ----------------------------------------------------------------
    broker_url: str = setting("sqlite://", "Where tasks are sent. The URL scheme picks the "
                              "transport plugin; ``sqlite://`` alone is a file per app under "
                              "the user data directory.")
    broker_transport_options: dict[str, Any] = setting(
        dict, "Options passed to the transport (e.g. ``visibility_timeout`` in seconds).",
        factory=True)
    broker_connection_timeout: float = setting(4.0, "Seconds to wait when connecting to the broker.")
    broker_connection_max_retries: int | None = setting(
        100, "How often to retry a lost broker connection before giving up (None: forever).")
    broker_heartbeat: float | None = setting(
        120.0, "Seconds between heartbeats on the worker's broker connection, for transports "
        "that have them (AMQP): a dead peer or a silently dropped connection is noticed within "
        "about twice this. None or 0 turns them off.")
    broker_heartbeat_checkrate: float = setting(
        3.0, "How many times per heartbeat interval the worker checks (and sends) heartbeats.")

    # -- results ---------------------------------------------------------------
    result_backend: str | None = setting(
        None, "Where results are kept. The URL scheme picks the backend plugin. Unset: the "
        "backend of the broker's scheme when one exists (``sqlite://`` gives a results file "
        "beside the broker file), else no results are stored.")
    result_serializer: str = setting("json", "Serializer of stored results.")
    result_expires: float | None = setting(86400.0, "Seconds a result is kept (None: forever).")
    result_extended: bool = setting(False, "Also store task name, args, kwargs, worker, retries "
                                    "and queue with each result (as Celery does).")

    # -- messages --------------------------------------------------------------
    task_serializer: str = setting("json", "Serializer of task messages.")
    accept_content: list[str] = setting(
        lambda: ["json"], "Serializer names or content types a worker accepts. Others go to "
        "the dead-letter queue.", factory=True)
    task_compression: str | None = setting(None, "Compressor of task bodies (a compressor "
                                           "plugin name), or None.")
    task_protocol: int = setting(2, "Task message protocol version sent (2; 1 is only read).")

    # -- routing ---------------------------------------------------------------
    task_default_queue: str = setting("celery", "Queue of tasks that no route sends elsewhere.")
    task_default_exchange: str | None = setting(None, "Exchange of the default queue "
                                                "(its name when unset).")
    task_default_routing_key: str | None = setting(None, "Routing key of the default queue "
                                                   "(its name when unset).")
    task_default_priority: int | None = setting(None, "Priority of messages that give none.")
    task_routes: Any = setting(dict, "Routes: a dict mapping task names or glob patterns to "
                               "``{'queue': ...}`` or a queue name, or a list of such dicts.",
                               factory=True)
    task_create_missing_queues: bool = setting(True, "Declare queues named by routes on the fly.")
    task_queue_max_priority: int | None = setting(None, "Highest priority of the queues "
                                                  "celeriac declares, on brokers where queues "
                                                  "need it (AMQP ``x-max-priority``).")
    task_default_queue_type: str = setting("classic", "Type of the queues celeriac declares "
                                           "on brokers that have several (AMQP: ``classic`` "
                                           "or ``quorum``).")

    # -- task defaults ---------------------------------------------------------
    task_acks_late: bool = setting(True, "Acknowledge a message after its task ran (at least "
                                   "once). False acknowledges before running (at most once, "
                                   "Celery's default).")
    task_acks_on_failure_or_timeout: bool = setting(True, "With late acks, acknowledge tasks "
                                                    "that failed or timed out (else requeue).")
    task_reject_on_worker_lost: bool = setting(True, "With late acks, put a task back on the "
                                               "queue when the process running it dies.")
    task_ignore_result: bool = setting(False, "Store no results unless a task asks to.")
    task_track_started: bool = setting(False, "Store STARTED when a task starts.")
    task_always_eager: bool = setting(False, "Run tasks in the caller, at once, without a "
                                      "broker (tests).")
    task_eager_propagates: bool = setting(True, "In eager mode, raise the task's exception "
                                          "from ``apply_async``.")
    task_time_limit: float | None = setting(None, "Default hard time limit in seconds.")
    task_soft_time_limit: float | None = setting(None, "Default soft time limit in seconds.")
    task_default_rate_limit: str | None = setting(None, "Default rate limit (``'10/s'``).")
    task_default_retry_delay: float = setting(180.0, "Default seconds before a retry.")
    task_max_retries: int | None = setting(3, "Default maximum retries (None: no limit).")

    # -- worker ----------------------------------------------------------------
    worker_pool: str = setting("threads", "Pool plugin that runs tasks (``-P``).")
    worker_concurrency: int | None = setting(None, "Number of concurrent tasks (``-c``); "
                                             "None: the number of CPUs.")
    worker_max_tasks_per_child: int | None = setting(None, "Replace a pool child after it "
                                                     "ran this many tasks (pools of processes).")
    worker_max_memory_per_child: int | None = setting(None, "Replace a pool child whose resident "
                                                      "memory exceeds this many KiB, checked "
                                                      "before its next task.")
    worker_prefetch_multiplier: int = setting(4, "Messages reserved per unit of concurrency. "
                                              "0 means no limit.")
    worker_shutdown_timeout: float = setting(10.0, "Seconds a warm shutdown waits for running "
                                             "tasks before sending them back to the broker.")
    worker_max_deliveries: int = setting(10, "A message delivered more often than this is "
                                         "moved to the dead-letter queue instead of run.")
    worker_eta_holding_limit: int = setting(1000, "Most messages held in worker memory until "
                                            "their ETA, for transports that cannot delay "
                                            "delivery. When full, fetching pauses.")
    worker_dead_letter_queue: str = setting("celeriac.dead_letter", "Queue that rejected "
                                            "messages are moved to, with their reason.")
    worker_queues: list[str] | None = setting(None, "Queues to consume (``-Q``); None: the "
                                              "default queue.")
    worker_hostname: str | None = setting(None, "Node name (``-n``); default "
                                          "``celeriac@<host>``.")
    worker_send_task_events: bool = setting(False, "Send task events (``-E``).")
    worker_log_level: str = setting("INFO", "Log level of the worker (``-l``).")

    # Plugin sections, by name (filled by the loader from ConfigSection hooks).
    sections: dict[str, Any] = attrs.field(factory=dict, metadata={"doc": "Plugin sections."})

    def section(self, name: str) -> Any:
        """The settings object of a plugin's section (its defaults if unset)."""
        try:
            return self.sections[name]
        except KeyError:
            from .exceptions import ConfigurationError

            raise ConfigurationError(
                f"no configuration section {name!r} is declared by an installed plugin"
            ) from None


def setting_names() -> list[str]:
    """The kernel's setting names (not plugin sections)."""
    return [f.name for f in attrs.fields(Settings) if f.name != "sections"]

