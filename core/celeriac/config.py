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
    result_backend_transport_options: dict[str, Any] = setting(
        dict, "Options of the result backend, as Celery names them. Redis: "
        "``global_keyprefix`` prefixes every key (``x`` gives ``x_celery-task-meta-...``), "
        "``result_chord_ordered`` (default true) keeps a chord's header results in "
        "``group_index`` order.", factory=True)

    # -- messages --------------------------------------------------------------
    task_serializer: str = setting("json", "Serializer of task messages.")
    accept_content: list[str] = setting(
        lambda: ["json"], "Serializer names or content types a worker accepts. Others go to "
        "the dead-letter queue.", factory=True)
    task_compression: str | None = setting(None, "Compressor of task bodies (a compressor "
                                           "plugin name), or None.")
    task_protocol: int = setting(2, "Task message protocol version sent (2; 1 is only read).")
    task_send_sent_event: bool = setting(False, "Send a ``task-sent`` event for each task "
                                         "message published (Celery's name).")
    event_exchange: str = setting("celeryev", "Exchange events are published on (Celery's "
                                  "default, so Celery's monitors and ours share it).")

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

    # -- canvas ----------------------------------------------------------------
    canvas_compact_chains: bool = setting(
        False, "Keep the rest of a chain in the result backend and send only a reference "
        "with each step, so messages stay small however long the chain. Only celeriac "
        "workers can follow the reference: leave it off when Celery workers run chain steps. "
        "The stored steps last ``result_expires``.")

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
    worker_autoscale: str | None = setting(None, "Autoscale the pool: ``'max,min'`` (e.g. "
                                           "``'8,2'``; ``--autoscale``). The pool starts with "
                                           "``min`` (at least 1), grows with the tasks waiting "
                                           "up to ``max``, and shrinks when calm. Needs a pool "
                                           "that can be resized (prefork). None: a fixed size.")
    worker_autoscale_keepalive: float = setting(30.0, "Seconds after the pool last grew or a "
                                                "task last arrived before autoscale shrinks "
                                                "the pool (Celery's ``AUTOSCALE_KEEPALIVE``).")
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
    worker_send_task_events: bool = setting(
        False, "Send task events (``-E``), and announce the worker with ``worker-online``, "
        "heartbeats and ``worker-offline``, in Celery's format (``docs/monitoring.md``). Off: "
        "the worker sends no event at all until remote control's ``enable_events``.")
    worker_heartbeat_interval: float = setting(
        2.0, "Seconds between a worker's ``worker-heartbeat`` events (sent while events are "
        "on). Monitors consider a worker gone after twice this without one.")
    worker_liveness_timeout: float = setting(
        60.0, "Seconds the worker's loop may go without turning before the liveness probe "
        "calls it stalled (the loop turns at least once a second; a task the solo pool runs "
        "in the loop does not count). Used by ``worker_health_port`` and ``worker_state_file``.")
    worker_health_port: int | None = setting(
        None, "Serve the liveness probe over HTTP on this port (``GET /healthz``: 200 or 503 "
        "with a JSON reason). None: no server. 0: any free port (logged).")
    worker_health_host: str = setting("0.0.0.0", "Address the liveness server listens on.")
    worker_state_file: str | None = setting(
        None, "Path of a JSON file the worker rewrites every few seconds with its liveness "
        "(read by ``celeriac health``; a file not rewritten within "
        "``worker_liveness_timeout`` means a frozen worker). None: no file.")
    worker_log_level: str = setting("INFO", "Log level of the worker (``-l``).")

    # -- remote control --------------------------------------------------------
    worker_enable_remote_control: bool = setting(
        True, "Answer remote control (``inspect``, ``control``, ``status``, broadcast "
        "revokes). Needs a transport that can broadcast.")
    worker_revoke_expires: float = setting(
        10800.0, "Seconds a revoke lasts (Celery's 3 hours): workers forget it and the result "
        "backend drops it afterwards. A task revoked with a countdown or ETA further away than "
        "this runs when it comes due.")
    control_exchange: str = setting("celery", "Name of the remote-control exchange "
                                    "(``<name>.pidbox``). Celery's default, so Celery's tools "
                                    "and workers share it.")
    control_queue_ttl: float | None = setting(300.0, "Seconds a remote-control request or "
                                              "reply waits in its queue before it is dropped.")
    control_queue_expires: float | None = setting(10.0, "Seconds an unused remote-control "
                                                  "queue lives on the broker (where it can "
                                                  "expire).")

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

